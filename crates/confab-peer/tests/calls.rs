//! Real calls on loopback: the real `confab-signal` (in process, on 127.0.0.1:0) and real
//! `confab-peer` processes exchanging VP8 and Opus over webrtc-rs. Devices are the synthetic
//! camera and tone (this machine has no camera or sound card); they go through the same
//! capture -> encode -> network -> decode path a camera would.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::*;

/// Checks what `lines` (one peer's output) saw of the peer named `from` sending `hz`.
fn check_media_from(lines: &[Value], from: &str, hz: f64) {
    let s = summary(lines);
    let p =
        s["peers"].as_array().unwrap().iter().find(|p| p["name"] == from).unwrap_or_else(|| panic!("no {from} in {s}"));
    let frames = p["frames_decoded"].as_u64().unwrap();
    let gaps = p["stamp_gaps"].as_u64().unwrap();
    assert!(frames > 100, "{from}: only {frames} frames decoded: {p}");
    assert!((gaps as f64) < 0.01 * frames as f64, "{from}: {gaps} stamp gaps in {frames} frames: {p}");
    let tone = p["audio_tone_hz"].as_f64().unwrap_or_else(|| panic!("{from}: no tone heard: {p}"));
    assert!((tone - hz).abs() < 2.0, "{from}: heard {tone} Hz, sent {hz} Hz");
    assert!(p["bytes_sent"].as_u64().unwrap() > 0 && p["bytes_received"].as_u64().unwrap() > 0, "{p}");
    assert!(p["latency_ms"]["p50"].as_u64().is_some(), "{p}");
}

async fn server() -> confab_signal::ServerHandle {
    let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    confab_signal::Server::bind(cfg).await.unwrap().spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_see_and_hear_each_other_for_ten_seconds() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let srv = server().await;
    let url = srv.ws_url();
    let a = Peer::start(&url, "pair", "Ada", &["--audio", "synthetic:440", "--duration", "11"]);
    let b = Peer::start(&url, "pair", "Bob", &["--audio", "synthetic:660", "--duration", "11"]);
    let (a_ok, a_lines) = tokio::task::spawn_blocking(|| a.finish()).await.unwrap();
    let (b_ok, b_lines) = tokio::task::spawn_blocking(|| b.finish()).await.unwrap();
    check_media_from(&a_lines, "Bob", 660.0);
    check_media_from(&b_lines, "Ada", 440.0);
    assert!(a_ok && b_ok, "exit status 0 when media flowed both ways");
    assert_eq!(summary(&a_lines)["peers"][0]["candidate_type"], "host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peer_mesh_with_a_late_joiner() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let srv = server().await;
    let url = srv.ws_url();
    let two = ["--expect-peers", "2"];
    let a = Peer::start(&url, "mesh", "A", &[&two[..], &["--audio", "synthetic:300", "--duration", "12"]].concat());
    let b = Peer::start(&url, "mesh", "B", &[&two[..], &["--audio", "synthetic:500", "--duration", "12"]].concat());
    tokio::time::sleep(Duration::from_secs(2)).await; // C is late on purpose
    let c = Peer::start(&url, "mesh", "C", &[&two[..], &["--audio", "synthetic:700", "--duration", "9"]].concat());
    let (a_ok, a_lines) = tokio::task::spawn_blocking(|| a.finish()).await.unwrap();
    let (b_ok, b_lines) = tokio::task::spawn_blocking(|| b.finish()).await.unwrap();
    let (c_ok, c_lines) = tokio::task::spawn_blocking(|| c.finish()).await.unwrap();
    check_media_from(&a_lines, "B", 500.0);
    check_media_from(&a_lines, "C", 700.0);
    check_media_from(&b_lines, "A", 300.0);
    check_media_from(&b_lines, "C", 700.0);
    check_media_from(&c_lines, "A", 300.0);
    check_media_from(&c_lines, "B", 500.0);
    assert!(a_ok && b_ok && c_ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_and_killed_peers_disappear() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let srv = server().await;
    let url = srv.ws_url();
    let stay = Peer::start(&url, "exits", "Stay", &["--duration", "15", "--expect-peers", "0"]);
    let leaver = Peer::start(&url, "exits", "Leaver", &["--duration", "3"]);
    let victim = Peer::start(&url, "exits", "Victim", &["--duration", "30"]);
    let (_, leaver_lines) = tokio::task::spawn_blocking(|| leaver.finish()).await.unwrap();
    let left_at = events(&leaver_lines, "leaving")[0]["at_ms"].as_u64().unwrap();
    let killed_at = confab_proto::wall_ms();
    victim.kill();
    let (_, lines) = tokio::task::spawn_blocking(|| stay.finish()).await.unwrap();
    let id_of = |name: &str| {
        let s = summary(&lines);
        s["peers"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["peer_id"].clone()
    };
    let gone = |name: &str| {
        let id = id_of(name);
        events(&lines, "peer_left")
            .into_iter()
            .find(|e| e["peer_id"] == id)
            .unwrap_or_else(|| panic!("{name} never left"))["at_ms"]
            .as_u64()
            .unwrap()
    };
    let leave_ms = gone("Leaver").saturating_sub(left_at);
    assert!(leave_ms < 1000, "a peer that leaves is gone within 1 s (took {leave_ms} ms)");
    let kill_ms = gone("Victim").saturating_sub(killed_at);
    // Its socket broke without a goodbye, so the server held its place for the resume grace
    // (8 s) first: it could have been a network blip.
    assert!(kill_ms < 10_000, "a killed peer is gone within 10 s (took {kill_ms} ms)");
    // Both really had media before they went.
    let s = summary(&lines);
    for p in s["peers"].as_array().unwrap() {
        assert!(p["frames_decoded"].as_u64().unwrap() > 10, "{p}");
        assert_eq!(p["left"], true);
    }
    let (rooms, peers) = srv.counts();
    assert_eq!((rooms, peers), (0, 0), "nothing left behind on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_camera_off_and_chat_reach_the_other_side() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let srv = server().await;
    let url = srv.ws_url();
    let a = Peer::start(
        &url,
        "controls",
        "Ada",
        &["--duration", "6", "--chat", "hello from Ada", "--mute-at", "2.5", "--camera-off-at", "3.5"],
    );
    let b = Peer::start(&url, "controls", "Bob", &["--duration", "7", "--chat", "hi Ada"]);
    let (_, a_lines) = tokio::task::spawn_blocking(|| a.finish()).await.unwrap();
    let (_, b_lines) = tokio::task::spawn_blocking(|| b.finish()).await.unwrap();
    let chats = |lines: &[Value]| {
        events(lines, "chat").iter().map(|c| c["text"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    assert!(chats(&b_lines).contains(&"hello from Ada".to_string()), "{:?}", chats(&b_lines));
    assert!(chats(&a_lines).contains(&"hi Ada".to_string()), "{:?}", chats(&a_lines));
    let states: Vec<(bool, bool)> = events(&b_lines, "remote_state")
        .iter()
        .map(|s| (s["muted"].as_bool().unwrap(), s["camera"].as_bool().unwrap()))
        .collect();
    assert_eq!(states, vec![(true, true), (true, false)], "Bob saw Ada mute, then turn her camera off");
    // After the camera went off, Bob's frame count from Ada stopped growing: fewer frames
    // than a full 6 s would give.
    let frames = summary(&b_lines)["peers"][0]["frames_decoded"].as_u64().unwrap();
    assert!(frames > 30 && frames < 140, "{frames}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_wss_with_the_servers_own_certificate() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let id = confab_signal::tls::self_signed(&[]).unwrap();
    let pem = std::env::temp_dir().join(format!("confab-calls-{}.pem", std::process::id()));
    std::fs::write(&pem, &id.cert_pem).unwrap();
    let cfg =
        confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), tls: Some(id.config), ..Default::default() };
    let srv = confab_signal::Server::bind(cfg).await.unwrap().spawn();
    let url = format!("wss://localhost:{}/ws", srv.local_addr().port());
    let ca = pem.to_str().unwrap();
    let a = Peer::start(&url, "tls", "Ada", &["--duration", "4", "--ca-cert", ca]);
    let b = Peer::start(&url, "tls", "Bob", &["--duration", "4", "--ca-cert", ca]);
    // Without the certificate the server is not trusted: a clear error, exit status 1.
    let stranger = Peer::start(&url, "tls", "Eve", &["--duration", "1"]);
    let (a_ok, _) = tokio::task::spawn_blocking(|| a.finish()).await.unwrap();
    let (b_ok, _) = tokio::task::spawn_blocking(|| b.finish()).await.unwrap();
    let (eve_ok, eve) = tokio::task::spawn_blocking(|| stranger.finish()).await.unwrap();
    assert!(a_ok && b_ok, "media flowed over a wss-signalled call");
    assert!(!eve_ok);
    let err = events(&eve, "error")[0]["message"].as_str().unwrap().to_string();
    // What to compare with what the server printed, to trust it knowingly.
    assert!(err.contains("not trusted") && err.contains("localhost") && err.contains(&id.fingerprint), "{err}");
    let _ = std::fs::remove_file(pem);
}
