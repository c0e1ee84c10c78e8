//! How fast a device's clock runs, from when its samples come and go. A separate microphone
//! and speaker (a USB headset's microphone with a laptop's speakers) each run on their own
//! crystal, typically tens of ppm apart: the speaker's 48 kHz is not the microphone's, and
//! an echo canceller given the speaker's samples as they are sees its echo path slide away.
//! Measured here against the monotonic clock, both rates give the ratio by which the
//! reference must be resampled to keep in step with the microphone.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Instant;

/// Seconds on the one clock both devices are measured against.
pub fn clock_secs() -> f64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// How long the rate is measured over: a callback's timing jitter of a millisecond is a few
/// ppm over a minute of points.
const WINDOW_S: f64 = 60.0;
/// Shortest span that gives a rate worth using: a load that comes and goes still moves the
/// least late call by a fraction of a millisecond, which over 20 s leans by tens of ppm.
/// Meanwhile a real drift of 100 ppm has moved the echo by 2 ms, which the canceller's own
/// delay estimation follows.
const MIN_SPAN_S: f64 = 20.0;
/// One point per this long: the least late of the calls in it.
const BUCKET_S: f64 = 1.0;
/// A pause this long (a device reopened, a stalled thread) starts the measurement again.
const GAP_S: f64 = 0.5;
/// What comes in this long after a start is not measured: a sound server fills its buffer
/// in a burst at first, and a thread that has just started is late while the rest of the
/// call starts up.
const WARMUP_S: f64 = 2.0;
/// The nominal rate, only to tell which call in a bucket is the least late (an error in it
/// tilts every bucket alike, which moves the line, not its slope).
const NOMINAL_HZ: f64 = 48_000.0;

/// One device clock's rate, in samples per second of [`clock_secs`].
///
/// A callback or a thread is only ever late, never early: a loaded machine delays some
/// calls by milliseconds, and for seconds together while a call starts up. A line fitted
/// through every call leans with that load (350-560 ppm seen over ten seconds, more than
/// the drift it measures). The least late call in each second is where the clock
/// really is, within the least scheduling delay, so the line is fitted through those.
#[derive(Debug, Default)]
pub struct ClockRate {
    /// (time, samples counted by then): the least late call of each bucket gone by.
    points: VecDeque<(f64, f64)>,
    /// The bucket being filled: when it began, and its least late call so far.
    bucket: Option<(f64, (f64, f64))>,
    total: f64,
    /// When counting (re)started.
    start: Option<f64>,
    last_t: Option<f64>,
}

impl ClockRate {
    /// `samples` came or went at time `t`.
    pub fn note(&mut self, t: f64, samples: usize) {
        if self.last_t.is_some_and(|last| t - last > GAP_S || t < last) {
            *self = ClockRate::default();
        }
        self.last_t = Some(t);
        let start = *self.start.get_or_insert(t);
        self.total += samples as f64;
        if t - start < WARMUP_S {
            return;
        }
        let point = (t, self.total);
        let lateness = |(t, n): (f64, f64)| t - n / NOMINAL_HZ;
        match &mut self.bucket {
            Some((began, best)) if t - *began < BUCKET_S => {
                if lateness(point) < lateness(*best) {
                    *best = point;
                }
            }
            _ => {
                if let Some((_, best)) = self.bucket.take() {
                    self.points.push_back(best);
                }
                self.bucket = Some((t, point));
            }
        }
        while self.points.front().is_some_and(|&(first, _)| t - first > WINDOW_S) {
            self.points.pop_front();
        }
    }

    /// The least-squares slope of samples over time, once enough time is covered.
    pub fn rate(&self) -> Option<f64> {
        self.measure().map(|m| m.rate)
    }

    /// The slope and how sure it is.
    pub fn measure(&self) -> Option<Rate> {
        let (&(t0, _), &(t1, _)) = (self.points.front()?, self.points.back()?);
        if t1 - t0 < MIN_SPAN_S || self.points.len() < 3 {
            return None;
        }
        let n = self.points.len() as f64;
        let (mt, ms) = self.points.iter().fold((0.0, 0.0), |(a, b), &(t, s)| (a + t / n, b + s / n));
        let (mut cov, mut var) = (0.0, 0.0);
        for &(t, s) in &self.points {
            cov += (t - mt) * (s - ms);
            var += (t - mt) * (t - mt);
        }
        if var <= 0.0 {
            return None;
        }
        let rate = cov / var;
        let residual: f64 = self.points.iter().map(|&(t, s)| (s - ms - rate * (t - mt)).powi(2)).sum();
        let stderr = (residual / (n - 2.0) / var).sqrt();
        Some(Rate { rate, stderr })
    }
}

/// A clock's measured rate (samples per second) and the standard error of the measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub rate: f64,
    pub stderr: f64,
}

/// Largest drift believed: beyond it a measurement is more likely broken than the clocks.
pub const MAX_DRIFT_PPM: f64 = 1_000.0;

/// Smallest drift corrected. A load that comes and goes leans even the least late calls by
/// 10-30 ppm over the shortest span, and a tight fit does not show it (the lean is not
/// scatter). Below this the echo moves by at most 1.5 ms a minute, which the canceller's
/// own delay estimation follows.
pub const MIN_DRIFT_PPM: f64 = 25.0;

/// The resampling ratio that moves the speaker's samples onto the microphone's clock, given
/// both clocks' rates: 1 until the two are told apart beyond doubt (three standard errors;
/// resampling by a wrong ratio costs the canceller more than the drift it corrects), and
/// neither less than [`MIN_DRIFT_PPM`] nor more than a plausible drift.
pub fn reference_ratio(mic: Rate, speaker: Rate) -> f64 {
    let r = mic.rate / speaker.rate;
    let err = r * ((mic.stderr / mic.rate).powi(2) + (speaker.stderr / speaker.rate).powi(2)).sqrt();
    let off = (r - 1.0).abs();
    if (MIN_DRIFT_PPM..=MAX_DRIFT_PPM).contains(&(off * 1e6)) && off > 3.0 * err {
        r
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device of `rate` Hz calling back every `period` samples, each call late by up to
    /// `jitter_s`.
    fn device(rate: f64, period: usize, secs: f64, jitter_s: f64, seed: u64) -> ClockRate {
        let mut c = ClockRate::default();
        let mut x = seed;
        let mut k = 0;
        loop {
            let t = (k * period) as f64 / rate;
            if t > secs {
                return c;
            }
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let late = (x >> 11) as f64 / (1u64 << 53) as f64 * jitter_s;
            c.note(t + late, period);
            k += 1;
        }
    }

    #[test]
    fn two_clocks_100_ppm_apart_are_told_apart_within_a_few_ppm() {
        let mic = device(48_000.0 * (1.0 + 100e-6), 960, 30.0, 0.002, 1);
        let speaker = device(48_000.0, 480, 30.0, 0.002, 2);
        let ppm = (reference_ratio(mic.measure().unwrap(), speaker.measure().unwrap()) - 1.0) * 1e6;
        assert!((ppm - 100.0).abs() < 5.0, "{ppm:.1} ppm");
    }

    #[test]
    fn clocks_in_step_are_left_alone() {
        for seed in 0..20 {
            let mic = device(48_000.0, 960, 25.0, 0.002, seed);
            let speaker = device(48_000.0, 480, 25.0, 0.002, seed + 100);
            assert_eq!(reference_ratio(mic.measure().unwrap(), speaker.measure().unwrap()), 1.0, "seed {seed}");
        }
    }

    #[test]
    fn a_machine_busy_while_the_call_starts_does_not_look_like_drift() {
        // Two clocks in step. For the first 8 s of the call the capture thread is late by
        // up to 15 ms, as on a loaded machine while video starts; then by up to 1 ms. A
        // line through every call leans with that load.
        for seed in 0..20 {
            let mut mic = ClockRate::default();
            let mut x: u64 = seed;
            for k in 0..26 * 50 {
                let t = k as f64 * 0.02;
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                mic.note(t + u * if t < 8.0 { 0.015 } else { 0.001 }, 960);
            }
            let speaker = device(48_000.0, 480, 26.0, 0.001, seed + 100);
            let ppm = (mic.rate().unwrap() / 48_000.0 - 1.0) * 1e6;
            assert!(ppm.abs() < 40.0, "seed {seed}: {ppm:.0} ppm");
            assert_eq!(reference_ratio(mic.measure().unwrap(), speaker.measure().unwrap()), 1.0, "seed {seed}");
        }
    }

    #[test]
    fn nothing_is_guessed_from_a_few_seconds_of_calls() {
        let mic = device(48_000.0, 960, 15.0, 0.0, 1);
        assert_eq!(mic.rate(), None);
    }

    #[test]
    fn a_pause_starts_the_measurement_again() {
        let mut c = device(48_000.0, 960, 30.0, 0.0, 1);
        assert!(c.rate().is_some());
        // The device was reopened after a second of nothing.
        c.note(31.0, 960);
        assert_eq!(c.rate(), None, "the points before the gap are forgotten");
    }

    #[test]
    fn an_implausible_drift_is_not_believed() {
        let mic = device(44_100.0, 441, 30.0, 0.0, 1);
        let speaker = device(48_000.0, 480, 30.0, 0.0, 2);
        assert_eq!(reference_ratio(mic.measure().unwrap(), speaker.measure().unwrap()), 1.0);
    }
}
