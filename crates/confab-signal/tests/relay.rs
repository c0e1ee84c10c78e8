//! The real server on 127.0.0.1:0 with real WebSocket clients: rooms, addressed relay, chat,
//! state, leave/rejoin, limits, passwords, TURN credentials, liveness and shutdown.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use confab_proto::{ServerMsg, SignalData};
use confab_signal::{Config, IceConfig};
use hmac::{Hmac, Mac};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

#[tokio::test]
async fn two_peers_trade_offer_answer_and_candidates() {
    let srv = server(Config::default()).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    let (pa, peers) = a.join("standup", "Ada").await;
    assert!(peers.is_empty());
    let (pb, peers) = b.join("standup", "Bob").await;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].peer_id, pa);
    assert_eq!(peers[0].name, "Ada");
    // The earlier peer hears of the newcomer and offers to it.
    let m = a.recv().await;
    assert!(matches!(&m, ServerMsg::PeerJoined { peer } if peer.peer_id == pb && peer.name == "Bob"), "{m:?}");

    let offer = json!({"sdp":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}});
    a.send(json!({"type":"signal","to":pb,"data":offer})).await;
    match b.recv().await {
        ServerMsg::Signal { from, data } => {
            assert_eq!(from, pa);
            assert_eq!(serde_json::to_value(&data).unwrap(), offer, "relayed exactly, in browser shape");
        }
        m => panic!("{m:?}"),
    }
    b.send(json!({"type":"signal","to":pa,"data":{"sdp":{"type":"answer","sdp":"v=0\r\n"}}})).await;
    b.send(json!({"type":"signal","to":pa,"data":{"candidate":{"candidate":"candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host","sdpMid":"0","sdpMLineIndex":0}}})).await;
    b.send(json!({"type":"signal","to":pa,"data":{"candidate":null}})).await;
    assert!(matches!(a.recv().await, ServerMsg::Signal { from, data: SignalData::Sdp(_) } if from == pb));
    assert!(matches!(a.recv().await, ServerMsg::Signal { data: SignalData::Candidate(Some(_)), .. }));
    assert!(matches!(a.recv().await, ServerMsg::Signal { data: SignalData::Candidate(None), .. }));
    assert_eq!(srv.counts(), (1, 2));
    srv.shutdown().await;
}

#[tokio::test]
async fn three_peers_relay_is_addressed_not_broadcast() {
    let srv = server(Config::default()).await;
    let (mut a, mut b, mut c) = (
        Client::connect(&srv.ws_url()).await,
        Client::connect(&srv.ws_url()).await,
        Client::connect(&srv.ws_url()).await,
    );
    let (pa, _) = a.join("r", "A").await;
    let (pb, _) = b.join("r", "B").await;
    let (pc, peers) = c.join("r", "C").await;
    assert_eq!(peers.iter().map(|p| p.peer_id.clone()).collect::<Vec<_>>(), vec![pa.clone(), pb.clone()]);
    a.expect("B joined", |m| matches!(m, ServerMsg::PeerJoined { peer } if peer.peer_id == pb)).await;
    a.expect("C joined", |m| matches!(m, ServerMsg::PeerJoined { peer } if peer.peer_id == pc)).await;
    b.expect("C joined", |m| matches!(m, ServerMsg::PeerJoined { peer } if peer.peer_id == pc)).await;

    a.send(json!({"type":"signal","to":pc,"data":{"candidate":null}})).await;
    c.expect("signal from A", |m| matches!(m, ServerMsg::Signal { from, .. } if *from == pa)).await;
    b.send(json!({"type":"signal","to":pc,"data":{"candidate":null}})).await;
    c.expect("signal from B", |m| matches!(m, ServerMsg::Signal { from, .. } if *from == pb)).await;
    // B got nothing of A's signal to C: the next thing B sees is its own barrier.
    b.barrier("b-barrier").await;
    // A sees B's barrier chat (chat fans out to all) but no signals.
    a.expect("B's chat", |m| matches!(m, ServerMsg::Chat { from, .. } if *from == pb)).await;
    a.barrier("a-barrier").await;
}

#[tokio::test]
async fn chat_and_state_fan_out_with_server_stamps() {
    let srv = server(Config::default()).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    let (pa, _) = a.join("r", "Ada").await;
    b.join("r", "Bob").await;
    a.recv().await; // peer_joined
    let before = confab_proto::wall_ms();
    // Clients cannot forge `from`, `name` or `ts`: extra fields are ignored.
    a.send(json!({"type":"chat","text":"héllo 👋","from":"forged","name":"Mallory","ts":1})).await;
    for c in [&mut a, &mut b] {
        match c.recv().await {
            ServerMsg::Chat { from, name, text, ts } => {
                assert_eq!((from, name.as_str(), text.as_str()), (pa.clone(), "Ada", "héllo 👋"));
                assert!(ts >= before && ts < before + 60_000, "ts {ts}");
            }
            m => panic!("{m:?}"),
        }
    }
    a.send(json!({"type":"state","muted":true,"camera":false,"from":"forged"})).await;
    match b.recv().await {
        ServerMsg::State { from, muted, camera } => assert_eq!((from, muted, camera), (pa.clone(), true, false)),
        m => panic!("{m:?}"),
    }
    // The sender does not get its own state back.
    a.barrier("x").await;
}

#[tokio::test]
async fn leave_then_rejoin_on_the_same_connection() {
    let srv = server(Config::default()).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    let (pa, _) = a.join("r", "Ada").await;
    b.join("r", "Bob").await;
    a.recv().await;
    a.send(json!({"type":"leave"})).await;
    a.expect("left", |m| matches!(m, ServerMsg::Left { room } if room == "r")).await;
    b.expect("peer_left", |m| matches!(m, ServerMsg::PeerLeft { peer_id } if *peer_id == pa)).await;
    // After leave, B's chat no longer reaches A, and A's messages need a room.
    b.barrier("only-b").await;
    a.send(json!({"type":"chat","text":"anyone?"})).await;
    a.expect_error("not_in_room").await;
    let (pa2, peers) = a.join("other", "Ada").await;
    assert!(peers.is_empty());
    assert_ne!(pa2, pa, "a new id for a new membership");
    a.send(json!({"type":"leave"})).await;
    a.recv().await;
    let (_, peers) = a.join("r", "Ada").await;
    assert_eq!(peers.len(), 1);
    assert_eq!(srv.counts(), (1, 2));
}

#[tokio::test]
async fn room_full_at_the_configured_capacity() {
    let srv = server(Config { max_peers: 2, ..Config::default() }).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    let mut c = Client::connect(&srv.ws_url()).await;
    a.join("r", "A").await;
    b.join("r", "B").await;
    c.send(json!({"type":"join","room":"r","name":"C"})).await;
    let msg = c.expect_error("room_full").await;
    assert_eq!(msg, "room 'r' is full (2 of 2)");
    // The refused client can still join elsewhere; a leave frees the slot.
    c.join("s", "C").await;
    b.send(json!({"type":"leave"})).await;
    c.send(json!({"type":"leave"})).await;
    c.recv().await;
    // Ordering across connections: wait until A hears B is gone.
    a.recv().await; // peer_joined B
    a.expect("B left", |m| matches!(m, ServerMsg::PeerLeft { .. })).await;
    c.join("r", "C").await;
}

#[tokio::test]
async fn room_password_is_required_and_checked() {
    let srv = server(Config::default()).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    a.send(json!({"type":"join","room":"secret","name":"A","password":"hunter2"})).await;
    a.expect("joined", |m| matches!(m, ServerMsg::Joined { .. })).await;
    b.send(json!({"type":"join","room":"secret","name":"B"})).await;
    assert!(b.expect_error("unauthorized").await.contains("needs a password"));
    b.send(json!({"type":"join","room":"secret","name":"B","password":"hunter3"})).await;
    assert!(b.expect_error("unauthorized").await.contains("wrong password"));
    b.send(json!({"type":"join","room":"secret","name":"B","password":"hunter2"})).await;
    b.expect("joined", |m| matches!(m, ServerMsg::Joined { .. })).await;
}

#[tokio::test]
async fn turn_credentials_verify_as_coturn_would() {
    let ice = IceConfig {
        stun: vec!["stun:127.0.0.1:3478".into()],
        turn: vec!["turn:127.0.0.1:3478?transport=udp".into()],
        turn_secret: Some("north-wind".into()),
        turn_ttl_s: 3600,
    };
    let srv = server(Config { ice, ..Config::default() }).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    a.send(json!({"type":"join","room":"r","name":"A"})).await;
    let (peer_id, servers) = match a.recv().await {
        ServerMsg::Joined { peer_id, ice_servers, .. } => (peer_id, ice_servers),
        m => panic!("{m:?}"),
    };
    assert_eq!(servers[0].urls, vec!["stun:127.0.0.1:3478"]);
    let turn = &servers[1];
    assert_eq!(turn.urls, vec!["turn:127.0.0.1:3478?transport=udp"]);
    let username = turn.username.clone().unwrap();
    let (expiry, who) = username.split_once(':').unwrap();
    assert_eq!(who, peer_id.as_str());
    let expiry: u64 = expiry.parse().unwrap();
    assert!((now + 3590..=now + 3610).contains(&expiry), "expiry {expiry} vs now {now}");
    // coturn's check: base64(HMAC-SHA1(static-auth-secret, username)).
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"north-wind").unwrap();
    mac.update(username.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(turn.credential.as_deref(), Some(want.as_str()));
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate_the_client_trusts() {
    let id = confab_signal::tls::self_signed(&[]).unwrap();
    let srv = server(Config { tls: Some(id.config.clone()), ..Config::default() }).await;
    let url = format!("wss://localhost:{}/ws", srv.local_addr().port());
    let mut a = Client::try_connect(&url, Some(&id.cert_pem)).await.unwrap();
    let mut b = Client::try_connect(&url, Some(&id.cert_pem)).await.unwrap();
    a.join("tls", "A").await;
    let (pb, _) = b.join("tls", "B").await;
    a.recv().await;
    a.send(json!({"type":"signal","to":pb,"data":{"candidate":null}})).await;
    b.expect("signal over TLS", |m| matches!(m, ServerMsg::Signal { .. })).await;
    // A client that trusts some other certificate refuses to talk.
    let other = confab_signal::tls::self_signed(&[]).unwrap();
    assert!(Client::try_connect(&url, Some(&other.cert_pem)).await.is_err());
}

#[tokio::test]
async fn a_close_frame_leaves_the_room_at_once() {
    let srv = server(Config::default()).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    a.join("r", "A").await;
    let (pb, _) = b.join("r", "B").await;
    a.recv().await;
    b.ws.close(None).await.unwrap();
    // Well inside the default 8 s grace: a goodbye is not held.
    a.expect("peer_left", |m| matches!(m, ServerMsg::PeerLeft { peer_id } if *peer_id == pb)).await;
    assert_eq!(srv.counts(), (1, 1));
}

#[tokio::test]
async fn a_broken_connection_is_held_for_a_resume_with_what_it_missed() {
    let srv = server(Config::default()).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    let (pa, _) = a.join("r", "A").await;
    let (pb, _, token) = b.join_with(json!({"type":"join","room":"r","name":"B"})).await;
    a.recv().await;
    drop(b); // no close frame: the TCP connection just ends
             // A keeps talking to B, who is away: nothing bounces and nobody says B left.
    a.send(json!({"type":"signal","to":pb,"data":{"candidate":null}})).await;
    a.send(json!({"type":"chat","text":"still there?"})).await;
    a.expect("own chat", |m| matches!(m, ServerMsg::Chat { .. })).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    let resume = json!({"type":"join","room":"r","name":"B","resume":{"peer_id":pb,"token":token}});
    let (id, peers, token2) = b.join_with(resume).await;
    assert_eq!((&id, &token2), (&pb, &token));
    assert_eq!(peers.iter().map(|p| &p.peer_id).collect::<Vec<_>>(), [&pa]);
    b.expect("the missed signal", |m| matches!(m, ServerMsg::Signal { from, .. } if *from == pa)).await;
    b.expect("the missed chat", |m| matches!(m, ServerMsg::Chat { text, .. } if text == "still there?")).await;
    a.barrier("A saw no peer_left or peer_joined").await;
    b.expect("A's barrier", |m| matches!(m, ServerMsg::Chat { from, .. } if *from == pa)).await;
    b.barrier("B is back").await;
    a.expect("B's chat", |m| matches!(m, ServerMsg::Chat { from, .. } if *from == pb)).await;
    assert_eq!(srv.counts(), (1, 2));
}

#[tokio::test]
async fn a_broken_connection_that_never_resumes_leaves_after_the_grace() {
    let srv = server(Config { resume_grace: Duration::from_millis(300), ..Config::default() }).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    a.join("r", "A").await;
    let (pb, _) = b.join("r", "B").await;
    a.recv().await;
    let t = Instant::now();
    drop(b);
    a.expect("peer_left", |m| matches!(m, ServerMsg::PeerLeft { peer_id } if *peer_id == pb)).await;
    assert!(t.elapsed() >= Duration::from_millis(300), "held for the grace period first");
    assert_eq!(srv.counts(), (1, 1));
}

#[tokio::test]
async fn silent_client_is_removed_after_the_idle_timeout() {
    let cfg = Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        resume_grace: Duration::from_millis(100),
        ..Config::default()
    };
    let srv = server(cfg).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut silent = Client::connect(&srv.ws_url()).await;
    a.join("r", "A").await;
    let (ps, _) = silent.join("r", "S").await;
    a.recv().await;
    // `silent` never reads again, so it never answers a ping. `a` reads, so it stays.
    a.expect("peer_left of the silent one", |m| matches!(m, ServerMsg::PeerLeft { peer_id } if *peer_id == ps)).await;
    a.barrier("still here").await;
    let (_, body) = http_get(srv.local_addr(), "/metrics").await;
    assert_eq!(metric(&body, "confab_rejected_connections_total{reason=\"timeout\"}"), 1);
    drop(silent);
}

#[tokio::test]
async fn shutdown_sends_a_close_frame_with_a_reason() {
    let srv = server(Config::default()).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    a.join("r", "A").await;
    let addr = srv.local_addr();
    let stop = tokio::spawn(srv.shutdown());
    let frame = a.closed().await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason.as_str(), "server shutting down");
    stop.await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn http_endpoints_and_connection_limit() {
    let srv = server(Config { max_connections: 2, ..Config::default() }).await;
    let addr = srv.local_addr();
    assert_eq!(http_get(addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    assert_eq!(http_get(addr, "/ws").await.0, 400, "GET /ws without upgrade headers");
    let _a = Client::connect(&srv.ws_url()).await;
    let _b = Client::connect(&srv.ws_url()).await;
    // Both permits are held by WebSockets: a third connection is refused with 503.
    assert_eq!(http_get(addr, "/healthz").await.0, 503);
    assert!(Client::try_connect(&srv.ws_url(), None).await.is_err());
    drop(_b);
    // The permit returns once the server has noticed B is gone.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(addr, "/metrics").await;
        if status == 200 {
            assert_eq!(metric(&body, "confab_connections"), 1);
            assert!(metric(&body, "confab_rejected_connections_total{reason=\"max_connections\"}") >= 2);
            break;
        }
        assert!(Instant::now() < deadline, "permit never came back");
        tokio::task::yield_now().await;
    }
}
