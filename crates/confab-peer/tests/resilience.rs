//! Calls on bad networks, with real parts: real `confab-peer` processes (webrtc-rs, VP8,
//! Opus), the real `confab-signal` binary killed and restarted, and a real coturn reached
//! through `confab-netsim`, our user-space impairment relay (this kernel has no netem). The
//! devices are the synthetic camera and tone (no camera or sound card here).
//!
//! In the relayed tests both peers use relay-only ICE through the same coturn, so every
//! media packet crosses the impairment relay twice: once from the sender to coturn and once
//! from coturn to the receiver. The per-crossing figures are half of the end-to-end ones.

mod support;

use std::time::Duration;

use confab_netsim::Impairment;
use serde_json::Value;
use support::*;

fn first_frame(p: &Peer) {
    p.wait_for("the first picture", Duration::from_secs(15), |v| v["type"] == "first_frame");
}

fn server_link(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["type"] == kind && v.get("peer_id").is_none()
}

/// `peer_left` events in `lines` from before the other peer (`other`'s lines) chose to leave:
/// the peer was dropped, not gone.
fn dropped_early<'a>(lines: &'a [Value], other: &[Value]) -> Vec<&'a Value> {
    let left_at = events(other, "leaving").first().and_then(|l| l["at_ms"].as_u64()).unwrap_or(u64::MAX);
    events(lines, "peer_left").into_iter().filter(|e| e["at_ms"].as_u64().unwrap_or(0) < left_at).collect()
}

/// Ada (440 Hz) and Bob (660 Hz) join `room` with `args`; the checks read which tone each hears.
fn ada_and_bob(url: &str, room: &str, args: &[&str]) -> (Peer, Peer) {
    let a = Peer::start(url, room, "Ada", &[args, &["--audio", "synthetic:440"]].concat());
    let b = Peer::start(url, room, "Bob", &[args, &["--audio", "synthetic:660"]].concat());
    (a, b)
}

fn tone_heard(p: &Value, hz: f64) {
    let tone = p["audio_tone_hz"].as_f64().unwrap_or_else(|| panic!("no tone heard: {p}"));
    assert!((tone - hz).abs() < 2.0, "heard {tone} Hz, sent {hz} Hz: {p}");
}

#[test]
fn a_call_survives_the_server_crashing_and_restarting() {
    let _one = ONE_CALL_AT_A_TIME.blocking_lock();
    let port = free_port();
    // The same resume secret across the restart: clients get their ids back.
    let secret = ["--resume-secret", "kept across restarts"];
    let signal = SignalProcess::start(port, &secret);
    let url = signal.url();
    let a = Peer::start(&url, "crash", "Ada", &["--audio", "synthetic:440", "--duration", "14", "--chat-at", "9:back"]);
    let b = Peer::start(&url, "crash", "Bob", &["--audio", "synthetic:660", "--duration", "14"]);
    first_frame(&a);
    first_frame(&b);
    signal.kill();
    for p in [&a, &b] {
        p.wait_for("reconnecting to the server", Duration::from_secs(5), server_link("reconnecting"));
    }
    let _signal = SignalProcess::start(port, &secret);
    for p in [&a, &b] {
        p.wait_for("back with the server", Duration::from_secs(10), server_link("reconnected"));
    }
    let (a_ok, a_lines) = a.finish();
    let (b_ok, b_lines) = b.finish();
    for (lines, other, from, hz) in [(&a_lines, &b_lines, "Bob", 660.0), (&b_lines, &a_lines, "Ada", 440.0)] {
        let p = peer_in(lines, from);
        // Media never needed the server: no stall at all while it was down.
        assert!(p["max_frame_gap_ms"].as_u64().unwrap() < 300, "{from}'s picture stalled: {p}");
        assert!(p["frames_decoded"].as_u64().unwrap() > 300, "{p}");
        tone_heard(p, hz);
        assert!(dropped_early(lines, other).is_empty(), "nobody left: {:?}", dropped_early(lines, other));
        // Back under the same id: one peer in the summary (it is keyed by peer id).
        assert_eq!(summary(lines)["peers"].as_array().unwrap().len(), 1, "{}", summary(lines));
        assert!(events(lines, "error").is_empty(), "{:?}", events(lines, "error"));
    }
    // Both are in the restarted server's room: a chat sent after the restart arrives.
    let chats = events(&b_lines, "chat");
    assert!(chats.iter().any(|c| c["text"] == "back" && c["name"] == "Ada"), "{chats:?}");
    assert!(a_ok && b_ok);
}

#[test]
fn ice_restart_brings_media_back_after_the_relay_path_dies() {
    let _one = ONE_CALL_AT_A_TIME.blocking_lock();
    let setup = RelayedSetup::start(Impairment::default());
    let relay_only = ["--ice-policy", "relay", "--duration", "16"];
    let (a, b) = ada_and_bob(&setup.url(), "cut", &relay_only);
    first_frame(&a);
    first_frame(&b);
    // Every flow through the relay dies, as when a NAT binding or a relay port goes away.
    // New sockets get through: only an ICE restart, which gathers afresh, finds them.
    setup.relay.handle().cut();
    let mut recovered = Vec::new();
    for p in [&a, &b] {
        let back = p.wait_for("media back", Duration::from_secs(10), |v| {
            v["type"] == "reconnected" && v.get("peer_id").is_some()
        });
        recovered.push(back["after_ms"].as_u64().unwrap());
    }
    let (a_ok, a_lines) = a.finish();
    let (b_ok, b_lines) = b.finish();
    for (lines, other, from, hz) in [(&a_lines, &b_lines, "Bob", 660.0), (&b_lines, &a_lines, "Ada", 440.0)] {
        let p = peer_in(lines, from);
        assert_eq!(p["candidate_type"], "relay", "{p}");
        // One stall (the cut) and it is shorter than 5 s; pictures flow after it.
        let stalls = p["stalls"].as_array().unwrap();
        let worst = stalls.iter().map(|s| s[1].as_u64().unwrap()).max().unwrap_or(0);
        assert!(worst > 0 && worst < 5_000, "{from}: stalls {stalls:?}");
        assert!(p["frames_decoded"].as_u64().unwrap() > 250, "{p}");
        tone_heard(p, hz);
        let story: Vec<_> = lines.iter().filter(|l| l["type"] != "stats").collect();
        assert!(dropped_early(lines, other).is_empty(), "{story:?}");
    }
    assert!(setup.relay.handle().stats().cut_flows > 0);
    assert!(a_ok && b_ok, "recovered after {recovered:?} ms");
}

#[test]
fn video_and_audio_keep_flowing_through_loss_delay_and_jitter() {
    let _one = ONE_CALL_AT_A_TIME.blocking_lock();
    // Per crossing 2.5% loss and 40 +/- 10 ms: end to end about 5% and 80 +/- 20 ms.
    let imp = Impairment { loss: 0.025, delay_ms: 40, jitter_ms: 10, ..Default::default() };
    let setup = RelayedSetup::start(imp);
    let args = ["--ice-policy", "relay", "--duration", "15", "--size", "640x360"];
    let (a, b) = ada_and_bob(&setup.url(), "lossy", &args);
    let (a_ok, a_lines) = a.finish();
    let (b_ok, b_lines) = b.finish();
    let stats = setup.relay.handle().stats();
    assert!(stats.to_client.dropped > 0 && stats.to_upstream.dropped > 0, "the relay did drop packets: {stats:?}");
    for (lines, from, hz) in [(&a_lines, "Bob", 660.0), (&b_lines, "Ada", 440.0)] {
        let p = peer_in(lines, from);
        eprintln!("{from}: {p}");
        let frames = p["frames_decoded"].as_u64().unwrap();
        let gaps = p["stamp_gaps"].as_u64().unwrap();
        // NACK repairs the losses (a frame waits for its resend, so the picture pauses for
        // about a round trip); what it cannot repair is skipped until the next keyframe.
        assert!(frames > 200, "{from}: {frames} frames: {p}");
        assert!((gaps as f64) < 0.25 * frames as f64, "{from}: {gaps} stamp gaps in {frames}: {p}");
        assert!(p["max_frame_gap_ms"].as_u64().unwrap() < 1_500, "{from}: {p}");
        tone_heard(p, hz);
    }
    assert!(a_ok && b_ok);
}

#[test]
fn the_sender_backs_off_to_what_a_bottleneck_carries() {
    let _one = ONE_CALL_AT_A_TIME.blocking_lock();
    // 800 kbit/s each way through the relay with a 200 ms router queue, shared by both peers'
    // streams: about 400 kbit/s each, less than the 483 kbit/s 640x360 asks for plus audio.
    let imp = Impairment { rate_kbps: 800, queue_ms: 200, ..Default::default() };
    let setup = RelayedSetup::start(imp);
    let args = ["--ice-policy", "relay", "--duration", "20", "--size", "640x360"];
    let (a, b) = ada_and_bob(&setup.url(), "narrow", &args);
    let (a_ok, a_lines) = a.finish();
    let (b_ok, b_lines) = b.finish();
    let stats = setup.relay.handle().stats();
    eprintln!("bottleneck: {stats:?}");
    for (lines, from, hz) in [(&a_lines, "Bob", 660.0), (&b_lines, "Ada", 440.0)] {
        let p = peer_in(lines, from);
        eprintln!("{from}: {p}");
        // Our own encoder's budget (the same in every peer entry of a summary) went well
        // below the 483 kbit/s asked for. (How close it settles to the share, and the queue
        // it leaves standing, are figures for the recovery benchmark, not pass/fail here:
        // a loss-based controller keeps a few percent of loss at a bottleneck.)
        let least = p["min_video_budget_kbps"].as_u64().unwrap();
        assert!(least > 0 && least < 350, "the encoder never backed off below {least} kbit/s: {p}");
        assert!(p["frames_decoded"].as_u64().unwrap() > 100, "{p}");
        tone_heard(p, hz);
    }
    assert!(a_ok && b_ok);
}
