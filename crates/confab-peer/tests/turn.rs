//! Calls relayed through a real coturn (`turnserver` from Debian) on loopback, with the
//! time-limited credentials `confab-signal` hands out in `joined` (coturn's
//! `use-auth-secret`). Peers are forced to relay-only ICE, so media can only flow through
//! coturn. Needs the `coturn` package (scripts/bootstrap); fails saying so if it is missing.

mod support;

use support::*;

fn run_peer(url: &str, name: &str, secs: &str) -> Peer {
    Peer::start(url, "relayed", name, &["--ice-policy", "relay", "--duration", secs])
}

async fn signal_with_turn(turn_port: u16, secret: &str) -> confab_signal::ServerHandle {
    let ice = confab_signal::IceConfig {
        stun: vec![],
        turn: vec![format!("turn:127.0.0.1:{turn_port}?transport=udp")],
        turn_secret: Some(secret.into()),
        turn_ttl_s: 600,
    };
    let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ice, ..Default::default() };
    confab_signal::Server::bind(cfg).await.unwrap().spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_flows_through_coturn_with_relay_only_ice() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let turn = Turn::start("north-wind");
    let srv = signal_with_turn(turn.port, "north-wind").await;
    let a = run_peer(&srv.ws_url(), "Ada", "8");
    let b = run_peer(&srv.ws_url(), "Bob", "8");
    let (a_ok, a_lines) = tokio::task::spawn_blocking(|| a.finish()).await.unwrap();
    let (b_ok, b_lines) = tokio::task::spawn_blocking(|| b.finish()).await.unwrap();
    for (lines, from) in [(&a_lines, "Bob"), (&b_lines, "Ada")] {
        let s = summary(lines);
        let p = &s["peers"][0];
        assert_eq!(p["name"], from, "{s}");
        assert_eq!(p["candidate_type"], "relay", "only relayed pairs are allowed: {p}");
        assert!(p["frames_decoded"].as_u64().unwrap_or(0) > 60, "video through the relay: {p}");
        assert!(p["audio_packets_received"].as_u64().unwrap_or(0) > 100, "audio through the relay: {p}");
    }
    assert!(a_ok && b_ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_turn_secret_means_no_media_and_a_failed_exit() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let turn = Turn::start("the-real-secret");
    let srv = signal_with_turn(turn.port, "not-the-secret").await;
    let a = run_peer(&srv.ws_url(), "Ada", "10");
    let b = run_peer(&srv.ws_url(), "Bob", "10");
    let (a_ok, a_lines) = tokio::task::spawn_blocking(|| a.finish()).await.unwrap();
    let (b_ok, _) = tokio::task::spawn_blocking(|| b.finish()).await.unwrap();
    assert!(!a_ok && !b_ok, "no media can flow, so neither may report success");
    let p = &summary(&a_lines)["peers"][0];
    assert_eq!(p["frames_decoded"].as_u64().unwrap_or(0), 0, "{p}");
    // Not a silent hang: the user is told the relay is the problem.
    let errors: Vec<&str> =
        a_lines.iter().filter(|l| l["type"] == "error").filter_map(|l| l["message"].as_str()).collect();
    assert!(errors.iter().any(|m| m.contains("TURN")), "a clear error about the relay: {errors:?}");
}
