//! Call benchmark: two `confab-peer` processes (release build, synthetic camera and tone)
//! call each other through an in-process `confab-signal` on loopback, at 640x360 and
//! 1280x720, 30 fps. Prints call setup (both in the room -> first decoded frame),
//! glass-to-glass latency p50/p99 from the frame stamps, and CPU seconds per minute of call
//! per peer (user + system, from the kernel's accounting of each process).
//!
//! `cargo bench -p confab-peer --bench call -- [--secs 20] [--sizes 640x360,1280x720]`
//!
//! Figures, not assertions. Both peers share the machine's 2 cores, and each peer's CPU
//! includes drawing its synthetic picture (a camera delivers frames for free).

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{arg, run_to_end, PEER};

struct Run {
    summary: Value,
    cpu_s: f64,
}

/// Runs a peer to completion; returns its summary and CPU seconds.
fn run_peer(url: &str, room: &str, name: &str, size: &str, secs: f64, hz: &str) -> std::thread::JoinHandle<Run> {
    let mut cmd = Command::new(PEER);
    cmd.args(["--server", url, "--room", room, "--name", name, "--bind", "127.0.0.1", "--size", size]).args([
        "--duration",
        &secs.to_string(),
        "--audio",
        hz,
        "--quiet-stats",
    ]);
    let done = run_to_end(cmd);
    std::thread::spawn(move || {
        let (lines, cpu_s) = done.join().unwrap();
        let summary = lines.into_iter().find(|l| l["type"] == "summary").unwrap_or(Value::Null);
        Run { summary, cpu_s }
    })
}

fn main() {
    let secs: f64 = arg("--secs", "20").parse().expect("--secs");
    let sizes = arg("--sizes", "640x360,1280x720");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let srv = rt.block_on(async {
        let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
        confab_signal::Server::bind(cfg).await.unwrap().spawn()
    });
    let url = srv.ws_url();
    println!("confab call benchmark: 2 peers on loopback, {secs} s per size, 30 fps, VP8 + Opus");
    let mut json = Vec::new();
    for size in sizes.split(',') {
        let room = format!("bench-{size}");
        let a = run_peer(&url, &room, "A", size, secs, "synthetic:440");
        std::thread::sleep(Duration::from_millis(300));
        let b = run_peer(&url, &room, "B", size, secs - 0.3, "synthetic:660");
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        println!("  {size}:");
        for (who, r, other) in [("A", &a, "B"), ("B", &b, "A")] {
            let p = &r.summary["peers"][0];
            let setup = p["first_frame_ms"].as_u64();
            let (p50, p99) = (p["latency_ms"]["p50"].as_u64(), p["latency_ms"]["p99"].as_u64());
            let frames = p["frames_decoded"].as_u64().unwrap_or(0);
            let cpu_per_min = r.cpu_s / (secs / 60.0);
            println!(
                "    {who} <- {other}: setup {} ms, latency p50 {} ms p99 {} ms, {} frames ({:.1} fps), gaps {}, {:.1} CPU-s per minute",
                setup.map_or("-".into(), |v| v.to_string()),
                p50.map_or("-".into(), |v| v.to_string()),
                p99.map_or("-".into(), |v| v.to_string()),
                frames,
                frames as f64 / secs,
                p["stamp_gaps"],
                cpu_per_min
            );
            json.push(serde_json::json!({"size": size, "peer": who, "setup_ms": setup, "p50_ms": p50, "p99_ms": p99,
                "frames": frames, "cpu_s_per_min": cpu_per_min}));
        }
    }
    println!("{}", serde_json::json!({"type": "call_bench", "runs": json}));
    rt.block_on(srv.shutdown());
}
