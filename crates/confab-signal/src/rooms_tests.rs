//! Every client message in every connection state, plus the invariants that a random
//! sequence of messages must keep (no ghost peers, rooms freed when empty).

use super::*;
use confab_proto::{IceCandidate, SignalData};
use std::collections::BTreeSet;

fn rooms(max_peers: usize) -> Rooms {
    let mut n = 0;
    Rooms::new(RoomsConfig {
        max_peers,
        ice: IceConfig::default(),
        new_peer_id: Box::new(move || {
            n += 1;
            PeerId(format!("p{n}"))
        }),
    })
}

fn join(room: &str, name: &str) -> ClientMsg {
    ClientMsg::Join { room: room.into(), name: name.into(), password: None }
}

fn join_pw(room: &str, pw: &str) -> ClientMsg {
    ClientMsg::Join { room: room.into(), name: "n".into(), password: Some(pw.into()) }
}

fn signal(to: &str) -> ClientMsg {
    ClientMsg::Signal { to: to.into(), data: SignalData::Candidate(None) }
}

fn err_code(out: &[Outbound]) -> Option<ErrorCode> {
    match out {
        [Outbound { msg: ServerMsg::Error { code, .. }, .. }] => Some(*code),
        _ => None,
    }
}

fn joined_id(out: &[Outbound]) -> PeerId {
    match &out[0].msg {
        ServerMsg::Joined { peer_id, .. } => peer_id.clone(),
        other => panic!("expected joined, got {other:?}"),
    }
}

const A: ConnId = ConnId(1);
const B: ConnId = ConnId(2);
const C: ConnId = ConnId(3);
const D: ConnId = ConnId(4);

// --- A connection that is in no room ---

#[test]
fn outside_a_room_only_join_is_allowed() {
    let mut r = rooms(4);
    for msg in [
        signal("p1"),
        ClientMsg::State { muted: true, camera: false },
        ClientMsg::Chat { text: "hi".into() },
        ClientMsg::Leave,
    ] {
        let out = r.handle(A, msg, 0);
        assert_eq!(err_code(&out), Some(ErrorCode::NotInRoom));
        assert_eq!(out[0].to, vec![A]);
    }
    assert!(r.disconnect(A).is_empty());
    assert_eq!((r.room_count(), r.peer_count()), (0, 0));
}

#[test]
fn first_join_creates_the_room() {
    let mut r = rooms(4);
    let out = r.handle(A, join("standup", "Ada"), 0);
    assert_eq!(out.len(), 1, "nobody else to tell");
    match &out[0].msg {
        ServerMsg::Joined { peer_id, room, max_peers, peers, ice_servers, version } => {
            assert_eq!(peer_id.as_str(), "p1");
            assert_eq!(room, "standup");
            assert_eq!(*max_peers, 4);
            assert!(peers.is_empty() && ice_servers.is_empty());
            assert_eq!(*version, confab_proto::PROTOCOL_VERSION);
        }
        m => panic!("{m:?}"),
    }
    assert_eq!((r.room_count(), r.peer_count()), (1, 1));
    assert_eq!(r.room_of(A), Some("standup"));
}

// --- A connection that is in a room ---

#[test]
fn second_join_lists_peers_and_tells_the_room() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    r.handle(A, ClientMsg::State { muted: true, camera: false }, 0);
    let out = r.handle(B, join("r", "Bob"), 0);
    match &out[0].msg {
        ServerMsg::Joined { peers, .. } => {
            assert_eq!(peers, &vec![PeerInfo { peer_id: "p1".into(), name: "Ada".into(), muted: true, camera: false }]);
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(out[0].to, vec![B]);
    assert_eq!(out[1].to, vec![A]);
    assert_eq!(
        out[1].msg,
        ServerMsg::PeerJoined {
            peer: PeerInfo { peer_id: "p2".into(), name: "Bob".into(), muted: false, camera: true }
        }
    );
}

#[test]
fn join_while_joined_is_already_joined_and_changes_nothing() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    for room in ["r", "other"] {
        assert_eq!(err_code(&r.handle(A, join(room, "Ada"), 0)), Some(ErrorCode::AlreadyJoined));
    }
    assert_eq!((r.room_count(), r.peer_count()), (1, 1));
}

#[test]
fn signal_is_addressed_and_stamped() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    r.handle(B, join("r", "Bob"), 0);
    r.handle(C, join("r", "Cy"), 0);
    let data = SignalData::Candidate(Some(IceCandidate {
        candidate: "candidate:1 1 udp 1 1.2.3.4 5 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
        username_fragment: None,
    }));
    let out = r.handle(A, ClientMsg::Signal { to: "p3".into(), data: data.clone() }, 0);
    assert_eq!(out, vec![Outbound { to: vec![C], msg: ServerMsg::Signal { from: "p1".into(), data } }]);
}

#[test]
fn signal_to_unknown_self_or_other_room_is_unknown_peer() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    r.handle(B, join("elsewhere", "Bob"), 0);
    for to in ["p2", "p1", "nobody"] {
        let out = r.handle(A, signal(to), 0);
        assert_eq!(err_code(&out), Some(ErrorCode::UnknownPeer), "to {to}");
        assert_eq!(out[0].to, vec![A]);
    }
}

#[test]
fn state_fans_out_to_others_and_is_remembered() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    r.handle(B, join("r", "Bob"), 0);
    r.handle(C, join("r", "Cy"), 0);
    let out = r.handle(B, ClientMsg::State { muted: true, camera: false }, 0);
    assert_eq!(
        out,
        vec![Outbound { to: vec![A, C], msg: ServerMsg::State { from: "p2".into(), muted: true, camera: false } }]
    );
    let out = r.handle(D, join("r", "Di"), 0);
    match &out[0].msg {
        ServerMsg::Joined { peers, .. } => {
            assert!(peers.iter().any(|p| p.peer_id.as_str() == "p2" && p.muted && !p.camera))
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn state_alone_goes_nowhere() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    let out = r.handle(A, ClientMsg::State { muted: true, camera: true }, 0);
    assert!(out.iter().all(|o| o.to.is_empty()));
}

#[test]
fn chat_reaches_everyone_with_name_and_server_time() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    r.handle(B, join("r", "Bob"), 0);
    let out = r.handle(B, ClientMsg::Chat { text: "hello".into() }, 1_764_000_000_123);
    assert_eq!(
        out,
        vec![Outbound {
            to: vec![A, B],
            msg: ServerMsg::Chat { from: "p2".into(), name: "Bob".into(), text: "hello".into(), ts: 1_764_000_000_123 }
        }]
    );
}

#[test]
fn leave_tells_the_room_acknowledges_and_allows_rejoin() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    r.handle(B, join("r", "Bob"), 0);
    let out = r.handle(A, ClientMsg::Leave, 0);
    assert_eq!(
        out,
        vec![
            Outbound { to: vec![B], msg: ServerMsg::PeerLeft { peer_id: "p1".into() } },
            Outbound { to: vec![A], msg: ServerMsg::Left { room: "r".into() } },
        ]
    );
    assert_eq!(r.room_of(A), None);
    // After leaving, nothing reaches A and A can act only by joining.
    assert!(r.handle(B, ClientMsg::Chat { text: "x".into() }, 0)[0].to == vec![B]);
    assert_eq!(err_code(&r.handle(A, ClientMsg::Leave, 0)), Some(ErrorCode::NotInRoom));
    // Rejoin another room, then the first again, on the same connection: new id each time.
    assert_eq!(joined_id(&r.handle(A, join("other", "Ada"), 0)).as_str(), "p3");
    assert_eq!(r.handle(A, ClientMsg::Leave, 0).len(), 1, "alone: only the ack");
    let out = r.handle(A, join("r", "Ada"), 0);
    assert_eq!(joined_id(&out).as_str(), "p4");
    assert_eq!((r.room_count(), r.peer_count()), (1, 2));
}

#[test]
fn last_leave_frees_the_room_and_its_password() {
    let mut r = rooms(4);
    r.handle(A, join_pw("r", "pw"), 0);
    r.handle(A, ClientMsg::Leave, 0);
    assert_eq!(r.room_count(), 0);
    // A fresh room of the same name has no password now.
    assert!(matches!(r.handle(B, join("r", "Bob"), 0)[0].msg, ServerMsg::Joined { .. }));
}

#[test]
fn disconnect_is_leave_without_ack() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    r.handle(B, join("r", "Bob"), 0);
    assert_eq!(r.disconnect(B), vec![Outbound { to: vec![A], msg: ServerMsg::PeerLeft { peer_id: "p2".into() } }]);
    assert!(r.disconnect(B).is_empty(), "twice is harmless");
    assert!(r.disconnect(A).is_empty());
    assert_eq!((r.room_count(), r.peer_count()), (0, 0));
}

#[test]
fn room_full_at_max_peers_and_free_again_after_a_leave() {
    let mut r = rooms(2);
    r.handle(A, join("r", "Ada"), 0);
    r.handle(B, join("r", "Bob"), 0);
    let out = r.handle(C, join("r", "Cy"), 0);
    assert_eq!(err_code(&out), Some(ErrorCode::RoomFull));
    match &out[0].msg {
        ServerMsg::Error { message, .. } => assert_eq!(message, "room 'r' is full (2 of 2)"),
        m => panic!("{m:?}"),
    }
    assert_eq!(r.room_of(C), None);
    r.disconnect(A);
    assert!(matches!(r.handle(C, join("r", "Cy"), 0)[0].msg, ServerMsg::Joined { .. }));
}

#[test]
fn passwords() {
    let mut r = rooms(4);
    r.handle(A, join_pw("r", "open sesame"), 0);
    assert_eq!(err_code(&r.handle(B, join("r", "Bob"), 0)), Some(ErrorCode::Unauthorized));
    assert_eq!(err_code(&r.handle(B, join_pw("r", "open sesamE"), 0)), Some(ErrorCode::Unauthorized));
    assert_eq!(err_code(&r.handle(B, join_pw("r", "open"), 0)), Some(ErrorCode::Unauthorized));
    assert!(matches!(r.handle(B, join_pw("r", "open sesame"), 0)[0].msg, ServerMsg::Joined { .. }));
    // A public room refuses a password rather than silently ignoring it.
    r.handle(C, join("pub", "Cy"), 0);
    assert_eq!(err_code(&r.handle(D, join_pw("pub", "x"), 0)), Some(ErrorCode::Unauthorized));
}

#[test]
fn turn_credentials_per_peer_in_joined() {
    let mut r = Rooms::new(RoomsConfig {
        max_peers: 4,
        ice: IceConfig {
            stun: vec![],
            turn: vec!["turn:t:3478".into()],
            turn_secret: Some("s".into()),
            turn_ttl_s: 600,
        },
        new_peer_id: Box::new(|| PeerId("me".into())),
    });
    let out = r.handle(A, join("r", "Ada"), 1_000_000);
    match &out[0].msg {
        ServerMsg::Joined { ice_servers, .. } => {
            assert_eq!(ice_servers[0].username.as_deref(), Some("1600:me"));
            assert_eq!(ice_servers[0].credential, Some(crate::turn::turn_credentials("s", &"me".into(), 1600).1));
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn random_ids_are_unguessable_shape() {
    let ids: BTreeSet<String> = (0..1000).map(|_| random_peer_id().0).collect();
    assert_eq!(ids.len(), 1000);
    assert!(ids
        .iter()
        .all(|id| id.len() == 22 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')));
}

/// Random sequences of every message and disconnects over a few connections and rooms. After
/// every step: each joined connection is a member of exactly its room, no room is empty, no
/// room is over capacity, and every outbound message goes only to members of the right room.
#[test]
fn random_sequences_keep_the_invariants() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let step = (0u64..5, 0u8..7, 0u8..3, 0u8..6);
    let mut runner = TestRunner::new(Config { cases: 500, ..Config::default() });
    runner
        .run(&prop::collection::vec(step, 1..60), |steps| {
            let mut r = rooms(3);
            for (conn, kind, room, target) in steps {
                let conn = ConnId(conn);
                let room = ["a", "b", "c"][room as usize].to_string();
                let msg = match kind {
                    0 => Some(join(&room, "n")),
                    1 => Some(signal(&format!("p{target}"))),
                    2 => Some(ClientMsg::State { muted: target % 2 == 0, camera: true }),
                    3 => Some(ClientMsg::Chat { text: "t".into() }),
                    4 => Some(ClientMsg::Leave),
                    5 => Some(join_pw(&room, "pw")),
                    _ => None,
                };
                let out = match msg {
                    Some(m) => r.handle(conn, m, 0),
                    None => r.disconnect(conn),
                };
                // Everything sent goes to connections that exist in a room, or to the sender.
                for o in &out {
                    for to in &o.to {
                        prop_assert!(*to == conn || r.room_of(*to).is_some());
                    }
                }
                let mut members = 0;
                for (name, room) in &r.rooms {
                    prop_assert!(!room.members.is_empty());
                    prop_assert!(room.members.len() <= 3);
                    for m in &room.members {
                        prop_assert_eq!(r.joined.get(&m.conn), Some(name));
                    }
                    members += room.members.len();
                }
                prop_assert_eq!(members, r.joined.len());
            }
            Ok(())
        })
        .unwrap();
}
