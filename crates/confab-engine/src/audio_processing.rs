//! What the microphone hears, cleaned before it is encoded: echo cancellation (the far end's
//! voice, played by our speaker and picked up again by our microphone), noise suppression
//! and automatic gain control, by `sonora` (a Rust port of WebRTC's audio processing
//! module: AEC3, NS, AGC2; docs/architecture.md says why this one).
//!
//! The echo canceller needs what the speaker really played. The speaker's device callback
//! hands every sample it gives the device to an [`EchoReference`]; the capture thread drains
//! it before each microphone frame, so the reference is there before its echo, and hands it
//! to the canceller a 10 ms block before each microphone block (`RenderPacing` says why). What remains between them (the device buffers, the air) is AEC3's own
//! delay estimation's job. The slow drift between a separate microphone's and speaker's
//! clocks is not: AEC3 loses 8 dB of its echo removal at 100 ppm. Both clocks are measured
//! as samples come and go (`clock_drift`), and the reference is resampled onto the
//! microphone's clock.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use sonora::config::{
    AdaptiveDigital, EchoCanceller, GainController2, HighPassFilter, NoiseSuppression, NoiseSuppressionLevel,
};
use sonora::{AudioProcessing, Config, StreamConfig};
use tracing::warn;

use crate::clock_drift::{clock_secs, reference_ratio, ClockRate, Rate};
use crate::codec::opus::{FRAME_SAMPLES, SAMPLE_RATE};
use crate::devices::resample::RateConverter;

/// 10 ms at 48 kHz: the block the processing works in.
pub const BLOCK: usize = SAMPLE_RATE as usize / 100;

/// Which parts of the processing run. All on by default, as in every browser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessingSettings {
    /// Echo cancellation.
    pub aec: bool,
    /// Noise suppression.
    pub ns: bool,
    /// Automatic gain control.
    pub agc: bool,
}

impl Default for ProcessingSettings {
    fn default() -> Self {
        ProcessingSettings { aec: true, ns: true, agc: true }
    }
}

impl ProcessingSettings {
    pub const OFF: ProcessingSettings = ProcessingSettings { aec: false, ns: false, agc: false };

    pub fn any(&self) -> bool {
        self.aec || self.ns || self.agc
    }

    fn config(&self) -> Config {
        Config {
            high_pass_filter: self.any().then(HighPassFilter::default),
            echo_canceller: self.aec.then(EchoCanceller::default),
            // The strongest level: at Moderate or High a fan in the room arrives at the far end only
            // 12-15 dB down through the whole call path, still plainly there.
            noise_suppression: self
                .ns
                .then(|| NoiseSuppression { level: NoiseSuppressionLevel::VeryHigh, ..Default::default() }),
            gain_controller2: self
                .agc
                .then(|| GainController2 { adaptive_digital: Some(AdaptiveDigital::default()), ..Default::default() }),
            ..Default::default()
        }
    }
}

/// The settings a running capture thread follows: the call changes them (Settings, during
/// the call), the capture thread picks the change up at its next frame.
#[derive(Debug)]
pub struct ProcessingSwitch(AtomicU8);

impl ProcessingSwitch {
    pub fn new(s: ProcessingSettings) -> Self {
        ProcessingSwitch(AtomicU8::new(Self::bits(s)))
    }

    fn bits(s: ProcessingSettings) -> u8 {
        s.aec as u8 | (s.ns as u8) << 1 | (s.agc as u8) << 2
    }

    pub fn set(&self, s: ProcessingSettings) {
        self.0.store(Self::bits(s), Relaxed);
    }

    pub fn get(&self) -> ProcessingSettings {
        let b = self.0.load(Relaxed);
        ProcessingSettings { aec: b & 1 != 0, ns: b & 2 != 0, agc: b & 4 != 0 }
    }
}

/// What the speaker played lately, from its device callback to the capture thread, and how
/// fast the speaker's clock runs. Bounded: if nobody drains it (no microphone, or a stalled
/// capture thread), the oldest goes.
#[derive(Default)]
pub struct EchoReference {
    inner: Mutex<Reference>,
}

#[derive(Default)]
struct Reference {
    played: VecDeque<i16>,
    clock: ClockRate,
}

/// A second of playback: more than any device buffer holds.
const REFERENCE_CAP: usize = SAMPLE_RATE as usize;

impl EchoReference {
    /// Called from the speaker's callback with the samples just given to the device.
    pub fn played(&self, samples: impl IntoIterator<Item = i16>) {
        self.played_at(samples, clock_secs())
    }

    /// The same at a given time on [`clock_secs`]'s clock (tests simulate the device's).
    pub fn played_at(&self, samples: impl IntoIterator<Item = i16>, t: f64) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let before = r.played.len();
        r.played.extend(samples);
        let n = r.played.len() - before;
        r.clock.note(t, n);
        let excess = r.played.len().saturating_sub(REFERENCE_CAP);
        r.played.drain(..excess);
    }

    /// Moves every whole 10 ms block played so far into `out`.
    fn take_blocks(&self, out: &mut Vec<i16>) {
        let mut r = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let whole = r.played.len() / BLOCK * BLOCK;
        out.extend(r.played.drain(..whole));
    }

    /// How fast the speaker's clock runs. A least-squares fit over up to a minute of
    /// points: asked for once a second, not with every frame, as it holds the lock the
    /// speaker's callback needs.
    fn speaker_rate(&self) -> Option<Rate> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clock.measure()
    }
}

/// The reference moved onto the microphone's clock.
struct DriftCompensation {
    mic: ClockRate,
    /// Made once a drift is measured. Until then the reference passes as it is: the
    /// converter holds back up to a step of it, and the speaker's buffer, all the reference
    /// has over the echo (a few tens of ms), must not go on that, or some runs' echo
    /// reaches the canceller before its reference does and is never cancelled.
    to_mic: Option<RateConverter>,
    frames: u32,
    /// The ratio applied now, for the debug line.
    ratio: f64,
}

impl DriftCompensation {
    fn new() -> Self {
        DriftCompensation { mic: ClockRate::default(), to_mic: None, frames: 0, ratio: 1.0 }
    }
}

/// The reference on its way into the canceller: one 10 ms block with each 10 ms block of
/// the microphone, never a burst.
///
/// AEC3 pairs render and capture by how many blocks of each it was given, and tolerates
/// little jitter in that: a capture block with no render block before it is an underrun,
/// which drops its delay estimate; render more than 32 ms ahead for a second is an overrun,
/// which flushes it. The speaker hands over its reference 20 ms at a time, and its callback
/// and the capture thread wake in the same cycle of the sound server, in either order. Fed
/// as it came, the reference reached AEC3 a whole period late, then two periods at once,
/// several times a second on a loaded machine (delay estimate lost over and over, 0.2 dB of
/// ERLE seconds into a call; the far end heard itself). Here the jitter waits in `pending`
/// instead, where nothing resets: a late reference costs one underrun (the canceller starts
/// from the newest it has, which always leads the echo, as the speaker's buffer still has
/// to play it), and the block that comes late then waits as slack for the next lateness.
#[derive(Default)]
struct RenderPacing {
    pending: VecDeque<i16>,
    started: bool,
    /// Capture blocks that found no reference waiting.
    late: u64,
}

/// More waiting than this is not jitter (a drift left uncorrected below `MIN_DRIFT_PPM`
/// takes hours to make it): the oldest is dropped, and AEC3 finds its delay again.
const PENDING_CAP: usize = SAMPLE_RATE as usize / 2;

impl RenderPacing {
    /// Whole 10 ms blocks the speaker played since the last frame.
    fn arrived(&mut self, far: &[i16]) {
        self.pending.extend(far);
        // The first frame starts from the newest frame's worth: all before it is older than
        // anything the microphone will hear from now on.
        let keep = if self.started { PENDING_CAP } else { FRAME_SAMPLES };
        self.started = true;
        let excess = self.pending.len().saturating_sub(keep) / BLOCK * BLOCK;
        self.pending.drain(..excess);
    }

    /// The render block to go before the next capture block, if one has come.
    fn next(&mut self, out: &mut [i16; BLOCK]) -> bool {
        if self.pending.len() < BLOCK {
            self.late += 1;
            return false;
        }
        for (o, s) in out.iter_mut().zip(self.pending.drain(..BLOCK)) {
            *o = s;
        }
        true
    }
}

/// The processing of one microphone. Lives on the capture thread.
pub struct CaptureProcessor {
    settings: ProcessingSettings,
    apm: AudioProcessing,
    reference: Option<Arc<EchoReference>>,
    switch: Option<Arc<ProcessingSwitch>>,
    far: Vec<i16>,
    pacing: RenderPacing,
    drift: DriftCompensation,
    /// 10 ms blocks taken in, for the periodic debug line.
    rendered: u64,
    captured: u64,
    /// Times the processor panicked and was made anew.
    pub restarts: u32,
}

fn build(settings: ProcessingSettings) -> AudioProcessing {
    let stream = StreamConfig::new(SAMPLE_RATE, 1);
    AudioProcessing::builder().config(settings.config()).capture_config(stream).render_config(stream).build()
}

impl CaptureProcessor {
    /// `reference` is what our speaker plays; without it there is no echo to cancel.
    pub fn new(settings: ProcessingSettings, reference: Option<Arc<EchoReference>>) -> Self {
        CaptureProcessor {
            settings,
            apm: build(settings),
            reference,
            switch: None,
            far: Vec::new(),
            pacing: RenderPacing::default(),
            drift: DriftCompensation::new(),
            rendered: 0,
            captured: 0,
            restarts: 0,
        }
    }

    /// Starts from what `switch` says, and follows it when it changes.
    pub fn following(switch: Arc<ProcessingSwitch>, reference: Option<Arc<EchoReference>>) -> Self {
        CaptureProcessor { switch: Some(switch.clone()), ..Self::new(switch.get(), reference) }
    }

    pub fn settings(&self) -> ProcessingSettings {
        self.settings
    }

    /// Far-end audio, as played, in whole 10 ms blocks (for callers that hold the reference
    /// themselves, as the corpus tests do).
    pub fn render(&mut self, far: &[i16]) {
        if !self.settings.aec {
            return;
        }
        for block in far.chunks_exact(BLOCK) {
            let mut out = [0i16; BLOCK];
            if !self.guarded(|apm| apm.process_render_i16(block, &mut out)) {
                return;
            }
            self.rendered += 1;
        }
    }

    /// Cleans one 20 ms microphone frame in place, after taking in what the speaker played
    /// since the last one.
    pub fn capture(&mut self, near: &mut [i16; FRAME_SAMPLES]) {
        self.capture_at(near, clock_secs())
    }

    /// The same for a frame that arrived at `t` on [`clock_secs`]'s clock (tests simulate
    /// the device's).
    pub fn capture_at(&mut self, near: &mut [i16; FRAME_SAMPLES], t: f64) {
        self.drift.mic.note(t, FRAME_SAMPLES);
        if let Some(wanted) = self.switch.as_ref().map(|s| s.get()).filter(|w| *w != self.settings) {
            // A fresh processor: the parts turned on start from scratch, as at the start of
            // a call; a part turned off is simply gone.
            self.settings = wanted;
            self.apm = build(wanted);
            self.pacing = RenderPacing::default();
        }
        if !self.settings.any() {
            return;
        }
        if let Some(r) = self.reference.clone() {
            let mut far = std::mem::take(&mut self.far);
            far.clear();
            r.take_blocks(&mut far);
            let d = &mut self.drift;
            d.frames += 1;
            if d.frames.is_multiple_of(50) {
                if let Some((s, m)) = r.speaker_rate().zip(d.mic.measure()) {
                    let ratio = reference_ratio(m, s);
                    if ratio != d.ratio {
                        d.to_mic.get_or_insert_with(|| RateConverter::adjustable(SAMPLE_RATE)).set_ratio(ratio);
                        d.ratio = ratio;
                    }
                }
            }
            if let Some(to_mic) = d.to_mic.as_mut() {
                to_mic.push(far.iter().map(|&s| s as f32 / 32_768.0));
                far.clear();
                let whole = to_mic.available() / BLOCK * BLOCK;
                far.extend(to_mic.take(whole).map(|s| (s.clamp(-1.0, 1.0) * 32_767.0) as i16));
            }
            if self.settings.aec {
                self.pacing.arrived(&far);
            }
            self.far = far;
        }
        for block in near.chunks_exact_mut(BLOCK) {
            let mut out = [0i16; BLOCK];
            if self.reference.is_some() && self.settings.aec && self.pacing.next(&mut out) {
                self.render(&out);
            }
            if self.guarded(|apm| apm.process_capture_i16(block, &mut out)) {
                block.copy_from_slice(&out);
            }
            self.captured += 1;
        }
        if self.captured.is_multiple_of(500) {
            let s = self.apm.statistics();
            tracing::debug!(
                rendered = self.rendered,
                captured = self.captured,
                erle_db = ?s.echo_return_loss_enhancement,
                delay_ms = ?s.delay_ms,
                drift_ppm = (self.drift.ratio - 1.0) * 1e6,
                reference_late = self.pacing.late,
                reference_waiting_ms = self.pacing.pending.len() / (BLOCK / 10),
                "audio processing"
            );
        }
    }

    /// The echo canceller's own figure: how much echo it removes now, in dB.
    pub fn erle_db(&self) -> Option<f64> {
        self.apm.statistics().echo_return_loss_enhancement
    }

    /// Runs one call into the processor. `sonora` is young: if it panics, the block passes
    /// unprocessed and a fresh processor takes over (it converges again within seconds),
    /// rather than the microphone going silent for the rest of the call.
    fn guarded<E: std::fmt::Debug>(&mut self, f: impl FnOnce(&mut AudioProcessing) -> Result<(), E>) -> bool {
        match catch_unwind(AssertUnwindSafe(|| f(&mut self.apm))) {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                warn!(error = ?e, "audio processing refused a block");
                false
            }
            Err(_) => {
                self.restarts += 1;
                warn!(restarts = self.restarts, "audio processing panicked; starting it again");
                self.apm = build(self.settings);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_hands_over_whole_blocks_and_forgets_the_oldest() {
        let r = EchoReference::default();
        r.played(0..BLOCK as i16 + 7);
        let mut out = Vec::new();
        r.take_blocks(&mut out);
        assert_eq!(out.len(), BLOCK, "the 7 left over wait for the rest of their block");
        r.played(std::iter::repeat_n(1, 2 * REFERENCE_CAP));
        out.clear();
        r.take_blocks(&mut out);
        assert_eq!(out.len(), REFERENCE_CAP, "bounded at a second");
    }

    #[test]
    fn a_reference_that_comes_late_costs_one_underrun_not_one_each_time() {
        // The speaker's callback (20 ms at a time) and the microphone's frame wake in the
        // same cycle, in either order; now and then the speaker's is a whole period later.
        let mut p = RenderPacing::default();
        let (mut played, mut handed) = (0i32, Vec::new());
        let mut x: u64 = 7;
        let mut queued: Vec<i16> = Vec::new();
        for frame in 0..1000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let speaker_first = x >> 63 == 1;
            // The speaker's thread held up for a period now and then.
            let stalled = frame % 97 == 50;
            let mut speak = |q: &mut Vec<i16>| {
                q.extend((played..played + FRAME_SAMPLES as i32).map(|i| i as i16));
                played += FRAME_SAMPLES as i32;
            };
            if speaker_first && !stalled {
                speak(&mut queued);
            }
            p.arrived(&queued);
            queued.clear();
            for _ in 0..2 {
                let mut b = [0i16; BLOCK];
                if p.next(&mut b) {
                    handed.extend(b);
                }
            }
            if !speaker_first || stalled {
                // After the frame: it arrives with the next period, two at once.
                speak(&mut queued);
            }
        }
        // Nothing dropped or played twice: the canceller's pairing of render and capture
        // never moves.
        let first = handed[0];
        assert!(handed.iter().enumerate().all(|(i, &s)| s == first.wrapping_add(i as i16)));
        assert!(p.late <= 6, "{} capture blocks found no reference", p.late);
        assert!(p.pending.len() <= 3 * FRAME_SAMPLES, "the slack is the lateness, no more");
    }

    #[test]
    fn a_running_processor_follows_its_switch() {
        let switch = Arc::new(ProcessingSwitch::new(ProcessingSettings::default()));
        let mut p = CaptureProcessor::following(switch.clone(), None);
        let mut frame = [0i16; FRAME_SAMPLES];
        p.capture(&mut frame);
        assert_eq!(p.settings(), ProcessingSettings::default());
        let just_aec = ProcessingSettings { aec: true, ns: false, agc: false };
        switch.set(just_aec);
        p.capture(&mut frame);
        assert_eq!(p.settings(), just_aec, "picked up at the next frame");
        for s in [ProcessingSettings::OFF, ProcessingSettings { aec: false, ns: true, agc: true }] {
            switch.set(s);
            assert_eq!(switch.get(), s);
        }
    }

    #[test]
    fn off_leaves_the_microphone_untouched() {
        let mut p = CaptureProcessor::new(ProcessingSettings::OFF, None);
        let mut frame = [0i16; FRAME_SAMPLES];
        for (i, s) in frame.iter_mut().enumerate() {
            *s = (i as i16).wrapping_mul(37);
        }
        let before = frame;
        p.capture(&mut frame);
        assert_eq!(frame, before);
    }
}
