//! Interop with a browser: headless Chromium (fake camera and microphone, its own WebRTC
//! stack) runs `interop/page.html`, a small protocol-v1 client, in the same room as a
//! `confab-peer`. Each must decode the other's video and receive the other's audio, with
//! either side offering.
//!
//! Everything runs inside a fresh network namespace that has only `lo`, so no packet leaves
//! loopback (and Chromium needs `--allow-loopback-in-peer-connection`). Needs root for
//! `ip netns`, Chromium (`scripts/bootstrap`) and `npm ci` in `tests/interop`
//! (`scripts/test` does both); without them the test fails and says what is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

const PEER: &str = env!("CARGO_BIN_EXE_confab-peer");

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("confab-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("run ip");
        assert!(
            out.status.success(),
            "cannot create a network namespace (needs root and iproute2): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns(name);
        assert!(ns.cmd("ip").args(["link", "set", "lo", "up"]).status().unwrap().success());
        ns
    }

    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).output();
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn signal_bin() -> PathBuf {
    let bin = Path::new(PEER).with_file_name("confab-signal");
    assert!(bin.exists(), "{} is missing: build the workspace first (cargo build --workspace)", bin.display());
    bin
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

const PAGE_PORT: &str = "8788";
const PAGE_ORIGIN: &str = "http://127.0.0.1:8788";

/// `confab-signal` on 127.0.0.1:8787 inside `ns`, once it accepts connections.
fn start_signal(ns: &Netns, extra: &[&str]) -> Killed {
    let server = Killed(
        ns.cmd(signal_bin())
            .args(["--listen", "127.0.0.1:8787"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for _ in 0..100 {
        let probe = ns.cmd("bash").args(["-c", "exec 3<>/dev/tcp/127.0.0.1/8787"]).stderr(Stdio::null()).status();
        if probe.unwrap().success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// What Chromium's page got when it tried to join: "joined" or "refused".
fn chromium_probe(ns: &Netns) -> String {
    let out = ns
        .cmd("node")
        .arg(interop_dir().join("run.mjs"))
        .args(["--server", "ws://127.0.0.1:8787/ws", "--room", "probe", "--page-port", PAGE_PORT, "--probe"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let lines = json_lines(&out);
    let outcome = lines.iter().find(|l| l["type"] == "chromium_outcome");
    outcome.and_then(|l| l["outcome"].as_str()).map(String::from).unwrap_or_else(|| {
        panic!("no outcome from Chromium: {}", String::from_utf8_lossy(&out.stdout));
    })
}

/// Runs one call between Chromium and confab-peer; `chromium_first` decides who offers
/// (the one already in the room offers to the newcomer).
fn call(chromium_first: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        interop_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix {}`",
        interop_dir().display()
    );
    assert!(Path::new("/usr/bin/chromium").exists(), "chromium is not installed: run scripts/bootstrap");
    let ns = Netns::new(if chromium_first { "ic" } else { "ir" });
    // The page is served from a known port, so its origin can be allowed.
    let _signal = start_signal(&ns, &["--allow-origin", PAGE_ORIGIN]);
    let url = "ws://127.0.0.1:8787/ws";
    let peer_args = [
        "--server",
        url,
        "--room",
        "interop",
        "--name",
        "Rusty",
        "--bind",
        "127.0.0.1",
        "--size",
        "640x360",
        "--quiet-stats",
    ];
    let node_args = |secs: &str| {
        let mut c = ns.cmd("node");
        c.arg(interop_dir().join("run.mjs")).args(["--server", url, "--room", "interop", "--duration", secs]);
        c.args(["--page-port", PAGE_PORT]);
        c
    };
    let (peer_out, chrome_out) = if chromium_first {
        let mut chrome = node_args("12").stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
        // Chromium must be in the room before us: wait for its word, however long its start
        // takes on a loaded machine (a fixed head start was not always enough).
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = chrome.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("\"chromium_ready\"") {
                    let _ = ready_tx.send(());
                }
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
            }
            out
        });
        ready_rx.recv_timeout(Duration::from_secs(40)).expect("Chromium did not get into the room within 40 s");
        let peer = ns.cmd(PEER).args(peer_args).args(["--duration", "12"]).output().unwrap();
        let status = chrome.wait().unwrap();
        (peer, Output { status, stdout: reader.join().unwrap(), stderr: Vec::new() })
    } else {
        let peer = ns.cmd(PEER).args(peer_args).args(["--duration", "13"]).stdout(Stdio::piped()).spawn().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let chrome = node_args("10").stderr(Stdio::inherit()).output().unwrap();
        (peer.wait_with_output().unwrap(), chrome)
    };

    let chrome = json_lines(&chrome_out);
    let chrome = chrome
        .iter()
        .find(|l| l["type"] == "chromium_summary")
        .unwrap_or_else(|| panic!("no summary from Chromium: {}", String::from_utf8_lossy(&chrome_out.stdout)));
    assert_eq!(chrome["errors"], Value::Array(vec![]), "{chrome}");
    let seen = chrome["peers"].as_object().unwrap().values().next().unwrap_or_else(|| panic!("{chrome}"));
    assert!(seen["framesDecoded"].as_u64().unwrap() > 60, "Chromium decoded our VP8: {seen}");
    assert_eq!(seen["codec"], "video/VP8");
    assert_eq!(seen["frameWidth"], 640);
    assert!(seen["audioPackets"].as_u64().unwrap() > 100, "Chromium got our Opus: {seen}");

    let lines = json_lines(&peer_out);
    let summary = lines.iter().find(|l| l["type"] == "summary").unwrap_or_else(|| panic!("no summary: {lines:?}"));
    let p = &summary["peers"][0];
    assert_eq!(p["name"], "Chromium");
    assert!(p["frames_decoded"].as_u64().unwrap() > 60, "we decoded Chromium's video: {p}");
    assert!(p["audio_packets_received"].as_u64().unwrap() > 100, "we got Chromium's audio: {p}");
    assert_eq!(summary["ok"], true);
    assert!(peer_out.status.success());
}

/// Browsers send `Origin` with every WebSocket; a page may join only if its operator allowed
/// that origin, while confab's own clients (no `Origin`) always may.
#[test]
fn a_web_page_joins_only_if_its_origin_is_allowed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert!(interop_dir().join("node_modules/playwright-core").exists(), "run `npm ci` in tests/interop");
    let ns = Netns::new("io");
    {
        let _signal = start_signal(&ns, &[]);
        assert_eq!(chromium_probe(&ns), "refused", "a page from an origin nobody allowed");
        let peer = ns
            .cmd(PEER)
            .args(["--server", "ws://127.0.0.1:8787/ws", "--room", "probe", "--name", "App", "--bind", "127.0.0.1"])
            .args(["--video", "none", "--audio", "none", "--duration", "1", "--expect-peers", "0"])
            .output()
            .unwrap();
        let lines = json_lines(&peer);
        assert!(lines.iter().any(|l| l["type"] == "joined"), "confab-peer (no Origin) joins: {lines:?}");
    }
    let _signal = start_signal(&ns, &["--allow-origin", PAGE_ORIGIN]);
    assert_eq!(chromium_probe(&ns), "joined", "with --allow-origin {PAGE_ORIGIN}");
}

#[test]
fn confab_offers_to_chromium() {
    call(false);
}

#[test]
fn chromium_offers_to_confab() {
    call(true);
}
