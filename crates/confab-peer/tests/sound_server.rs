//! Real sound devices: a PulseAudio daemon per peer, as on a desktop (where PipeWire speaks
//! the same protocol), with null sinks, which are clocked like hardware. `confab-peer` must
//! list the server's devices under the names it gives them, the defaults first, without
//! monitors or ALSA plugins; a call must carry what the microphone hears to the other
//! side and play what the other side sends into the speaker; and where the speaker plays
//! into the room the microphone hears, as on any laptop, the other side must not hear
//! itself.
//!
//! Needs `pulseaudio` and `pulseaudio-utils` (`scripts/bootstrap` installs them): without
//! them these tests fail, they never skip.

mod support;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::sound::{band_level, talking, tone, with_noise, SoundServer, ADA_BAND, BOB_BAND, RATE};
use support::{peer_in, Peer, ONE_CALL_AT_A_TIME, PEER};

/// A signaling server on loopback, for one test's call.
async fn signal_server() -> confab_signal::ServerHandle {
    let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    confab_signal::Server::bind(cfg).await.unwrap().spawn()
}

fn devices(server: &SoundServer) -> Vec<Value> {
    let out = server.command(PEER).arg("--list-devices").output().expect("run confab-peer --list-devices");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    v["devices"].as_array().unwrap().clone()
}

#[test]
fn the_sound_servers_devices_are_listed_by_their_names_defaults_first() {
    let server = SoundServer::start("list");
    let list = devices(&server);
    let hardware = |kind: &str| -> Vec<&Value> {
        list.iter().filter(|d| d["kind"] == kind && d["id"] != "synthetic" && d["id"] != "null").collect()
    };
    let (mics, speakers) = (hardware("microphone"), hardware("speaker"));
    assert_eq!(mics.len(), 1, "the microphone, and no monitor: {list:?}");
    assert_eq!((&mics[0]["name"], &mics[0]["default"]), (&Value::from("Desk-Microphone"), &Value::from(true)));
    assert_eq!(speakers.len(), 2, "{list:?}");
    assert_eq!((&speakers[0]["name"], &speakers[0]["default"]), (&Value::from("Desk-Speakers"), &Value::from(true)));
    assert_eq!((&speakers[1]["name"], &speakers[1]["default"]), (&Value::from("Room"), &Value::from(false)));
    for d in mics.iter().chain(&speakers) {
        let id = d["id"].as_str().unwrap();
        assert!(id.starts_with("pulseaudio:"), "while a sound server runs, its devices (no ALSA plugins): {d}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_real_sound_devices_carries_the_microphone_and_plays_the_speaker() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let srv = signal_server().await;
    let url = srv.ws_url();
    let sound = SoundServer::start("call");
    let pacat = |args: &[&str]| {
        let mut cmd = sound.command("pacat");
        cmd.args(args).args(["--format=s16le", "--rate=48000", "--channels=1", "--latency-msec=50"]);
        cmd
    };
    // Ada's room: someone whistles 440 Hz into her microphone for the whole call.
    let mut room = pacat(&["--playback", "--device=room"]).stdin(Stdio::piped()).spawn().expect("pacat");
    let mut whistle = room.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = whistle.write_all(&tone(440.0, 16.0));
    });
    // What Ada's speaker plays, from its monitor.
    let mut recorder = pacat(&["--record", "--device=desk.monitor"]).stdout(Stdio::piped()).spawn().expect("pacat");
    let mut recorded = recorder.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = recorded.read_to_end(&mut buf);
        buf
    });

    let common = ["--bind", "127.0.0.1", "--quiet-stats", "--size", "320x180", "--duration", "10"];
    let mut ada = sound.command(PEER);
    ada.args(["--server", &url, "--room", "sound", "--name", "Ada", "--audio", "mic", "--speaker", "speaker"]);
    // A steady whistle is what noise suppression rightly removes (the tests below use
    // speech-like voices); this one is about the devices.
    ada.args(["--ns", "off"]);
    ada.args(common);
    let ada = Peer::spawn_command(ada);
    let bob = Peer::start(&url, "sound", "Bob", &["--audio", "synthetic:660", "--duration", "10"]);
    let (ada_ok, ada_lines) = tokio::task::spawn_blocking(|| ada.finish()).await.unwrap();
    let (bob_ok, bob_lines) = tokio::task::spawn_blocking(|| bob.finish()).await.unwrap();
    let _ = recorder.kill();
    let _ = recorder.wait();
    let _ = room.kill();
    let _ = room.wait();
    let _ = feeder.join();
    let played = reader.join().unwrap();

    assert!(ada_ok && bob_ok, "both exchanged media: {ada_lines:?}");
    let heard = peer_in(&bob_lines, "Ada")["audio_tone_hz"].as_f64();
    assert!(heard.is_some_and(|hz| (hz - 440.0).abs() < 2.0), "Bob hears Ada's microphone: {heard:?}");
    let samples: Vec<i16> = played.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    // The last ~3 s of the call, well after Bob's audio started playing.
    let call = &samples[..samples.len().saturating_sub(RATE / 2)];
    let window = &call[call.len().saturating_sub(3 * RATE)..];
    let rms = (window.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / window.len().max(1) as f64).sqrt();
    assert!(rms > 300.0, "Ada's speaker played something (rms {rms:.0} of {} samples)", samples.len());
    let hz = confab_engine::tone::dominant_frequency(window, RATE as u32);
    assert!(hz.is_some_and(|hz| (hz - 660.0).abs() < 3.0), "Ada's speaker plays Bob's 660 Hz: {hz:?}");
}

/// A call between Ada's desk and Bob's, each with its own sound server: Ada and Bob take
/// turns talking into their rooms (Bob's through `bob_room`, which may add to his voice);
/// with `laptop`, Bob's speaker plays into the room his microphone hears. Returns the last
/// 5 s of what Ada's speaker played during the call.
async fn desk_to_desk(
    tag: &str,
    call_secs: u32,
    laptop: bool,
    bob_room: impl FnOnce(Vec<u8>) -> Vec<u8>,
    bob_args: &[&str],
) -> Vec<i16> {
    let srv = signal_server().await;
    let url = srv.ws_url();
    let (ada_desk, bob_desk) = (SoundServer::start(&format!("ada-{tag}")), SoundServer::start(&format!("bob-{tag}")));
    if laptop {
        bob_desk.speaker_into_the_room();
    }
    let secs = call_secs as f64 + 4.0;
    let ada_talks = ada_desk.play("room", talking(130.0, ADA_BAND, secs, 1, 0));
    let bob_talks = bob_desk.play("room", bob_room(talking(220.0, BOB_BAND, secs, 2, 1)));
    let ada_hears = ada_desk.record("desk.monitor");

    let peer = |desk: &SoundServer, name: &str, extra: &[&str]| {
        let mut cmd = desk.command(PEER);
        cmd.args(["--server", &url, "--room", &format!("desks-{tag}"), "--name", name]);
        cmd.args(["--audio", "mic", "--speaker", "speaker", "--bind", "127.0.0.1", "--quiet-stats"]);
        cmd.args(["--size", "320x180", "--duration", &call_secs.to_string()]).args(extra);
        Peer::spawn_command(cmd)
    };
    let ada = peer(&ada_desk, "Ada", &[]);
    let bob = peer(&bob_desk, "Bob", bob_args);
    let (ada_ok, ada_lines) = tokio::task::spawn_blocking(|| ada.finish()).await.unwrap();
    let (bob_ok, _) = tokio::task::spawn_blocking(|| bob.finish()).await.unwrap();
    let heard = ada_hears.stop();
    for (mut child, feeder) in [ada_talks, bob_talks] {
        let _ = child.kill();
        let _ = child.wait();
        let _ = feeder.join();
    }
    assert!(ada_ok && bob_ok, "both exchanged media: {ada_lines:?}");
    // The last 5 s of the call.
    let call = &heard[..heard.len().saturating_sub(RATE)];
    let window = call[call.len().saturating_sub(5 * RATE)..].to_vec();
    let bob_voice = band_level(&window, BOB_BAND);
    // Silence measures about -20 here.
    assert!(bob_voice > 20.0, "{tag}: Ada's speaker plays Bob ({bob_voice:.1} dB)");
    window
}

/// With Bob on laptop speakers: how far below Bob's voice Ada's own voice comes back to her
/// speaker, in dB.
async fn own_voice_below_the_other(bob_args: &[&str], tag: &str) -> f64 {
    // 14 s before the last 5: the canceller has had three of Ada's turns to converge (on a
    // fresh CI clone one was not always enough).
    let heard = desk_to_desk(tag, 20, true, |voice| voice, bob_args).await;
    let (bob_voice, own_voice) = (band_level(&heard, BOB_BAND), band_level(&heard, ADA_BAND));
    eprintln!("{tag}: Bob's voice {bob_voice:.1} dB, Ada's own {own_voice:.1} dB");
    bob_voice - own_voice
}

/// With a fan running in Bob's room: how loud it is at Ada's speaker, below 1 kHz, where
/// Bob's voice is not (Bob's speaker does not reach his microphone here, so no echo of
/// Ada's voice is there either).
async fn bobs_noise_at_ada(bob_args: &[&str], tag: &str) -> f64 {
    let heard = desk_to_desk(tag, 12, false, with_noise, bob_args).await;
    let noise = band_level(&heard, ADA_BAND);
    eprintln!("{tag}: Bob's noise {noise:.1} dB at Ada's speaker");
    noise
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_laptop_speakers_the_far_end_does_not_hear_itself() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let apart = own_voice_below_the_other(&[], "aec").await;
    assert!(apart >= 30.0, "Ada's own voice only {apart:.1} dB below Bob's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_echo_cancellation_the_far_end_hears_itself() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let apart = own_voice_below_the_other(&["--aec", "off"], "no-aec").await;
    assert!(apart < 10.0, "the echo is there without the canceller: {apart:.1} dB apart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_suppression_keeps_the_far_ends_fan_out_of_the_call() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    // Gain control off on both sides of the comparison: it would pump the noise up and down
    // between the runs.
    let on = bobs_noise_at_ada(&["--agc", "off"], "ns").await;
    let off = bobs_noise_at_ada(&["--agc", "off", "--ns", "off"], "no-ns").await;
    assert!(off - on >= 15.0, "noise {on:.1} dB with suppression, {off:.1} dB without");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_microphone_suspended_mid_call_comes_back() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let srv = signal_server().await;
    let url = srv.ws_url();
    let desk = SoundServer::start("suspend");
    let (mut voice, feeder) = desk.play("room", talking(130.0, ADA_BAND, 20.0, 1, 0));
    let mut ada = desk.command(PEER);
    ada.args(["--server", &url, "--room", "suspend", "--name", "Ada", "--audio", "mic", "--speaker", "null"]);
    ada.args(["--bind", "127.0.0.1", "--quiet-stats", "--size", "320x180", "--duration", "16"]);
    let ada = Peer::spawn_command(ada);
    let bob = Peer::start(&url, "suspend", "Bob", &["--audio", "synthetic:660", "--duration", "16"]);
    ada.wait_for("the call", Duration::from_secs(15), |v| v["type"] == "connection" && v["state"] == "connected");
    std::thread::sleep(Duration::from_secs(2));
    // The sound server takes the microphone away for 3 s, as when a device is suspended.
    assert!(desk.pactl(&["suspend-source", "mic", "1"]));
    ada.wait_for("the microphone stopping", Duration::from_secs(8), |v| {
        v["type"] == "device" && v["state"] == "stopped"
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(desk.pactl(&["suspend-source", "mic", "0"]));
    ada.wait_for("the microphone back", Duration::from_secs(8), |v| v["type"] == "device" && v["state"] == "back");
    let (ada_ok, ada_lines) = tokio::task::spawn_blocking(|| ada.finish()).await.unwrap();
    let (bob_ok, bob_lines) = tokio::task::spawn_blocking(|| bob.finish()).await.unwrap();
    let _ = voice.kill();
    let _ = voice.wait();
    let _ = feeder.join();
    assert!(ada_ok && bob_ok, "{ada_lines:?}");
    // 20 ms packets: over 16 s, about 800 if nothing stopped; about 150 if the microphone's
    // audio had ended when it was suspended.
    let heard = peer_in(&bob_lines, "Ada")["audio_packets_received"].as_u64().unwrap();
    assert!(heard > 450, "Bob heard Ada again after the microphone came back: {heard} packets");
}

/// A sound card as many come: 44.1 kHz stereo. confab opens it as it is (the sound server
/// converts nothing for it) and converts to and from the call's 48 kHz mono itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_44_1_khz_stereo_sound_card_carries_the_call_both_ways() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let srv = signal_server().await;
    let url = srv.ws_url();
    let desk = SoundServer::start_with("cd", 44_100, 2);
    let (mut whistle, feeder) = desk.play("room", tone(440.0, 16.0));
    let heard = desk.record("desk.monitor");
    let mut ada = desk.command(PEER);
    ada.args(["--server", &url, "--room", "cd", "--name", "Ada", "--audio", "mic", "--speaker", "speaker"]);
    // A steady whistle is what noise suppression rightly removes.
    ada.args(["--ns", "off", "--bind", "127.0.0.1", "--quiet-stats", "--size", "320x180", "--duration", "10"]);
    let ada = Peer::spawn_command(ada);
    let bob = Peer::start(&url, "cd", "Bob", &["--audio", "synthetic:660", "--duration", "10"]);
    ada.wait_for("the call", Duration::from_secs(15), |v| v["type"] == "connection" && v["state"] == "connected");
    std::thread::sleep(Duration::from_secs(1));
    // How the sound server sees confab's streams: at the card's own rate and channels (our
    // `pacat`s record and play 48 kHz mono).
    let speaker = desk.pactl_output(&["list", "sink-inputs"]);
    let mic = desk.pactl_output(&["list", "source-outputs"]);
    let (ada_ok, ada_lines) = tokio::task::spawn_blocking(|| ada.finish()).await.unwrap();
    let (bob_ok, bob_lines) = tokio::task::spawn_blocking(|| bob.finish()).await.unwrap();
    let played = heard.stop();
    let _ = whistle.kill();
    let _ = whistle.wait();
    let _ = feeder.join();
    assert!(ada_ok && bob_ok, "{ada_lines:?}");
    assert!(speaker.contains("2ch 44100Hz"), "confab plays at the card's rate: {speaker}");
    assert!(mic.contains("2ch 44100Hz"), "confab records at the card's rate: {mic}");
    let hz = peer_in(&bob_lines, "Ada")["audio_tone_hz"].as_f64();
    assert!(hz.is_some_and(|hz| (hz - 440.0).abs() < 2.0), "Bob hears Ada's whistle at its pitch: {hz:?}");
    let call = &played[..played.len().saturating_sub(RATE / 2)];
    let window = &call[call.len().saturating_sub(3 * RATE)..];
    let hz = confab_engine::tone::dominant_frequency(window, RATE as u32);
    assert!(hz.is_some_and(|hz| (hz - 660.0).abs() < 3.0), "Ada's speaker plays Bob at his pitch: {hz:?}");
    assert!(band_level(window, (600.0, 720.0)) > 20.0, "and loud enough to hear");
}

/// The id `confab-peer --list-devices` gives the device named `name`.
fn device_id(desk: &SoundServer, name: &str) -> String {
    let list = devices(desk);
    let d = list.iter().find(|d| d["name"] == name).unwrap_or_else(|| panic!("no {name} in {list:?}"));
    d["id"].as_str().unwrap().to_string()
}

/// A headset microphone pulled out mid-call: the call goes on with the desk's own
/// microphone (the system default), says so once, and Bob hears what that one hears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_microphone_gives_way_to_the_default_one() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let srv = signal_server().await;
    let url = srv.ws_url();
    let desk = SoundServer::start("unplug-mic");
    // The headset: the room its microphone hears, and the microphone.
    desk.load_module(&["module-null-sink", "sink_name=headroom", "rate=48000", "channels=1"]);
    let headset = desk.load_module(&[
        "module-remap-source",
        "source_name=headset",
        "master=headroom.monitor",
        "source_properties=device.description=Headset-Microphone",
    ]);
    let id = device_id(&desk, "Headset-Microphone");
    let (near, near_feeder) = desk.play("headroom", tone(440.0, 24.0));
    let (far, far_feeder) = desk.play("room", tone(550.0, 24.0));
    let mut ada = desk.command(PEER);
    ada.args(["--server", &url, "--room", "unplug-mic", "--name", "Ada", "--audio", &format!("mic:{id}")]);
    ada.args(["--speaker", "null", "--ns", "off", "--bind", "127.0.0.1", "--quiet-stats", "--size", "320x180"]);
    ada.args(["--duration", "14"]);
    let ada = Peer::spawn_command(ada);
    let bob = Peer::start(&url, "unplug-mic", "Bob", &["--audio", "synthetic:660", "--duration", "14"]);
    ada.wait_for("the call", Duration::from_secs(15), |v| v["type"] == "connection" && v["state"] == "connected");
    std::thread::sleep(Duration::from_secs(3));
    assert!(desk.pactl(&["unload-module", &headset]), "unplug the headset");
    let moved = ada.wait_for("the move to the default microphone", Duration::from_secs(8), |v| {
        v["type"] == "device" && v["kind"] == "microphone"
    });
    let (ada_ok, ada_lines) = tokio::task::spawn_blocking(|| ada.finish()).await.unwrap();
    let (bob_ok, bob_lines) = tokio::task::spawn_blocking(|| bob.finish()).await.unwrap();
    for (mut child, feeder) in [(near, near_feeder), (far, far_feeder)] {
        let _ = child.kill();
        let _ = child.wait();
        let _ = feeder.join();
    }
    assert!(ada_ok && bob_ok, "{ada_lines:?}");
    assert_eq!(
        (&moved["state"], &moved["device"]),
        (&Value::from("moved"), &Value::from("Desk-Microphone")),
        "{moved}"
    );
    let device_events = ada_lines.iter().filter(|v| v["type"] == "device").count();
    assert_eq!(device_events, 1, "one word about it: {ada_lines:?}");
    let ada_at_bob = peer_in(&bob_lines, "Ada");
    let hz = ada_at_bob["audio_tone_hz"].as_f64();
    assert!(hz.is_some_and(|hz| (hz - 550.0).abs() < 2.0), "Bob hears the desk microphone at the end: {hz:?}");
    let packets = ada_at_bob["audio_packets_received"].as_u64().unwrap();
    assert!(packets > 550, "and heard Ada all along: {packets} packets in 14 s");
}

/// Headphones pulled out mid-call: the call plays on through the desk's speakers (the
/// system default) and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugged_headphones_give_way_to_the_default_speaker() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let srv = signal_server().await;
    let url = srv.ws_url();
    let desk = SoundServer::start("unplug-speaker");
    let headphones = desk.load_module(&[
        "module-null-sink",
        "sink_name=headphones",
        "rate=48000",
        "channels=1",
        "sink_properties=device.description=Headphones",
    ]);
    let id = device_id(&desk, "Headphones");
    let speakers = desk.record("desk.monitor");
    let mut ada = desk.command(PEER);
    ada.args(["--server", &url, "--room", "unplug-speaker", "--name", "Ada", "--audio", "none"]);
    ada.args(["--speaker", &format!("speaker:{id}"), "--bind", "127.0.0.1", "--quiet-stats", "--size", "320x180"]);
    ada.args(["--duration", "12"]);
    let ada = Peer::spawn_command(ada);
    let bob = Peer::start(&url, "unplug-speaker", "Bob", &["--audio", "synthetic:660", "--duration", "12"]);
    ada.wait_for("the call", Duration::from_secs(15), |v| v["type"] == "connection" && v["state"] == "connected");
    std::thread::sleep(Duration::from_secs(3));
    assert!(desk.pactl(&["unload-module", &headphones]), "unplug the headphones");
    let moved = ada.wait_for("the move to the default speaker", Duration::from_secs(8), |v| {
        v["type"] == "device" && v["kind"] == "speaker"
    });
    let (ada_ok, ada_lines) = tokio::task::spawn_blocking(|| ada.finish()).await.unwrap();
    let (bob_ok, _) = tokio::task::spawn_blocking(|| bob.finish()).await.unwrap();
    let played = speakers.stop();
    assert!(ada_ok && bob_ok, "{ada_lines:?}");
    assert_eq!((&moved["state"], &moved["device"]), (&Value::from("moved"), &Value::from("Desk-Speakers")), "{moved}");
    let call = &played[..played.len().saturating_sub(RATE / 2)];
    let window = &call[call.len().saturating_sub(3 * RATE)..];
    let hz = confab_engine::tone::dominant_frequency(window, RATE as u32);
    assert!(hz.is_some_and(|hz| (hz - 660.0).abs() < 3.0), "the desk's speakers play Bob: {hz:?}");
}
