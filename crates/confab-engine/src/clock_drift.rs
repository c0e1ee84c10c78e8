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
/// Shortest span that gives a rate worth using.
const MIN_SPAN_S: f64 = 4.0;
/// At most one point per this long (a sound server may call back 2,000 times a second).
const POINT_EVERY_S: f64 = 0.01;
/// A pause this long (a device reopened, a stalled thread) starts the measurement again.
const GAP_S: f64 = 0.5;

/// One device clock's rate, in samples per second of [`clock_secs`].
#[derive(Debug, Default)]
pub struct ClockRate {
    /// (time, samples counted by then).
    points: VecDeque<(f64, f64)>,
    total: f64,
    last_t: Option<f64>,
}

impl ClockRate {
    /// `samples` came or went at time `t`.
    pub fn note(&mut self, t: f64, samples: usize) {
        if self.last_t.is_some_and(|last| t - last > GAP_S || t < last) {
            self.points.clear();
            self.total = 0.0;
        }
        self.last_t = Some(t);
        self.total += samples as f64;
        if self.points.back().is_some_and(|&(last, _)| t - last < POINT_EVERY_S) {
            return;
        }
        self.points.push_back((t, self.total));
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

/// The resampling ratio that moves the speaker's samples onto the microphone's clock, given
/// both clocks' rates: 1 until the two are told apart beyond doubt (three standard errors;
/// resampling by a wrong ratio costs the canceller more than the drift it corrects), and
/// never more than a plausible drift.
pub fn reference_ratio(mic: Rate, speaker: Rate) -> f64 {
    let r = mic.rate / speaker.rate;
    let err = r * ((mic.stderr / mic.rate).powi(2) + (speaker.stderr / speaker.rate).powi(2)).sqrt();
    let off = (r - 1.0).abs();
    if off * 1e6 <= MAX_DRIFT_PPM && off > 3.0 * err {
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
            let mic = device(48_000.0, 960, 10.0, 0.002, seed);
            let speaker = device(48_000.0, 480, 10.0, 0.002, seed + 100);
            assert_eq!(reference_ratio(mic.measure().unwrap(), speaker.measure().unwrap()), 1.0, "seed {seed}");
        }
    }

    #[test]
    fn nothing_is_guessed_from_a_few_seconds() {
        let mic = device(48_000.0, 960, 3.0, 0.0, 1);
        assert_eq!(mic.rate(), None);
    }

    #[test]
    fn a_pause_starts_the_measurement_again() {
        let mut c = device(48_000.0, 960, 20.0, 0.0, 1);
        // The device was reopened after a second of nothing.
        c.note(21.0, 960);
        assert_eq!(c.rate(), None, "the points before the gap are forgotten");
    }

    #[test]
    fn an_implausible_drift_is_not_believed() {
        let mic = device(44_100.0, 441, 20.0, 0.0, 1);
        let speaker = device(48_000.0, 480, 20.0, 0.0, 2);
        assert_eq!(reference_ratio(mic.measure().unwrap(), speaker.measure().unwrap()), 1.0);
    }
}
