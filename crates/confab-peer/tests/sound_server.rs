//! Real sound devices: a PulseAudio daemon per test, as on a desktop (where PipeWire speaks
//! the same protocol), with null sinks, which are clocked like hardware. `confab-peer` must
//! list the server's devices under the names it gives them, the defaults first, without
//! monitors or ALSA plugins; and a call must carry what the microphone hears to the other
//! side and play what the other side sends into the speaker.
//!
//! Needs `pulseaudio` and `pulseaudio-utils` (`scripts/bootstrap` installs them): without
//! them these tests fail, they never skip.

mod support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{peer_in, Peer, ONE_CALL_AT_A_TIME, PEER};

const RATE: usize = 48_000;

/// One PulseAudio daemon in its own runtime directory. Devices: the speaker `desk`, the
/// room that the microphone hears (`room`, a sink to play into), and the microphone `mic`
/// (the room's monitor remapped, so that it is a real source and not a monitor). `desk` and
/// `mic` are the defaults.
struct SoundServer {
    dir: PathBuf,
    daemon: Child,
}

impl SoundServer {
    fn start(name: &str) -> SoundServer {
        let dir = std::env::temp_dir().join(format!("confab-pulse-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sink = |name: &str, description: &str| {
            format!("module-null-sink sink_name={name} rate=48000 channels=1 sink_properties=device.description={description}")
        };
        let mut cmd = Command::new("pulseaudio");
        cmd.args(["-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no"])
            .args(["-L", &format!("module-native-protocol-unix auth-cookie={}", dir.join("cookie").display())])
            .args(["-L", &sink("desk", "Desk-Speakers"), "-L", &sink("room", "Room")])
            .args(["-L", "module-remap-source source_name=mic master=room.monitor source_properties=device.description=Desk-Microphone"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        env(&mut cmd, &dir);
        let daemon = cmd.spawn().expect("start pulseaudio (scripts/bootstrap installs it)");
        let server = SoundServer { dir, daemon };
        let end = Instant::now() + Duration::from_secs(10);
        while !server.pactl(&["info"]) {
            assert!(Instant::now() < end, "pulseaudio did not come up within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(server.pactl(&["set-default-sink", "desk"]) && server.pactl(&["set-default-source", "mic"]));
        server
    }

    /// A command that uses this server, as every client on a desktop uses its session's.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        env(&mut cmd, &self.dir);
        cmd
    }

    fn pactl(&self, args: &[&str]) -> bool {
        let mut cmd = self.command("pactl");
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }
}

fn env(cmd: &mut Command, dir: &std::path::Path) {
    let pulse = dir.join("pulse");
    cmd.env("XDG_RUNTIME_DIR", dir)
        .env("PULSE_RUNTIME_PATH", &pulse)
        .env("PULSE_SERVER", format!("unix:{}", pulse.join("native").display()))
        // Clients prove themselves with the server's cookie; name it rather than rely on
        // HOME and XDG_CONFIG_HOME agreeing.
        .env("PULSE_COOKIE", dir.join("cookie"))
        .env("HOME", dir);
}

impl Drop for SoundServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

/// `secs` of a tone at `hz`, 16-bit mono at 48 kHz, about -12 dBFS.
fn tone(hz: f64, secs: f64) -> Vec<u8> {
    (0..(secs * RATE as f64) as usize)
        .flat_map(|i| {
            let v = (2.0 * std::f64::consts::PI * hz * i as f64 / RATE as f64).sin() * 8_000.0;
            (v as i16).to_le_bytes()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_real_sound_devices_carries_the_microphone_and_plays_the_speaker() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    let srv = confab_signal::Server::bind(cfg).await.unwrap().spawn();
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
