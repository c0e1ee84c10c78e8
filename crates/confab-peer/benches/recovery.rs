//! Recovery benchmark: how calls between two `confab-peer` processes (synthetic camera and
//! tone) come through three kinds of trouble, with the real parts of the resilience tests:
//!
//! 1. the `confab-signal` process is SIGKILLed mid-call and started again: the longest gap
//!    between pictures (target: none, i.e. no gap a viewer would notice) and how long until
//!    both peers are back in the room;
//! 2. every flow through the TURN relay dies (`confab-netsim` cut in front of coturn): the
//!    time from the cut until pictures move again, by ICE restart (target: under 5 s);
//! 3. 5 % loss and 80 +/- 20 ms delay end to end (2.5 % and 40 +/- 10 ms at each of the two
//!    crossings of the impairment relay): freeze time per minute, WebRTC's definition
//!    (target: under 1 s), plus what NACK left unrepaired;
//! 4. an 800 kbit/s bottleneck with a 200 ms queue shared by both peers: how much the
//!    bottleneck still drops once the senders adapted, and the latency left standing.
//!
//! `cargo build --release -p confab-signal && cargo bench -p confab-peer --bench recovery -- [--secs 60] [--size 640x360] [--only 1234]`
//!
//! Figures, not assertions. Needs coturn (scripts/bootstrap).

#[path = "support/mod.rs"]
mod bench;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use bench::arg;
use confab_netsim::Impairment;
use serde_json::Value;
use support::*;

fn first_frame(p: &Peer) {
    p.wait_for("the first picture", Duration::from_secs(20), |v| v["type"] == "first_frame");
}

fn server_link(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == kind && v.get("peer_id").is_none()
}

/// The summary entry each peer has of the other.
fn both(a: &[Value], b: &[Value]) -> [(String, Value); 2] {
    [("Ada sees Bob".into(), peer_in(a, "Bob").clone()), ("Bob sees Ada".into(), peer_in(b, "Ada").clone())]
}

fn server_restart(size: &str) {
    let port = free_port();
    let secret = ["--resume-secret", "kept across restarts"];
    let signal = SignalProcess::start(port, &secret);
    let url = signal.url();
    let a = Peer::start(&url, "bench-crash", "Ada", &["--duration", "14", "--size", size]);
    let b = Peer::start(&url, "bench-crash", "Bob", &["--duration", "14", "--size", size]);
    first_frame(&a);
    first_frame(&b);
    std::thread::sleep(Duration::from_secs(2));
    signal.kill();
    for p in [&a, &b] {
        p.wait_for("reconnecting", Duration::from_secs(5), server_link("reconnecting"));
    }
    let down = std::time::Instant::now();
    // Down for a second, as a restart by systemd would be.
    std::thread::sleep(Duration::from_secs(1));
    let _signal = SignalProcess::start(port, &secret);
    let mut back = Vec::new();
    for p in [&a, &b] {
        let v = p.wait_for("reconnected", Duration::from_secs(15), server_link("reconnected"));
        back.push(v["after_ms"].as_u64().unwrap_or(0));
    }
    let outage_ms = down.elapsed().as_millis();
    let (_, a_lines) = a.finish();
    let (_, b_lines) = b.finish();
    println!("1. signaling server killed and restarted ({size}):");
    println!("   back in the room after {} / {} ms (server gone ~{outage_ms} ms)", back[0], back[1]);
    for (who, p) in both(&a_lines, &b_lines) {
        println!(
            "   {who}: longest picture gap {} ms, stalls >= 300 ms: {}, frames {}",
            p["max_frame_gap_ms"],
            p["stalls"].as_array().map_or(0, |s| s.len()),
            p["frames_decoded"]
        );
    }
}

fn path_cut(size: &str) {
    let setup = RelayedSetup::start(Impairment::default());
    let args = ["--ice-policy", "relay", "--duration", "16", "--size", size];
    let a = Peer::start(&setup.url(), "bench-cut", "Ada", &args);
    let b = Peer::start(&setup.url(), "bench-cut", "Bob", &args);
    first_frame(&a);
    first_frame(&b);
    std::thread::sleep(Duration::from_secs(3));
    let cut_at = confab_proto::wall_ms();
    setup.relay.handle().cut();
    for p in [&a, &b] {
        p.wait_for("media back", Duration::from_secs(12), |v| v["type"] == "reconnected" && v.get("peer_id").is_some());
    }
    let (_, a_lines) = a.finish();
    let (_, b_lines) = b.finish();
    println!("2. relay path cut, ICE restart ({size}, relay-only through coturn):");
    for (who, p) in both(&a_lines, &b_lines) {
        // The stall that spans the cut ends when pictures move again.
        let restored = p["stalls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s[0].as_u64()?, s[1].as_u64()?)))
            .find(|(end, gap)| *end > cut_at && end - gap <= cut_at + 100)
            .map(|(end, _)| end - cut_at);
        match restored {
            Some(ms) => println!("   {who}: pictures again {ms} ms after the cut"),
            None => println!("   {who}: no stall found around the cut (stalls {})", p["stalls"]),
        }
    }
}

fn lossy(size: &str, secs: f64) {
    let imp = Impairment { loss: 0.025, delay_ms: 40, jitter_ms: 10, ..Default::default() };
    let setup = RelayedSetup::start(imp);
    let d = secs.to_string();
    let args = ["--ice-policy", "relay", "--duration", d.as_str(), "--size", size];
    let a = Peer::start(&setup.url(), "bench-loss", "Ada", &args);
    let b = Peer::start(&setup.url(), "bench-loss", "Bob", &args);
    let (_, a_lines) = a.finish();
    let (_, b_lines) = b.finish();
    let stats = setup.relay.handle().stats();
    let dropped = stats.to_client.dropped + stats.to_upstream.dropped;
    let passed = stats.to_client.forwarded + stats.to_upstream.forwarded;
    println!("3. 5 % loss, 80 +/- 20 ms ({size}, {secs} s; relay dropped {dropped} of {} packets):", dropped + passed);
    for (who, p) in both(&a_lines, &b_lines) {
        let first_s = p["first_frame_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let minutes = ((secs - first_s) / 60.0).max(1e-3);
        let freeze = p["freeze_ms"].as_f64().unwrap_or(0.0);
        println!(
            "   {who}: freeze {:.0} ms per minute ({} freezes), frames {}, unrepaired frame gaps {}, latency {}, video {} kbit/s",
            freeze / minutes,
            p["freezes"],
            p["frames_decoded"],
            p["stamp_gaps"],
            p["latency_ms"],
            p["video_budget_kbps"]
        );
    }
}

fn bottleneck(size: &str) {
    let imp = Impairment { rate_kbps: 800, queue_ms: 200, ..Default::default() };
    let setup = RelayedSetup::start(imp);
    let args = ["--ice-policy", "relay", "--duration", "30", "--size", size];
    let a = Peer::start(&setup.url(), "bench-narrow", "Ada", &args);
    let b = Peer::start(&setup.url(), "bench-narrow", "Bob", &args);
    first_frame(&a);
    first_frame(&b);
    std::thread::sleep(Duration::from_secs(15));
    let mid = setup.relay.handle().stats();
    let (_, a_lines) = a.finish();
    let (_, b_lines) = b.finish();
    let end = setup.relay.handle().stats();
    let dropped = (end.to_upstream.dropped + end.to_client.dropped) - (mid.to_upstream.dropped + mid.to_client.dropped);
    let passed =
        (end.to_upstream.forwarded + end.to_client.forwarded) - (mid.to_upstream.forwarded + mid.to_client.forwarded);
    println!(
        "4. 800 kbit/s bottleneck, 200 ms queue, shared by both ({size}): last ~12 s, {:.1} % of packets dropped",
        100.0 * dropped as f64 / (dropped + passed).max(1) as f64
    );
    for (who, p) in both(&a_lines, &b_lines) {
        println!(
            "   {who}: received {:.0} kbit/s, latency {}, freezes {} ms, own video budget {} (lowest {}) kbit/s",
            p["bitrate_in_kbps"].as_f64().unwrap_or(0.0),
            p["latency_ms"],
            p["freeze_ms"],
            p["video_budget_kbps"],
            p["min_video_budget_kbps"]
        );
    }
}

fn main() {
    let secs: f64 = arg("--secs", "60").parse().expect("--secs N");
    let size = arg("--size", "640x360");
    let only = arg("--only", "1234");
    if only.contains('1') {
        server_restart(&size);
    }
    if only.contains('2') {
        path_cut(&size);
    }
    if only.contains('3') {
        lossy(&size, secs);
    }
    if only.contains('4') {
        bottleneck(&size);
    }
}
