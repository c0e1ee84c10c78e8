//! Calls relayed through a real coturn (`turnserver` from Debian) on loopback, with the
//! time-limited credentials `confab-signal` hands out in `joined` (coturn's
//! `use-auth-secret`). Peers are forced to relay-only ICE, so media can only flow through
//! coturn. Needs the `coturn` package (scripts/bootstrap); fails saying so if it is missing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_confab-peer");

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Turn {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Turn {
    fn start(secret: &str) -> Turn {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("confab-turn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = "/usr/bin/turnserver";
        assert!(std::path::Path::new(bin).exists(), "coturn is not installed: run scripts/bootstrap");
        let min = 50_000 + (port % 1000) * 10;
        let child = Command::new(bin)
            .args(["-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", &min.to_string(), "--max-port", &(min + 9).to_string()])
            .args(["--use-auth-secret", "--static-auth-secret", secret, "--realm", "confab.test"])
            .args(["--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp-relay"])
            .arg("--pidfile")
            .arg(dir.join("turn.pid"))
            .arg("--log-file")
            .arg(dir.join("turn.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        // Ready when it answers on its UDP port; give it a moment to bind.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Turn { child, port, dir }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_peer(url: &str, name: &str, secs: &str) -> std::thread::JoinHandle<(bool, Vec<Value>)> {
    let mut child = Command::new(PEER)
        .args(["--server", url, "--room", "relayed", "--name", name, "--bind", "127.0.0.1", "--size", "320x180"])
        .args(["--ice-policy", "relay", "--duration", secs, "--quiet-stats"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let lines =
            BufReader::new(out).lines().map_while(Result::ok).filter_map(|l| serde_json::from_str(&l).ok()).collect();
        (child.wait().unwrap().success(), lines)
    })
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

fn summary(lines: &[Value]) -> Value {
    lines.iter().find(|l| l["type"] == "summary").cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_flows_through_coturn_with_relay_only_ice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let turn = Turn::start("north-wind");
    let srv = signal_with_turn(turn.port, "north-wind").await;
    let a = run_peer(&srv.ws_url(), "Ada", "8");
    let b = run_peer(&srv.ws_url(), "Bob", "8");
    let (a_ok, a_lines) = tokio::task::spawn_blocking(|| a.join().unwrap()).await.unwrap();
    let (b_ok, b_lines) = tokio::task::spawn_blocking(|| b.join().unwrap()).await.unwrap();
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
    let _one = ONE_AT_A_TIME.lock().await;
    let turn = Turn::start("the-real-secret");
    let srv = signal_with_turn(turn.port, "not-the-secret").await;
    let a = run_peer(&srv.ws_url(), "Ada", "10");
    let b = run_peer(&srv.ws_url(), "Bob", "10");
    let (a_ok, a_lines) = tokio::task::spawn_blocking(|| a.join().unwrap()).await.unwrap();
    let (b_ok, _) = tokio::task::spawn_blocking(|| b.join().unwrap()).await.unwrap();
    assert!(!a_ok && !b_ok, "no media can flow, so neither may report success");
    let p = &summary(&a_lines)["peers"][0];
    assert_eq!(p["frames_decoded"].as_u64().unwrap_or(0), 0, "{p}");
    // Not a silent hang: the user is told the relay is the problem.
    let errors: Vec<&str> =
        a_lines.iter().filter(|l| l["type"] == "error").filter_map(|l| l["message"].as_str()).collect();
    assert!(errors.iter().any(|m| m.contains("TURN")), "a clear error about the relay: {errors:?}");
}
