//! The capture processing on made-up material (tests/support/echo_corpus.rs): a far voice
//! played by our speaker and heard again through a room, a near voice, noise. Conservative
//! floors here; `cargo bench -p confab-engine --bench echo` prints the full table.

mod support;

use confab_engine::audio_processing::ProcessingSettings;
use support::echo_corpus::*;

const AEC_ONLY: ProcessingSettings = ProcessingSettings { aec: true, ns: false, agc: false };
const NS_ONLY: ProcessingSettings = ProcessingSettings { aec: false, ns: true, agc: false };

#[test]
fn the_echo_canceller_removes_the_far_voice_and_keeps_the_near_one() {
    for (delay_ms, drift_ppm) in [(40.0, 0.0), (150.0, 0.0), (40.0, 100.0), (150.0, 100.0)] {
        let f = scene(AEC_ONLY, delay_ms, drift_ppm);
        let at = format!("echo {delay_ms} ms late, {drift_ppm} ppm drift: {f:?}");
        assert!(f.erle_db > 30.0, "{at}");
        assert!(f.near_alone_db.abs() < 1.5, "the near voice alone passes: {at}");
        assert!(f.double_talk_db > -6.0, "the near voice survives double talk: {at}");
    }
}

#[test]
fn without_the_canceller_the_echo_is_there() {
    let f = scene(ProcessingSettings::OFF, 40.0, 0.0);
    assert!(f.erle_db.abs() < 1.0, "{f:?}");
}

#[test]
fn noise_suppression_lowers_steady_noise_and_keeps_the_voice() {
    let on = noisy_room(NS_ONLY, -30.0);
    assert!(on.noise_db < -12.0, "{on:?}");
    assert!(on.voice_db > -3.0, "{on:?}");
    let off = noisy_room(ProcessingSettings::OFF, -30.0);
    assert!(off.noise_db.abs() < 0.5 && off.voice_db.abs() < 0.5, "{off:?}");
}
