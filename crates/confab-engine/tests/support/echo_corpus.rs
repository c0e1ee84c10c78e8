//! Test material for the echo canceller, made at test time: two speech-like voices (voiced
//! syllables with a gliding pitch, formant-like colour and pauses; not a steady tone, which
//! noise suppression is right to remove), a room impulse response, an echo delay, clock drift
//! between the speaker and the microphone, and background noise. The scene, 20 s at 48 kHz:
//!
//! ```text
//! 0 s ........ 10 s ....... 14 s ........ 20 s
//! far end alone | near alone  | both talking
//! ```
//!
//! The microphone hears the far voice through the room (the echo), the near voice, and noise.
//! Shared by the corpus test (floors) and the `echo` benchmark (the full table).

#![allow(dead_code)]

use confab_engine::audio_processing::{CaptureProcessor, EchoReference, ProcessingSettings, BLOCK};

pub const RATE: usize = 48_000;
pub const FAR_ALONE: std::ops::Range<usize> = 0..10 * RATE;
pub const NEAR_ALONE: std::ops::Range<usize> = 10 * RATE..14 * RATE;
pub const DOUBLE_TALK: std::ops::Range<usize> = 14 * RATE..20 * RATE;
const LEN: usize = 20 * RATE;

/// A small deterministic generator: the material is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
    /// Roughly Gaussian, unit variance.
    fn gauss(&mut self) -> f64 {
        (0..12).map(|_| self.next()).sum::<f64>() - 6.0
    }
}

/// A voice: syllables of 120-300 ms with 40-200 ms pauses, each a harmonic series on a
/// gliding pitch around `f0`, its harmonics weighted by two moving formant peaks. Peak
/// amplitude about `level` (0..1 of full scale), `span` samples long, silent elsewhere.
pub fn voice(seed: u64, f0: f64, level: f64, span: std::ops::Range<usize>) -> Vec<f64> {
    let mut rng = Rng(seed.max(1));
    let mut out = vec![0.0; LEN];
    let mut t = span.start;
    while t < span.end {
        let len = (rng.between(0.12, 0.30) * RATE as f64) as usize;
        let pitch0 = f0 * rng.between(0.85, 1.2);
        let pitch1 = pitch0 * rng.between(0.85, 1.15);
        let (fa, fb) = (rng.between(300.0, 900.0), rng.between(1000.0, 2500.0));
        let mut phase = 0.0f64;
        for i in 0..len.min(span.end - t) {
            let x = i as f64 / len as f64;
            let pitch = pitch0 + (pitch1 - pitch0) * x;
            phase += 2.0 * std::f64::consts::PI * pitch / RATE as f64;
            // Rise and fall of a syllable.
            let env = (std::f64::consts::PI * x).sin().powf(0.6);
            let mut s = 0.0;
            for h in 1..=24 {
                let f = pitch * h as f64;
                if f > 7_000.0 {
                    break;
                }
                let formants = 1.0 / (1.0 + ((f - fa) / 150.0).powi(2)) + 0.5 / (1.0 + ((f - fb) / 250.0).powi(2));
                s += (h as f64 * phase).sin() * (0.15 / h as f64 + formants);
            }
            out[t + i] = s * env;
        }
        t += len + (rng.between(0.04, 0.20) * RATE as f64) as usize;
    }
    let peak = out.iter().fold(0.0f64, |m, s| m.max(s.abs())).max(1e-9);
    out.iter_mut().for_each(|s| *s *= level / peak);
    out
}

/// White noise at `dbfs` RMS.
pub fn noise(seed: u64, dbfs: f64) -> Vec<f64> {
    let mut rng = Rng(seed.max(1));
    let rms = 10f64.powf(dbfs / 20.0);
    (0..LEN).map(|_| rng.gauss() * rms).collect()
}

/// The far voice as the microphone hears it: played, delayed by `delay_ms` (the path from
/// the speaker through the air and both device buffers), coloured by a room (a direct path
/// then 60 ms of decaying reflections), `erl_db` quieter, and read by a microphone whose
/// clock runs `drift_ppm` faster than the speaker's.
pub fn echo(far: &[f64], delay_ms: f64, drift_ppm: f64, erl_db: f64) -> Vec<f64> {
    let mut rng = Rng(7);
    let delay = (delay_ms * RATE as f64 / 1000.0) as usize;
    let mut taps: Vec<(usize, f64)> = vec![(delay, 1.0)];
    for _ in 0..150 {
        let at = rng.between(0.5, 60.0) * RATE as f64 / 1000.0;
        let gain = 0.5 * (-(at / RATE as f64) / 0.02).exp() * if rng.next() < 0.5 { -1.0 } else { 1.0 };
        taps.push((delay + at as usize, gain));
    }
    let energy: f64 = taps.iter().map(|(_, g)| g * g).sum();
    let scale = 10f64.powf(-erl_db / 20.0) / energy.sqrt();
    let mut room = vec![0.0; far.len()];
    for (at, g) in taps {
        let n = room.len().saturating_sub(at);
        for (r, s) in room[at..].iter_mut().zip(&far[..n]) {
            *r += s * g * scale;
        }
    }
    // The microphone samples the room at its own clock: sample n is taken at n * (1 + ppm).
    let step = 1.0 + drift_ppm * 1e-6;
    (0..room.len())
        .map(|n| {
            let x = n as f64 * step;
            let (i, frac) = (x as usize, x.fract());
            match (room.get(i), room.get(i + 1)) {
                (Some(a), Some(b)) => a + (b - a) * frac,
                _ => 0.0,
            }
        })
        .collect()
}

pub fn to_i16(x: &[f64]) -> Vec<i16> {
    x.iter().map(|s| (s * 32767.0).round().clamp(-32768.0, 32767.0) as i16).collect()
}

pub fn add(parts: &[&[f64]]) -> Vec<f64> {
    (0..LEN).map(|i| parts.iter().map(|p| p[i]).sum()).collect()
}

/// Something that takes what the speaker played and cleans what the microphone heard, 20 ms
/// at a time: confab's [`CaptureProcessor`], or a candidate the benchmark compares it with.
pub trait Canceller {
    fn render(&mut self, far: &[i16]);
    fn capture(&mut self, mic: &mut [i16; 2 * BLOCK]);
}

impl Canceller for CaptureProcessor {
    fn render(&mut self, far: &[i16]) {
        CaptureProcessor::render(self, far)
    }
    fn capture(&mut self, mic: &mut [i16; 2 * BLOCK]) {
        CaptureProcessor::capture(self, mic)
    }
}

/// Runs confab's capture processing over `mic` as a call does: what the speaker played goes
/// to its echo reference as the speaker's callback hands it over, and each microphone frame
/// follows. Both device clocks are simulated, each callback up to 2 ms late: the speaker's
/// at 48 kHz, the microphone's `drift_ppm` slower (as `echo` makes it).
pub fn process(
    settings: ProcessingSettings,
    far: &[i16],
    mic: &[i16],
    drift_ppm: f64,
) -> (Vec<i16>, std::time::Duration) {
    let reference = std::sync::Arc::new(EchoReference::default());
    let mut p = CaptureProcessor::new(settings, Some(reference.clone()));
    let mut late = Rng(99);
    let step = 1.0 + drift_ppm * 1e-6;
    let frame = 2 * BLOCK;
    let mut out = Vec::with_capacity(mic.len());
    let started = std::time::Instant::now();
    for (k, (f, m)) in far.chunks_exact(frame).zip(mic.chunks_exact(frame)).enumerate() {
        reference.played_at(f.iter().copied(), k as f64 * 0.02 + late.between(0.0, 0.002));
        let mut pcm: [i16; 2 * BLOCK] = m.try_into().unwrap();
        p.capture_at(&mut pcm, (k + 1) as f64 * 0.02 * step + late.between(0.0, 0.002));
        out.extend_from_slice(&pcm);
    }
    (out, started.elapsed())
}

pub fn process_with(p: &mut dyn Canceller, far: &[i16], mic: &[i16]) -> (Vec<i16>, std::time::Duration) {
    let mut out = Vec::with_capacity(mic.len());
    let frame = 2 * BLOCK;
    let started = std::time::Instant::now();
    for (f, m) in far.chunks_exact(frame).zip(mic.chunks_exact(frame)) {
        p.render(f);
        let mut pcm: [i16; 2 * BLOCK] = m.try_into().unwrap();
        p.capture(&mut pcm);
        out.extend_from_slice(&pcm);
    }
    (out, started.elapsed())
}

pub fn power(x: &[i16]) -> f64 {
    x.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64 + 1e-3
}

fn db(ratio: f64) -> f64 {
    10.0 * ratio.log10()
}

/// What the processing did to one scene.
#[derive(Debug)]
pub struct Figures {
    /// Echo removed over the converged far-end-alone part (its last 5 s), dB.
    pub erle_db: f64,
    /// The level of the near voice alone, out against in, dB (0 = untouched).
    pub near_alone_db: f64,
    /// The near voice while both talk, against the near voice alone, dB (0 = kept whole).
    pub double_talk_db: f64,
    /// Processing time per 10 ms block, µs.
    pub us_per_block: f64,
    /// How much later the near voice comes out than it went in, ms.
    pub added_latency_ms: f64,
}

/// How loud the near voice is in `out` over `range`: the gain of its best-fitting copy
/// (projection onto the clean voice, at the lag the processing adds, up to 40 ms), so that
/// left-over echo or noise does not count as voice.
fn voice_gain_db(out: &[i16], near: &[i16], range: std::ops::Range<usize>) -> f64 {
    voice_in(out, near, range).0
}

/// The near voice's gain in `out` (dB) and how late it comes out (samples).
fn voice_in(out: &[i16], near: &[i16], range: std::ops::Range<usize>) -> (f64, usize) {
    let lag = (0..=4 * BLOCK)
        .max_by_key(|&lag| {
            let c: f64 = range.clone().map(|i| out.get(i + lag).copied().unwrap_or(0) as f64 * near[i] as f64).sum();
            c as i64
        })
        .unwrap();
    let (mut cross, mut own) = (0.0, 0.0);
    for i in range {
        let n = near[i] as f64;
        cross += out.get(i + lag).copied().unwrap_or(0) as f64 * n;
        own += n * n;
    }
    (20.0 * (cross / own.max(1e-9)).max(1e-9).log10(), lag)
}

/// The scene with an echo `delay_ms` late and `drift_ppm` of drift, through confab's
/// processing with `settings`.
pub fn scene(settings: ProcessingSettings, delay_ms: f64, drift_ppm: f64) -> Figures {
    scene_through(delay_ms, drift_ppm, |far, mic| process(settings, far, mic, drift_ppm))
}

/// The same scene through any canceller, given the reference as played.
pub fn scene_with(p: &mut dyn Canceller, delay_ms: f64, drift_ppm: f64) -> Figures {
    scene_through(delay_ms, drift_ppm, |far, mic| process_with(p, far, mic))
}

fn scene_through(
    delay_ms: f64,
    drift_ppm: f64,
    run: impl FnOnce(&[i16], &[i16]) -> (Vec<i16>, std::time::Duration),
) -> Figures {
    // Far: a lower voice, loud in the speaker; near: a higher one, at talking level.
    let far = add(&[&voice(11, 120.0, 0.5, FAR_ALONE), &voice(13, 120.0, 0.5, DOUBLE_TALK)]);
    let near = voice(23, 210.0, 0.3, NEAR_ALONE.start..DOUBLE_TALK.end);
    let room_noise = noise(5, -70.0);
    let heard = echo(&far, delay_ms, drift_ppm, 6.0);
    let mic = to_i16(&add(&[&heard, &near, &room_noise]));
    let (far, near) = (to_i16(&far), to_i16(&near));
    let (out, took) = run(&far, &mic);
    let converged = FAR_ALONE.end - 5 * RATE..FAR_ALONE.end;
    let settle = RATE / 2;
    let alone = NEAR_ALONE.start + settle..NEAR_ALONE.end;
    let both = DOUBLE_TALK.start + settle..DOUBLE_TALK.end;
    let (kept_alone, lag) = voice_in(&out, &near, alone.clone());
    Figures {
        erle_db: db(power(&mic[converged.clone()]) / power(&out[converged])),
        near_alone_db: db(power(&out[alone.clone()]) / power(&mic[alone])),
        double_talk_db: voice_gain_db(&out, &near, both) - kept_alone,
        us_per_block: took.as_secs_f64() * 1e6 / (out.len() / BLOCK) as f64,
        added_latency_ms: lag as f64 * 1000.0 / RATE as f64,
    }
}

/// ERLE later in a call: 20 s of the far end alone, measured over the last 5 s, when the
/// drift between the clocks has long been measured.
pub fn erle_later(settings: ProcessingSettings, delay_ms: f64, drift_ppm: f64) -> f64 {
    let far = voice(11, 120.0, 0.5, 0..LEN);
    let mic = to_i16(&add(&[&echo(&far, delay_ms, drift_ppm, 6.0), &noise(5, -70.0)]));
    let (out, _) = process(settings, &to_i16(&far), &mic, drift_ppm);
    let last = LEN - 5 * RATE..LEN;
    db(power(&mic[last.clone()]) / power(&out[last]))
}

/// What noise suppression did to a room with steady noise at `noise_dbfs`.
#[derive(Debug)]
pub struct NoiseFigures {
    /// The noise alone (before anyone talks, its last 5 s), out against in, dB.
    pub noise_db: f64,
    /// The voice over the noise, out against in (its best-fitting copy), dB.
    pub voice_db: f64,
}

/// Noise alone for 10 s, then the near voice over it; no far end.
pub fn noisy_room(settings: ProcessingSettings, noise_dbfs: f64) -> NoiseFigures {
    let near = voice(23, 210.0, 0.3, NEAR_ALONE.start..DOUBLE_TALK.end);
    let mic = to_i16(&add(&[&near, &noise(9, noise_dbfs)]));
    let silence = vec![0i16; mic.len()];
    let (out, _) = process(settings, &silence, &mic, 0.0);
    let quiet = FAR_ALONE.end - 5 * RATE..FAR_ALONE.end;
    let talking = NEAR_ALONE.start + RATE / 2..DOUBLE_TALK.end;
    NoiseFigures {
        noise_db: db(power(&out[quiet.clone()]) / power(&mic[quiet])),
        voice_db: voice_gain_db(&out, &to_i16(&near), talking),
    }
}
