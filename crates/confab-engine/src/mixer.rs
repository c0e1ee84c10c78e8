//! Mixes 20 ms frames from every remote peer into the one stream the speaker plays.

use crate::codec::opus::FRAME_SAMPLES;

/// Sums the frames with saturation. Peers are rarely loud at once, so plain summing keeps
/// each voice at its own level; clipping only happens when several shout together.
pub fn mix<'a>(frames: impl IntoIterator<Item = &'a [i16; FRAME_SAMPLES]>) -> [i16; FRAME_SAMPLES] {
    let mut acc = [0i32; FRAME_SAMPLES];
    for f in frames {
        for (a, s) in acc.iter_mut().zip(f.iter()) {
            *a += *s as i32;
        }
    }
    acc.map(|a| a.clamp(i16::MIN as i32, i16::MAX as i32) as i16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_saturates() {
        let a = [1000i16; FRAME_SAMPLES];
        let b = [-300i16; FRAME_SAMPLES];
        assert_eq!(mix([&a, &b])[0], 700);
        let loud = [30_000i16; FRAME_SAMPLES];
        assert_eq!(mix([&loud, &loud])[5], i16::MAX);
        assert_eq!(mix([&[-30_000i16; FRAME_SAMPLES], &[-30_000; FRAME_SAMPLES]])[0], i16::MIN);
        assert_eq!(mix(std::iter::empty()), [0; FRAME_SAMPLES]);
    }

    #[test]
    fn two_tones_both_survive_the_mix() {
        let mut g1 = crate::devices::synthetic::ToneGenerator::new(440.0);
        let mut g2 = crate::devices::synthetic::ToneGenerator::new(660.0);
        let mut out = Vec::new();
        for _ in 0..70 {
            out.extend_from_slice(&mix([&g1.next_frame(), &g2.next_frame()]));
        }
        use rustfft::{num_complex::Complex, FftPlanner};
        let n = 65536;
        let mut buf: Vec<Complex<f64>> = out[..n].iter().map(|&s| Complex::new(s as f64, 0.0)).collect();
        FftPlanner::new().plan_fft_forward(n).process(&mut buf);
        let bin = |hz: f64| buf[(hz * n as f64 / 48_000.0).round() as usize].norm();
        let noise = bin(1000.0);
        assert!(bin(440.0) > 100.0 * noise && bin(660.0) > 100.0 * noise);
    }
}
