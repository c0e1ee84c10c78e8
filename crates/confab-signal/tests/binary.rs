//! The `confab-signal` binary as an operator runs it: flags and env vars, the self-signed
//! certificate written for clients, SIGTERM with close frames, and clear start-up errors.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use confab_proto::ServerMsg;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const BIN: &str = env!("CARGO_BIN_EXE_confab-signal");

#[tokio::test]
async fn self_signed_wss_from_env_and_sigterm() {
    let dir = std::env::temp_dir().join(format!("confab-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let mut child = Command::new(BIN)
        .env("CONFAB_LISTEN", "127.0.0.1:0")
        .env("CONFAB_MAX_PEERS", "2")
        .args(["--self-signed", "--write-cert"])
        .arg(&cert)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first.strip_prefix("confab-signal listening on ").expect(&first).to_string();
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");
    let fp_line = lines.next().unwrap().unwrap();
    let fingerprint = fp_line.strip_prefix("certificate SHA-256 fingerprint ").unwrap();

    let pem = std::fs::read_to_string(&cert).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_bytes()).next().unwrap().unwrap();
    assert_eq!(confab_signal::tls::fingerprint(&der), fingerprint, "printed fingerprint is the written cert's");

    let url = url.replace("127.0.0.1", "localhost");
    let mut a = Client::try_connect(&url, Some(&pem)).await.unwrap();
    let mut b = Client::try_connect(&url, Some(&pem)).await.unwrap();
    let mut c = Client::try_connect(&url, Some(&pem)).await.unwrap();
    a.join("r", "A").await;
    b.join("r", "B").await;
    c.send(serde_json::json!({"type":"join","room":"r","name":"C"})).await;
    c.expect_error("room_full").await; // CONFAB_MAX_PEERS=2 took effect
    a.expect("peer_joined", |m| matches!(m, ServerMsg::PeerJoined { .. })).await;

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    for client in [&mut a, &mut b, &mut c] {
        let f = client.closed().await.expect("close frame on SIGTERM");
        assert_eq!(f.code, CloseCode::Away);
        assert_eq!(f.reason.as_str(), "server shutting down");
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).env_remove("CONFAB_LISTEN").output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) =
        run(&["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem", "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
    let (ok, err) = run(&["--turn", "turn:x:3478"]);
    assert!(!ok);
    assert!(err.contains("--turn-secret"), "{err}");
    let (ok, err) = run(&["--listen", "not-an-address"]);
    assert!(!ok);
    assert!(err.contains("not-an-address"), "{err}");
    let (ok, err) = run(&["--stun", "http://x", "--listen", "127.0.0.1:0"]);
    assert!(!ok);
    assert!(err.contains("stun:"), "{err}");
    // The port is taken: say which address.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let (ok, err) = run(&["--listen", &addr]);
    assert!(!ok);
    assert!(err.contains(&addr), "{err}");
}
