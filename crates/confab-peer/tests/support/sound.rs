//! Real sound devices for the tests: a PulseAudio daemon per desk, as on a desktop (where
//! PipeWire speaks the same protocol), with null sinks, which are clocked like hardware;
//! and the sounds played into them and measured from them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const RATE: usize = 48_000;

/// One PulseAudio daemon in its own runtime directory. Devices: the speaker `desk`, the
/// room that the microphone hears (`room`, a sink to play into), and the microphone `mic`
/// (the room's monitor remapped, so that it is a real source and not a monitor). `desk` and
/// `mic` are the defaults.
pub struct SoundServer {
    dir: PathBuf,
    daemon: Child,
}

impl SoundServer {
    pub fn start(name: &str) -> SoundServer {
        SoundServer::start_with(name, 48_000, 1)
    }

    /// The same desk with every device running at `rate` Hz with `channels` channels, as
    /// sound cards come (44.1 kHz stereo is common).
    pub fn start_with(name: &str, rate: u32, channels: u32) -> SoundServer {
        let dir = std::env::temp_dir().join(format!("confab-pulse-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sink = |name: &str, description: &str| {
            format!("module-null-sink sink_name={name} rate={rate} channels={channels} sink_properties=device.description={description}")
        };
        // A sound server switches an idle device to the rate of the first stream (our `pacat`s
        // use 48 kHz) where it can; a sound card that has only `rate` cannot.
        let conf = dir.join(".config/pulse");
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::write(
            conf.join("daemon.conf"),
            format!("default-sample-rate = {rate}\nalternate-sample-rate = {rate}\n"),
        )
        .unwrap();
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
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        env(&mut cmd, &self.dir);
        cmd
    }

    /// Our speaker plays into the room our microphone hears: laptop speakers, no headset.
    pub fn speaker_into_the_room(&self) {
        assert!(self.pactl(&["set-default-sink", "room"]));
    }

    /// `pacat` playing `pcm` (16-bit mono 48 kHz) into `device`; stops when the returned
    /// child is killed.
    pub fn play(&self, device: &str, pcm: Vec<u8>) -> (Child, std::thread::JoinHandle<()>) {
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
    pub fn record(&self, device: &str) -> Recording {
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

    /// Loads a module, as plugging a device in does; returns its index, for unplugging it
    /// with `unload-module`.
    pub fn load_module(&self, args: &[&str]) -> String {
        let out = self.command("pactl").arg("load-module").args(args).output().expect("pactl");
        assert!(out.status.success(), "load-module {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What `pactl ARGS` prints.
    pub fn pactl_output(&self, args: &[&str]) -> String {
        let out = self.command("pactl").args(args).output().expect("pactl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn pactl(&self, args: &[&str]) -> bool {
        let mut cmd = self.command("pactl");
        cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }
}

const PCM: [&str; 4] = ["--format=s16le", "--rate=48000", "--channels=1", "--latency-msec=50"];

pub struct Recording {
    child: Child,
    reader: std::thread::JoinHandle<Vec<u8>>,
}

impl Recording {
    pub fn stop(mut self) -> Vec<i16> {
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

/// `secs` of a tone at `hz`, 16-bit mono at 48 kHz, about -12 dBFS.
pub fn tone(hz: f64, secs: f64) -> Vec<u8> {
    (0..(secs * RATE as f64) as usize)
        .flat_map(|i| {
            let v = (2.0 * std::f64::consts::PI * hz * i as f64 / RATE as f64).sin() * 8_000.0;
            (v as i16).to_le_bytes()
        })
        .collect()
}

/// Someone talking, 16-bit mono at 48 kHz: syllables of 150-300 ms with 60-160 ms pauses,
/// each rising and falling on a gliding pitch around `f0`, its harmonics shaped to the band
/// `lo..hi` Hz, about -12 dBFS at their peak; only in every other turn of 2.5 s (`turn` 0
/// the first, 1 the second), as two people in a conversation take turns. Like speech, and
/// unlike a steady tone, this is neither what noise suppression removes nor the narrow-band
/// signal on which an echo canceller (rightly) stops adapting.
pub fn talking(f0: f64, (lo, hi): (f64, f64), secs: f64, seed: u32, turn: usize) -> Vec<u8> {
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
pub const ADA_BAND: (f64, f64) = (100.0, 1_000.0);
pub const BOB_BAND: (f64, f64) = (1_500.0, 4_000.0);

/// Power in `x` between `lo` and `hi` Hz (Goertzel every 20 Hz, inside the band's edges), dB.
pub fn band_level(x: &[i16], (lo, hi): (f64, f64)) -> f64 {
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
pub fn with_noise(pcm: Vec<u8>) -> Vec<u8> {
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
