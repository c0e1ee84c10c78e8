//! The capture processing (echo cancellation, noise suppression, gain control) on the
//! corpus the tests use (tests/support/echo_corpus.rs), as a table of figures:
//!
//! ```text
//! cargo bench -p confab-engine --bench echo
//! ```
//!
//! ERLE is measured over the last 5 s of 10 s of far end alone; "near alone" is the level
//! change of the near voice talking alone; "double talk" is how far the near voice drops
//! while both talk, against talking alone; CPU is per 10 ms block of 48 kHz mono, as a share
//! of one core; latency is how much later the near voice comes out.

#[path = "../tests/support/echo_corpus.rs"]
mod echo_corpus;

use confab_engine::audio_processing::ProcessingSettings;
use echo_corpus::*;

fn main() {
    let aec_only = ProcessingSettings { aec: true, ns: false, agc: false };
    println!("echo canceller (sonora AEC3; noise suppression and gain control off)");
    println!(
        "{:>8} {:>6} | {:>8} {:>11} {:>12} | {:>9} {:>7} {:>8}",
        "delay", "drift", "ERLE", "near alone", "double talk", "µs/10ms", "core", "latency"
    );
    for delay_ms in [40.0, 150.0] {
        for drift_ppm in [0.0, 20.0, 100.0] {
            let f = scene(aec_only, delay_ms, drift_ppm);
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
    }
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
