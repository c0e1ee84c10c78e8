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
        resume_grace_ms: GRACE,
        resume_key: KEY.to_vec(),
    })
}

const KEY: &[u8] = b"test key";

fn token_for(room: &str, id: &str) -> String {
    resume_token(KEY, room, &PeerId::from(id))
}

fn join(room: &str, name: &str) -> ClientMsg {
    ClientMsg::Join { room: room.into(), name: name.into(), password: None, resume: None }
}

fn join_pw(room: &str, pw: &str) -> ClientMsg {
    ClientMsg::Join { room: room.into(), name: "n".into(), password: Some(pw.into()), resume: None }
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

const GRACE: u64 = 8_000;

fn resume(room: &str, id: &str, token: &str) -> ClientMsg {
    ClientMsg::Join {
        room: room.into(),
        name: "again".into(),
        password: None,
        resume: Some(Resume { peer_id: id.into(), token: token.into() }),
    }
}

/// The id, token and `resumed` flag of a `joined`.
fn joined_full(out: &[Outbound]) -> (PeerId, String, bool) {
    match &out[0].msg {
        ServerMsg::Joined { peer_id, resume_token, resumed, .. } => (peer_id.clone(), resume_token.clone(), *resumed),
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
        ServerMsg::Joined { peer_id, room, max_peers, peers, ice_servers, version, resumed, .. } => {
            assert!(!resumed);
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
        resume_grace_ms: GRACE,
        resume_key: KEY.to_vec(),
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

// --- Broken connections: places held for a resume ---

#[test]
fn a_lost_connection_is_held_silently_and_resumed_with_what_it_missed() {
    let mut r = rooms(4);
    let (pa, ta, resumed) = joined_full(&r.handle(A, join("r", "Ada"), 0));
    assert!(!resumed && !ta.is_empty());
    r.handle(B, join("r", "Bob"), 0);
    assert!(r.connection_lost(A, 1_000).is_empty(), "the room hears nothing yet");
    assert_eq!(r.room_of(A), None);
    assert_eq!(r.peer_count(), 2, "the place is held");
    // What the room sends meanwhile is kept for Ada, in order; Bob's signals to her succeed.
    assert!(r.handle(B, signal(pa.as_str()), 1_100).is_empty());
    let chat = r.handle(B, ClientMsg::Chat { text: "hello?".into() }, 1_200);
    assert_eq!(chat[0].to, vec![B], "only attached members get it now");
    assert!(r.expire(1_000 + GRACE - 1).is_empty(), "still inside the grace period");
    let out = r.handle(C, resume("r", pa.as_str(), &ta), 2_000);
    let (id, token, resumed) = joined_full(&out);
    assert_eq!((id, token.as_str(), resumed), (pa.clone(), ta.as_str(), true));
    match &out[0].msg {
        ServerMsg::Joined { peers, .. } => {
            assert_eq!(peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["Bob"])
        }
        _ => unreachable!(),
    }
    assert!(
        matches!(&out[1], Outbound { to, msg: ServerMsg::Signal { from, .. } } if to == &vec![C] && from == &"p2".into())
    );
    assert!(matches!(&out[2].msg, ServerMsg::Chat { text, .. } if text == "hello?"));
    assert_eq!(out.len(), 3, "Bob is not told anything: he never saw Ada go");
    assert_eq!(r.room_of(C), Some("r"));
    // Back to normal: her state reaches Bob from the new connection.
    let st = r.handle(C, ClientMsg::State { muted: true, camera: true }, 2_100);
    assert_eq!(st[0].to, vec![B]);
}

#[test]
fn an_unclaimed_place_expires_and_the_room_hears_peer_left() {
    let mut r = rooms(4);
    r.handle(A, join("r", "Ada"), 0);
    let pb = joined_id(&r.handle(B, join("r", "Bob"), 0));
    r.connection_lost(B, 100);
    assert!(r.expire(100 + GRACE - 1).is_empty());
    assert_eq!(r.expire(100 + GRACE), vec![Outbound { to: vec![A], msg: ServerMsg::PeerLeft { peer_id: pb } }]);
    assert_eq!(r.peer_count(), 1);
    // The last peer going away frees the room once its grace runs out.
    r.connection_lost(A, 200);
    assert_eq!(r.room_count(), 1);
    assert!(r.expire(200 + GRACE).is_empty());
    assert_eq!(r.room_count(), 0);
}

#[test]
fn a_wrong_token_is_refused_and_changes_nothing() {
    let mut r = rooms(4);
    let (pa, _, _) = joined_full(&r.handle(A, join("r", "Ada"), 0));
    r.connection_lost(A, 0);
    assert_eq!(err_code(&r.handle(B, resume("r", pa.as_str(), "guess"), 1)), Some(ErrorCode::Unauthorized));
    assert_eq!(r.room_of(B), None);
    // A live place cannot be taken over without its token either.
    let (pc, _, _) = joined_full(&r.handle(C, join("r", "Cy"), 1));
    assert_eq!(err_code(&r.handle(D, resume("r", pc.as_str(), "guess"), 2)), Some(ErrorCode::Unauthorized));
    assert_eq!(r.room_of(C), Some("r"));
}

#[test]
fn resume_while_the_old_connection_looks_alive_moves_the_place() {
    // A half-open TCP: the client gave up on its socket before the server noticed.
    let mut r = rooms(4);
    let (pa, ta, _) = joined_full(&r.handle(A, join("r", "Ada"), 0));
    r.handle(B, join("r", "Bob"), 0);
    let (id, _, resumed) = joined_full(&r.handle(C, resume("r", pa.as_str(), &ta), 5));
    assert!(resumed && id == pa);
    assert_eq!((r.room_of(A), r.room_of(C)), (None, Some("r")));
    assert!(r.disconnect(A).is_empty(), "the stale connection's end no longer affects the room");
    assert_eq!(r.peer_count(), 2);
}

#[test]
fn after_a_server_restart_a_resume_rebuilds_the_room_with_the_same_ids() {
    // A server started again with the same key has no rooms, but recognises its tokens: the
    // claimed id is granted (the room has no such member), and the others see it join like
    // anyone else.
    let mut r = rooms(4);
    let ada_token = token_for("r", "old-ada");
    let (id, token, resumed) = joined_full(&r.handle(A, resume("r", "old-ada", &ada_token), 0));
    assert_eq!((id.as_str(), resumed), ("old-ada", false));
    assert_eq!(token, ada_token, "tokens are the same for every join of that id in that room");
    let out = r.handle(B, resume("r", "old-bob", &token_for("r", "old-bob")), 1);
    assert_eq!(joined_full(&out).0, PeerId::from("old-bob"));
    assert!(matches!(&out[1].msg, ServerMsg::PeerJoined { peer } if peer.peer_id.as_str() == "old-bob"));
    // Nobody else can claim an id: without its token (or with one from another room) the
    // join succeeds under a new id.
    let (id, _, _) = joined_full(&r.handle(C, resume("r", "old-carl", "made-up"), 2));
    assert_ne!(id.as_str(), "old-carl");
    let (id, _, _) = joined_full(&r.handle(D, resume("r", "old-dan", &token_for("other", "old-dan")), 2));
    assert_ne!(id.as_str(), "old-dan");
    // The usual rules still apply to a fresh place.
    let mut locked = rooms(4);
    locked.handle(A, join_pw("x", "pw"), 0);
    assert_eq!(
        err_code(&locked.handle(B, resume("x", "old", &token_for("x", "old")), 0)),
        Some(ErrorCode::Unauthorized)
    );
}

#[test]
fn an_away_peer_that_misses_too_much_loses_its_place() {
    let mut r = rooms(4);
    let (pa, ta, _) = joined_full(&r.handle(A, join("r", "Ada"), 0));
    r.handle(B, join("r", "Bob"), 0);
    r.connection_lost(A, 0);
    for i in 0..=MAX_PENDING {
        r.handle(B, ClientMsg::Chat { text: format!("{i}") }, 1);
    }
    assert_eq!(r.expire(2), vec![Outbound { to: vec![B], msg: ServerMsg::PeerLeft { peer_id: pa.clone() } }]);
    // Coming back now is a fresh place with the same id, and Bob sees it join.
    let out = r.handle(C, resume("r", pa.as_str(), &ta), 3);
    assert!(!joined_full(&out).2);
    assert!(matches!(&out[1].msg, ServerMsg::PeerJoined { .. }));
}

#[test]
fn zero_grace_removes_at_once() {
    let mut r = rooms(4);
    r.cfg.resume_grace_ms = 0;
    r.handle(A, join("r", "Ada"), 0);
    r.handle(B, join("r", "Bob"), 0);
    assert!(matches!(&r.connection_lost(B, 0)[..], [Outbound { msg: ServerMsg::PeerLeft { .. }, .. }]));
}

/// Random sequences of every message and disconnects over a few connections and rooms. After
/// every step: each joined connection is a member of exactly its room, no room is empty, no
/// room is over capacity, and every outbound message goes only to members of the right room.
#[test]
fn random_sequences_keep_the_invariants() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let step = (0u64..6, 0u8..10, 0u8..3, 0u8..6);
    let mut runner = TestRunner::new(Config { cases: 500, ..Config::default() });
    runner
        .run(&prop::collection::vec(step, 1..60), |steps| {
            let mut r = rooms(3);
            let mut now = 0;
            let mut tokens = std::collections::HashMap::<String, String>::new();
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
                    // Resume with a right token (tokens are what the proptest saw), a made-up id,
                    // or a wrong token.
                    6 => Some(match tokens.get(&format!("p{target}")) {
                        Some(t) if target % 2 == 0 => resume(&room, &format!("p{target}"), t),
                        _ => resume(&room, &format!("p{target}"), "wrong"),
                    }),
                    _ => None,
                };
                now += 1_000;
                let out = match (msg, kind) {
                    (Some(m), _) => r.handle(conn, m, now),
                    (None, 7) => r.connection_lost(conn, now),
                    (None, 8) => r.expire(now),
                    (None, _) => r.disconnect(conn),
                };
                for o in &out {
                    if let ServerMsg::Joined { peer_id, resume_token, .. } = &o.msg {
                        tokens.insert(peer_id.to_string(), resume_token.clone());
                    }
                }
                // Everything sent goes to connections that exist in a room, or to the sender.
                for o in &out {
                    for to in &o.to {
                        prop_assert!(*to == conn || r.room_of(*to).is_some());
                    }
                }
                let mut attached = 0;
                for (name, room) in &r.rooms {
                    prop_assert!(!room.members.is_empty());
                    prop_assert!(room.members.len() <= 3);
                    let mut ids = BTreeSet::new();
                    for m in &room.members {
                        prop_assert!(ids.insert(m.info.peer_id.clone()), "one place per id");
                        match m.conn {
                            Some(c) => {
                                prop_assert_eq!(r.joined.get(&c), Some(name));
                                prop_assert!(m.pending.is_empty());
                                attached += 1;
                            }
                            None => prop_assert!(m.pending.len() <= MAX_PENDING),
                        }
                    }
                }
                prop_assert_eq!(attached, r.joined.len());
            }
            Ok(())
        })
        .unwrap();
}
