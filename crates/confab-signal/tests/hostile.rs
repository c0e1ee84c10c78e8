//! Everything a hostile or broken client can throw at the server. Afterwards the server must
//! still serve a normal two-peer exchange, and `/metrics` must have counted what happened.

mod common;

use common::*;
use confab_proto::ServerMsg;
use confab_signal::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn metrics(srv: &confab_signal::ServerHandle) -> String {
    let (status, body) = http_get(srv.local_addr(), "/metrics").await;
    assert_eq!(status, 200);
    body
}

async fn normal_exchange_still_works(srv: &confab_signal::ServerHandle, room: &str) {
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut b = Client::connect(&srv.ws_url()).await;
    let (pa, _) = a.join(room, "Ada").await;
    let (pb, _) = b.join(room, "Bob").await;
    a.expect("peer_joined", |m| matches!(m, ServerMsg::PeerJoined { .. })).await;
    a.send(json!({"type":"signal","to":pb,"data":{"sdp":{"type":"offer","sdp":"v=0\r\n"}}})).await;
    b.expect("offer", |m| matches!(m, ServerMsg::Signal { from, .. } if *from == pa)).await;
    b.send(json!({"type":"signal","to":pa,"data":{"sdp":{"type":"answer","sdp":"v=0\r\n"}}})).await;
    a.expect("answer", |m| matches!(m, ServerMsg::Signal { from, .. } if *from == pb)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_errors_and_the_connection_lives_on() {
    let srv = server(Config::default()).await;
    let mut c = Client::connect(&srv.ws_url()).await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "bad_request"),
        (Message::text(""), "bad_request"),
        (Message::text("[1,2,3]"), "bad_request"),
        (Message::binary(vec![0u8, 159, 146, 150]), "bad_request"),
        (Message::text(r#"{"type":"teleport"}"#), "bad_request"),
        (Message::text(r#"{"type":"join","room":"r"}"#), "bad_request"),
        (Message::text(r#"{"type":"join","name":"n"}"#), "bad_request"),
        (Message::text(r#"{"type":"signal","to":"x"}"#), "bad_request"),
        (Message::text(r#"{"type":"state","muted":1,"camera":true}"#), "bad_request"),
        (Message::text(json!({"type":"join","room":"r","name":"n".repeat(10_000)}).to_string()), "bad_request"),
        (Message::text(json!({"type":"join","room":"r".repeat(10_000),"name":"n"}).to_string()), "bad_request"),
        (Message::text(json!({"type":"chat","text":"x".repeat(10_000)}).to_string()), "bad_request"),
        // A megabyte: over the protocol limit, under the WebSocket hard limit.
        (Message::text(json!({"type":"chat","text":"x".repeat(1_000_000)}).to_string()), "too_large"),
        (Message::text(r#"{"type":"leave"}"#), "not_in_room"),
    ];
    for (frame, code) in cases {
        let what = format!("{frame:?}").chars().take(80).collect::<String>();
        c.send_raw(frame).await;
        let msg = c.expect_error(code).await;
        assert!(!msg.is_empty(), "{what}: a human message");
    }
    // Still alive and able to take part.
    c.join("after-garbage", "C").await;
    c.barrier("alive").await;
    normal_exchange_still_works(&srv, "clean").await;
    let m = metrics(&srv).await;
    assert!(metric(&m, "confab_errors_total{code=\"bad_request\"}") >= 12);
    assert_eq!(metric(&m, "confab_errors_total{code=\"too_large\"}"), 1);
    assert_eq!(metric(&m, "confab_errors_total{code=\"not_in_room\"}"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_hard_limit_close_the_connection_only() {
    let srv = server(Config::default()).await;
    let mut c = Client::connect(&srv.ws_url()).await;
    // The server may close while we are still writing the 2 MiB, which resets our side
    // before its close frame can be read: then the metric below is the proof.
    let sent = c.ws.send(Message::text("x".repeat(2 << 20))).await;
    if sent.is_ok() {
        if let Some(frame) = c.closed().await {
            assert_eq!(frame.code, CloseCode::Size);
        }
    }
    normal_exchange_still_works(&srv, "after-big").await;
    let m = metrics(&srv).await;
    assert_eq!(metric(&m, "confab_rejected_connections_total{reason=\"frame_too_large\"}"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_into_another_room_is_refused() {
    let srv = server(Config::default()).await;
    let mut a = Client::connect(&srv.ws_url()).await;
    let mut victim = Client::connect(&srv.ws_url()).await;
    a.join("mine", "A").await;
    let (pv, _) = victim.join("theirs", "V").await;
    a.send(json!({"type":"signal","to":pv,"data":{"sdp":{"type":"offer","sdp":"v=0\r\n"}}})).await;
    assert!(a.expect_error("unknown_peer").await.contains(pv.as_str()));
    victim.barrier("nothing arrived before this").await;
    assert_eq!(metric(&metrics(&srv).await, "confab_errors_total{code=\"unknown_peer\"}"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_rate_limited_then_disconnected() {
    let srv = server(Config { rate_burst: 20, rate_per_sec: 10, ..Config::default() }).await;
    let mut flooder = Client::connect(&srv.ws_url()).await;
    let mut other = Client::connect(&srv.ws_url()).await;
    flooder.join("r", "F").await;
    let (po, _) = other.join("r", "O").await;
    for _ in 0..5_000 {
        if flooder
            .ws
            .feed(Message::text(json!({"type":"signal","to":po,"data":{"candidate":null}}).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = flooder.ws.flush().await;
    let mut relayed = 0;
    let mut told = false;
    let close = loop {
        match flooder.next().await {
            Next::Msg(ServerMsg::Error { code, .. }) => {
                assert_eq!(code.as_str(), "rate_limited");
                assert!(!told, "told once, not once per dropped message");
                told = true;
            }
            Next::Msg(_) => {}
            Next::Closed(f) => break f,
        }
    };
    assert!(told);
    if let Some(close) = close {
        assert_eq!(close.code, CloseCode::Policy);
    }
    // The other peer got at most the burst (plus the trickle of refill), then peer_left.
    loop {
        match other.recv().await {
            ServerMsg::Signal { .. } => relayed += 1,
            ServerMsg::PeerLeft { .. } => break,
            m => panic!("{m:?}"),
        }
    }
    assert!((15..100).contains(&relayed), "relayed {relayed}: about the burst of 20 less the join");
    normal_exchange_still_works(&srv, "after-flood").await;
    let m = metrics(&srv).await;
    assert_eq!(metric(&m, "confab_errors_total{code=\"rate_limited\"}"), 1);
    assert_eq!(metric(&m, "confab_rejected_connections_total{reason=\"rate_limit\"}"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeat_offenders_are_cut_off() {
    let srv = server(Config::default()).await;
    let mut c = Client::connect(&srv.ws_url()).await;
    for _ in 0..100 {
        if c.ws.send(Message::text("nonsense")).await.is_err() {
            break;
        }
    }
    // A reset can beat the close frame to us (we may still be writing); the metric is proof.
    if let Some(close) = c.closed().await {
        assert_eq!(close.code, CloseCode::Policy);
        assert_eq!(close.reason.as_str(), "too many invalid messages");
    }
    assert_eq!(metric(&metrics(&srv).await, "confab_rejected_connections_total{reason=\"errors\"}"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_not_buffered() {
    let srv =
        server(Config { outbound_queue: 16, rate_burst: 1_000_000, rate_per_sec: 1_000_000, ..Config::default() })
            .await;
    let mut talker = Client::connect(&srv.ws_url()).await;
    let mut deaf = Client::connect(&srv.ws_url()).await;
    talker.join("r", "T").await;
    let (pd, _) = deaf.join("r", "D").await;
    talker.recv().await; // peer_joined
                         // The deaf client never polls its socket again. Chat fans out to both; the talker reads
                         // its echoes on another task so that it stays a good client.
    let (mut tx, mut rx) = talker.ws.split();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Text(t) = m {
                if let Ok(ServerMsg::PeerLeft { peer_id }) = confab_proto::decode_server(t.as_bytes()) {
                    return Some(peer_id);
                }
            }
        }
        None
    });
    let line = "y".repeat(1900);
    // Enough to fill every buffer between the server and the deaf client many times over
    // (loopback socket buffers grow to a few MiB); stops as soon as the server gives up.
    for _ in 0..20_000 {
        if reader.is_finished() {
            break;
        }
        tx.send(Message::text(json!({"type":"chat","text":line}).to_string())).await.unwrap();
    }
    let gone = tokio::time::timeout(WAIT, reader).await.expect("the deaf client was never cut off").unwrap();
    assert_eq!(gone, Some(pd));
    let m = metrics(&srv).await;
    assert_eq!(metric(&m, "confab_rejected_connections_total{reason=\"slow_consumer\"}"), 1);
    normal_exchange_still_works(&srv, "after-deaf").await;
    drop(deaf);
}
