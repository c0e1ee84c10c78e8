//! The signaling client notices a server that went silent without closing the connection
//! (a network that vanished: no reset, no close frame), instead of waiting out TCP's retries.

use std::time::{Duration, Instant};

use confab_engine::signaling::{connect, SignalEvent};
use confab_engine::TlsOptions;

#[tokio::test]
async fn a_silent_server_is_given_up_within_twenty_seconds() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts the WebSocket, then never reads or writes again: pings go unanswered.
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(ws);
    });
    let (_tx, mut rx) = connect(&format!("ws://{addr}/ws"), &TlsOptions::default()).await.unwrap();
    let t = Instant::now();
    let ev = tokio::time::timeout(Duration::from_secs(25), rx.recv()).await.expect("noticed in time");
    match ev {
        Some(SignalEvent::Closed(Some(reason))) => assert!(reason.contains("nothing from the server"), "{reason}"),
        other => panic!("expected a closed link, got {other:?}"),
    }
    assert!(t.elapsed() >= Duration::from_secs(14), "not before the silence limit: {:?}", t.elapsed());
    server.abort();
}
