//! Finds the dominant frequency in PCM: how a test knows which peer's tone it hears.

use rustfft::{num_complex::Complex, FftPlanner};

/// The strongest frequency in `pcm` (Hann window, FFT, parabolic interpolation of the peak).
/// `None` for silence or too few samples. Accurate to well under 1 Hz for a pure tone over
/// 65536 samples at 48 kHz.
pub fn dominant_frequency(pcm: &[i16], sample_rate: u32) -> Option<f64> {
    let n = pcm.len().next_power_of_two() / if pcm.len().is_power_of_two() { 1 } else { 2 };
    if n < 1024 {
        return None;
    }
    let pcm = &pcm[pcm.len() - n..];
    if pcm.iter().all(|&s| s.unsigned_abs() < 64) {
        return None;
    }
    let mut buf: Vec<Complex<f64>> = pcm
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (n - 1) as f64).cos();
            Complex::new(s as f64 * w, 0.0)
        })
        .collect();
    FftPlanner::new().plan_fft_forward(n).process(&mut buf);
    let mags: Vec<f64> = buf[..n / 2].iter().map(|c| c.norm()).collect();
    // Skip DC and the lowest bins (below ~20 Hz).
    let lo = (20.0 * n as f64 / sample_rate as f64).ceil() as usize;
    let (k, _) = mags.iter().enumerate().skip(lo.max(1)).max_by(|a, b| a.1.total_cmp(b.1))?;
    let k = k.clamp(1, mags.len() - 2);
    // Parabolic interpolation on log magnitudes.
    let (a, b, c) = (mags[k - 1].max(1e-9).ln(), mags[k].max(1e-9).ln(), mags[k + 1].max(1e-9).ln());
    let denom = a - 2.0 * b + c;
    let shift = if denom.abs() > 1e-12 { 0.5 * (a - c) / denom } else { 0.0 };
    Some((k as f64 + shift) * sample_rate as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, n: usize) -> Vec<i16> {
        (0..n).map(|i| ((2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin() * 8000.0) as i16).collect()
    }

    #[test]
    fn finds_tones_precisely() {
        for hz in [220.0, 440.0, 523.25, 997.0, 3000.0] {
            let f = dominant_frequency(&tone(hz, 65536), 48_000).unwrap();
            assert!((f - hz).abs() < 0.5, "{hz} -> {f}");
        }
        assert_eq!(dominant_frequency(&[0; 65536], 48_000), None);
        assert_eq!(dominant_frequency(&tone(440.0, 100), 48_000), None);
    }

    #[test]
    fn the_louder_of_two_tones_wins() {
        let mix: Vec<i16> = tone(440.0, 65536).iter().zip(tone(660.0, 65536)).map(|(a, b)| a / 3 + b).collect();
        let f = dominant_frequency(&mix, 48_000).unwrap();
        assert!((f - 660.0).abs() < 1.0, "{f}");
    }
}
