//! Sound as the engine wants it (48 kHz mono) from sound as a device gives it (any rate, any
//! channel count), and back. Devices are opened at their own rate and layout, as browsers
//! open them: one conversion, ours, instead of a sound server's guess plus ours.

use std::collections::VecDeque;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Adjustable, Async, FixedAsync, Resampler, SincInterpolationParameters, SincInterpolationType, WindowFunction,
};

/// Input taken per conversion step: 10 ms at 48 kHz, 441 samples at 44.1 kHz.
const STEP_MS: usize = 10;

/// A mono stream from one sample rate to another, fed and drained in any amounts; at equal
/// rates it only passes samples through.
pub struct RateConverter {
    inner: Option<Sinc>,
    out: VecDeque<f32>,
}

struct Sinc {
    resampler: Async<f32>,
    /// Input not yet converted (less than one step).
    pending: Vec<f32>,
    step: usize,
    scratch: Vec<f32>,
}

impl RateConverter {
    pub fn new(from_hz: u32, to_hz: u32) -> Self {
        Self::build(from_hz, to_hz, from_hz != to_hz)
    }

    /// A converter between two rates nominally the same but on different clocks, whose
    /// ratio [`RateConverter::set_ratio`] follows as it is measured.
    pub fn adjustable(hz: u32) -> Self {
        Self::build(hz, hz, true)
    }

    /// Output samples per input sample from now on, within 1 % of the nominal ratio; moved
    /// to gradually, so that the change itself makes no click.
    pub fn set_ratio(&mut self, relative: f64) {
        if let Some(s) = self.inner.as_mut() {
            if let Err(e) = s.resampler.set_resample_ratio_relative(relative.clamp(1.0 / 1.01, 1.01), true) {
                tracing::debug!(error = %e, relative, "cannot change the resampling ratio");
            }
        }
    }

    fn build(from_hz: u32, to_hz: u32, convert: bool) -> Self {
        let inner = convert.then(|| {
            let step = from_hz as usize * STEP_MS / 1000;
            // Voice needs nothing above 20 kHz: a 128-tap sinc is transparent for it at a
            // fraction of the cost of the default 256.
            let params = SincInterpolationParameters {
                sinc_len: 128,
                f_cutoff: None,
                oversampling_factor: 128,
                interpolation: SincInterpolationType::Linear,
                window: WindowFunction::BlackmanHarris2,
            };
            let resampler =
                Async::<f32>::new_sinc(to_hz as f64 / from_hz as f64, 1.01, &params, step, 1, FixedAsync::Input)
                    .expect("valid resampler parameters for positive rates");
            let scratch = vec![0.0; resampler.output_frames_max()];
            Sinc { resampler, pending: Vec::with_capacity(step), step, scratch }
        });
        RateConverter { inner, out: VecDeque::new() }
    }

    /// Adds input at the source rate; converted output becomes available in whole steps.
    pub fn push(&mut self, samples: impl IntoIterator<Item = f32>) {
        let Some(s) = self.inner.as_mut() else {
            self.out.extend(samples);
            return;
        };
        for x in samples {
            s.pending.push(x);
            if s.pending.len() == s.step {
                let input = InterleavedSlice::new(&s.pending[..], 1, s.step).expect("one channel");
                let cap = s.scratch.len();
                let mut output = InterleavedSlice::new_mut(&mut s.scratch[..], 1, cap).expect("one channel");
                match s.resampler.process_into_buffer(&input, &mut output, None) {
                    Ok((_, written)) => self.out.extend(&s.scratch[..written]),
                    // Cannot happen with buffers sized by the resampler itself; losing 10 ms
                    // beats stopping the sound.
                    Err(e) => tracing::debug!(error = %e, "resampling step failed"),
                }
                s.pending.clear();
            }
        }
    }

    /// Converted samples ready to take.
    pub fn available(&self) -> usize {
        self.out.len()
    }

    /// Input the next output step waits for (0 when passing through).
    pub fn step(&self) -> usize {
        self.inner.as_ref().map_or(0, |s| s.step)
    }

    /// Takes up to `n` converted samples.
    pub fn take(&mut self, n: usize) -> impl Iterator<Item = f32> + '_ {
        let n = n.min(self.out.len());
        self.out.drain(..n)
    }

    /// Drops converted samples beyond `keep`, the oldest first: a stalled reader loses old
    /// sound, not memory.
    pub fn keep_newest(&mut self, keep: usize) {
        let excess = self.out.len().saturating_sub(keep);
        self.out.drain(..excess);
    }
}

/// One frame of any channel count as mono: the mean of its channels (the first channel
/// alone would lose a voice panned to the other side, and a microphone array's gain).
pub fn mix_down<T>(frame: &[T]) -> f32
where
    T: cpal::Sample,
    f32: cpal::FromSample<T>,
{
    if frame.is_empty() {
        return 0.0;
    }
    frame.iter().map(|&s| <f32 as cpal::FromSample<T>>::from_sample_(s)).sum::<f32>() / frame.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(hz: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n).map(|i| (0.5 * (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin()) as f32).collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn a_44_1_khz_voice_arrives_at_48_khz_at_the_same_pitch_and_level() {
        let mut c = RateConverter::new(44_100, 48_000);
        let input = sine(1_000.0, 44_100, 44_100);
        // Fed in uneven pieces, as device callbacks deliver.
        for chunk in input.chunks(371) {
            c.push(chunk.iter().copied());
        }
        let out: Vec<f32> = c.take(usize::MAX).collect();
        assert!((47_000..=48_000).contains(&out.len()), "a second in, a second out: {}", out.len());
        let steady = &out[4_800..out.len() - 4_800];
        let pcm: Vec<i16> = steady.iter().map(|&s| (s * 32_767.0) as i16).collect();
        let hz = crate::tone::dominant_frequency(&pcm, 48_000).unwrap();
        assert!((hz - 1_000.0).abs() < 2.0, "{hz}");
        let level = 20.0 * (rms(steady) / rms(&input)).log10();
        assert!(level.abs() < 0.3, "level changed by {level:.2} dB");
    }

    #[test]
    fn sixteen_khz_up_and_48_khz_down_keep_their_length() {
        for (from, to) in [(16_000, 48_000), (48_000, 44_100), (48_000, 16_000)] {
            let mut c = RateConverter::new(from, to);
            c.push(sine(440.0, from, from as usize * 2));
            let got = c.available() as f64 / to as f64;
            assert!((1.97..=2.0).contains(&got), "{from} -> {to}: {got:.3} s out of 2 s");
        }
    }

    #[test]
    fn equal_rates_pass_samples_through_untouched() {
        let mut c = RateConverter::new(48_000, 48_000);
        let input = sine(440.0, 48_000, 1_000);
        c.push(input.iter().copied());
        assert_eq!(c.take(2_000).collect::<Vec<_>>(), input);
        assert_eq!(c.step(), 0);
    }

    #[test]
    fn an_adjustable_converter_follows_the_ratio_it_is_given() {
        let mut c = RateConverter::adjustable(48_000);
        c.set_ratio(1.0 + 500e-6);
        c.push(sine(440.0, 48_000, 48_000 * 20));
        let extra = c.available() as f64 - 48_000.0 * 20.0;
        // 500 ppm of 20 s is 480 samples; the filter's delay holds a few back.
        assert!((300.0..=490.0).contains(&extra), "{extra} samples more");
    }

    #[test]
    fn a_stalled_reader_keeps_only_the_newest_sound() {
        let mut c = RateConverter::new(48_000, 48_000);
        c.push((0..100).map(|i| i as f32));
        c.keep_newest(10);
        assert_eq!(c.take(100).collect::<Vec<_>>(), (90..100).map(|i| i as f32).collect::<Vec<_>>());
    }

    #[test]
    fn stereo_becomes_the_mean_of_both_sides() {
        assert_eq!(mix_down(&[0.5f32, -0.5]), 0.0);
        assert_eq!(mix_down(&[0.0f32, 0.8]), 0.4, "a voice on the right only is kept, at half level");
        assert_eq!(mix_down(&[0.3f32]), 0.3);
        assert_eq!(mix_down::<f32>(&[]), 0.0);
        assert_eq!(mix_down(&[i16::MIN, 0]), -0.5, "any sample format");
        assert_eq!(mix_down(&[0u16, 0]), -1.0, "unsigned: 0 is the most negative");
    }
}
