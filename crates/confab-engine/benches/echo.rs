//! The capture processing (echo cancellation, noise suppression, gain control) on the
//! corpus the tests use (tests/support/echo_corpus.rs), as a table of figures:
//!
//! ```text
//! cargo bench -p confab-engine --bench echo
//! cargo bench -p confab-engine --bench echo --features compare-webrtc-apm   # and the older WebRTC AEC
//! ```
//!
//! The comparison links Debian's `libwebrtc-audio-processing-dev` 0.3 (the echo canceller
//! Chrome used before AEC3) through the `webrtc-audio-processing` crate 0.5.
//!
//! ERLE is measured over the last 5 s of 10 s of far end alone; "near alone" is the level
//! change of the near voice talking alone; "double talk" is how far the near voice drops
//! while both talk, against talking alone; CPU is per 10 ms block of 48 kHz mono, as a share
//! of one core; latency is how much later the near voice comes out.

#[path = "../tests/support/echo_corpus.rs"]
mod echo_corpus;

use confab_engine::audio_processing::ProcessingSettings;
use echo_corpus::*;

fn header(title: &str) {
    println!("{title}");
    println!(
        "{:>8} {:>6} | {:>8} {:>11} {:>12} | {:>9} {:>7} {:>8}",
        "delay", "drift", "ERLE", "near alone", "double talk", "µs/10ms", "core", "latency"
    );
}

fn row(delay_ms: f64, drift_ppm: f64, f: &Figures) {
    println!(
        "{:>6} ms {:>3} ppm | {:>5.1} dB {:>8.1} dB {:>9.1} dB | {:>9.0} {:>6.2}% {:>5.1} ms",
        delay_ms,
        drift_ppm,
        f.erle_db,
        f.near_alone_db,
        f.double_talk_db,
        f.us_per_block,
        f.us_per_block / 100.0,
        f.added_latency_ms
    );
}

const DELAYS: [f64; 2] = [40.0, 150.0];
const DRIFTS: [f64; 3] = [0.0, 20.0, 100.0];

fn main() {
    let aec_only = ProcessingSettings { aec: true, ns: false, agc: false };
    header("echo canceller (sonora AEC3; noise suppression and gain control off)");
    for delay_ms in DELAYS {
        for drift_ppm in DRIFTS {
            row(delay_ms, drift_ppm, &scene(aec_only, delay_ms, drift_ppm));
        }
    }
    println!("later in the call (15-20 s of the far end alone), ERLE:");
    for delay_ms in DELAYS {
        let cells: Vec<String> =
            DRIFTS.iter().map(|&ppm| format!("{ppm} ppm {:.1} dB", erle_later(aec_only, delay_ms, ppm))).collect();
        println!("  {delay_ms} ms: {}", cells.join(", "));
    }
    #[cfg(feature = "compare-webrtc-apm")]
    webrtc_apm::compare();
    let all = ProcessingSettings::default();
    let f = scene(all, 40.0, 0.0);
    println!(
        "everything on (40 ms, 0 ppm): ERLE {:.1} dB, near alone {:+.1} dB (gain control), double talk {:.1} dB, {:.0} µs per 10 ms ({:.2}% of a core)",
        f.erle_db, f.near_alone_db, f.double_talk_db, f.us_per_block, f.us_per_block / 100.0
    );
    println!("noise suppression, white noise at -30 dBFS:");
    for (name, s) in
        [("suppression alone", ProcessingSettings { aec: false, ns: true, agc: false }), ("everything on", all)]
    {
        let n = noisy_room(s, -30.0);
        println!("  {name}: noise {:+.1} dB, voice {:+.1} dB", n.noise_db, n.voice_db);
    }
}

/// The older WebRTC echo canceller (AEC2 with the delay-agnostic estimator and extended
/// filter, as Chrome ran it), through Debian's library, on the same scenes.
#[cfg(feature = "compare-webrtc-apm")]
mod webrtc_apm {
    use super::*;
    use confab_engine::audio_processing::BLOCK;
    use webrtc_audio_processing as apm;

    struct Aec2 {
        p: apm::Processor,
        buf: Vec<f32>,
    }

    impl Aec2 {
        fn new(level: apm::EchoCancellationSuppressionLevel, stream_delay_ms: Option<i32>) -> Aec2 {
            let init =
                apm::InitializationConfig { num_capture_channels: 1, num_render_channels: 1, ..Default::default() };
            let mut p = apm::Processor::new(&init).expect("WebRTC audio processing");
            p.set_config(apm::Config {
                echo_cancellation: Some(apm::EchoCancellation {
                    suppression_level: level,
                    enable_extended_filter: true,
                    enable_delay_agnostic: true,
                    stream_delay_ms,
                }),
                enable_high_pass_filter: true,
                ..Default::default()
            });
            Aec2 { p, buf: vec![0.0; BLOCK] }
        }
    }

    impl Canceller for Aec2 {
        fn render(&mut self, far: &[i16]) {
            for block in far.chunks_exact(BLOCK) {
                for (b, &s) in self.buf.iter_mut().zip(block) {
                    *b = s as f32 / 32_768.0;
                }
                self.p.process_render_frame(&mut self.buf).expect("render frame");
            }
        }
        fn capture(&mut self, mic: &mut [i16; 2 * BLOCK]) {
            for block in mic.chunks_exact_mut(BLOCK) {
                for (b, &s) in self.buf.iter_mut().zip(block.iter()) {
                    *b = s as f32 / 32_768.0;
                }
                self.p.process_capture_frame(&mut self.buf).expect("capture frame");
                for (s, &b) in block.iter_mut().zip(&self.buf) {
                    *s = (b.clamp(-1.0, 1.0) * 32_767.0) as i16;
                }
            }
        }
    }

    pub fn compare() {
        use apm::EchoCancellationSuppressionLevel as L;
        // Of the crate's five levels, Debian's 0.3 library takes three (the others are
        // silently refused and leave the canceller at its default).
        for (name, level) in [("low", L::Low), ("lower", L::Lower), ("lowest", L::Lowest)] {
            header(&format!("WebRTC AEC2 (libwebrtc-audio-processing 0.3), suppression {name}, own delay estimate"));
            for delay_ms in DELAYS {
                for drift_ppm in DRIFTS {
                    row(delay_ms, drift_ppm, &scene_with(&mut Aec2::new(level, None), delay_ms, drift_ppm));
                }
            }
        }
        header("WebRTC AEC2, suppression low, told the true delay");
        for delay_ms in DELAYS {
            for drift_ppm in DRIFTS {
                let mut c = Aec2::new(L::Low, Some(delay_ms as i32));
                row(delay_ms, drift_ppm, &scene_with(&mut c, delay_ms, drift_ppm));
            }
        }
    }
}
