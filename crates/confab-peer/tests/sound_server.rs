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

    /// Our speaker plays into the room our microphone hears: laptop speakers, no headset.
    fn speaker_into_the_room(&self) {
        assert!(self.pactl(&["set-default-sink", "room"]));
    }

    /// `pacat` playing `pcm` (16-bit mono 48 kHz) into `device`; stops when the returned
    /// child is killed.
    fn play(&self, device: &str, pcm: Vec<u8>) -> (Child, std::thread::JoinHandle<()>) {
        let mut cmd = self.command("pacat");
        cmd.args(["--playback", &format!("--device={device}")]).args(PCM);
        let mut child = cmd.stdin(Stdio::piped()).spawn().expect("pacat");
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&pcm);
        });
        (child, feeder)
    }

    /// Records `device` until `stop` is called on the result.
    fn record(&self, device: &str) -> Recording {
        let mut cmd = self.command("pacat");
        cmd.args(["--record", &format!("--device={device}")]).args(PCM);
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("pacat");
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            buf
        });
        Recording { child, reader }
    }

    fn pactl(&self, args: &[&str]) -> bool {
        let mut cmd = self.command("pactl");
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }
}

const PCM: [&str; 4] = ["--format=s16le", "--rate=48000", "--channels=1", "--latency-msec=50"];

struct Recording {
    child: Child,
    reader: std::thread::JoinHandle<Vec<u8>>,
}

impl Recording {
    fn stop(mut self) -> Vec<i16> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bytes = self.reader.join().unwrap();
        bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
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

/// Someone talking, 16-bit mono at 48 kHz: syllables of 150-300 ms with 60-160 ms pauses,
/// each rising and falling on a gliding pitch around `f0`, its harmonics shaped to the band
/// `lo..hi` Hz, about -12 dBFS at their peak; only in every other turn of 2.5 s (`turn` 0
/// the first, 1 the second), as two people in a conversation take turns. Like speech, and
/// unlike a steady tone, this is neither what noise suppression removes nor the narrow-band
/// signal on which an echo canceller (rightly) stops adapting.
fn talking(f0: f64, (lo, hi): (f64, f64), secs: f64, seed: u32, turn: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    let mut next = move |lo: f64, hi: f64| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        lo + (hi - lo) * (state >> 8) as f64 / (1u32 << 24) as f64
    };
    // Raised-cosine weight over the band: no energy outside it.
    let weight = |f: f64| if f <= lo || f >= hi { 0.0 } else { (std::f64::consts::PI * (f - lo) / (hi - lo)).sin() };
    let total = (secs * RATE as f64) as usize;
    let mut pcm = vec![0.0f64; total];
    let mut t = 0;
    while t < total {
        let len = (next(0.15, 0.30) * RATE as f64) as usize;
        let (p0, p1) = (f0 * next(0.8, 1.25), f0 * next(0.8, 1.25));
        let mut phase = 0.0f64;
        let mine = (t / (RATE * 5 / 2)) % 2 == turn;
        for i in (0..len.min(total - t)).filter(|_| mine) {
            let x = i as f64 / len as f64;
            let pitch = p0 + (p1 - p0) * x;
            phase += 2.0 * std::f64::consts::PI * pitch / RATE as f64;
            let voiced: f64 =
                (1..=(hi / pitch) as usize).map(|h| weight(h as f64 * pitch) * (h as f64 * phase).sin()).sum();
            pcm[t + i] = voiced * (std::f64::consts::PI * x).sin();
        }
        t += len + (next(0.06, 0.16) * RATE as f64) as usize;
    }
    let peak = pcm.iter().fold(1e-9f64, |m, s| m.max(s.abs()));
    pcm.iter().flat_map(|s| ((s / peak * 8_000.0) as i16).to_le_bytes()).collect()
}

/// Ada's voice sits below 1 kHz and Bob's above 1.5 kHz, so that what Ada's speaker plays
/// can be taken apart by frequency.
const ADA_BAND: (f64, f64) = (100.0, 1_000.0);
const BOB_BAND: (f64, f64) = (1_500.0, 4_000.0);

/// Power in `x` between `lo` and `hi` Hz (Goertzel every 20 Hz, inside the band's edges), dB.
fn band_level(x: &[i16], (lo, hi): (f64, f64)) -> f64 {
    let mut total = 0.0;
    let mut f = lo + 40.0;
    while f < hi - 40.0 {
        let w = 2.0 * std::f64::consts::PI * f / RATE as f64;
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &v in x {
            let s = v as f64 + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        total += (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) / (x.len() as f64).powi(2);
        f += 20.0;
    }
    10.0 * (total + 1e-9).log10()
}

/// White noise at -30 dBFS RMS added to `pcm` (16-bit mono): a fan, a street.
fn with_noise(pcm: Vec<u8>) -> Vec<u8> {
    let mut state = 12_345u32;
    pcm.chunks_exact(2)
        .flat_map(|b| {
            // The sum of 12 uniform draws: roughly Gaussian, unit variance.
            let gauss: f64 = (0..12)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f64 / (1u32 << 24) as f64
                })
                .sum::<f64>()
                - 6.0;
            let s = i16::from_le_bytes([b[0], b[1]]) as f64 + gauss * 32_768.0 * 10f64.powf(-30.0 / 20.0);
            (s.clamp(-32_768.0, 32_767.0) as i16).to_le_bytes()
        })
        .collect()
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
