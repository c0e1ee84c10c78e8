//! How loud each voice in the call is, and who is speaking: our own microphone (after its
//! processing, so that echo and a fan do not count) and each peer's decoded audio. Plain
//! data: the audio threads store levels, the call reads them a few times a second and
//! reports them (the UI's level meter and speaking marks).

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// The quietest level reported, dBFS: digital silence.
pub const FLOOR_DBFS: f32 = -100.0;

/// A level above this is a voice (speech is -40 to -10 dBFS at a microphone; a quiet room
/// after noise suppression is far below).
const SPEAKING_DBFS: f32 = -45.0;
/// Speaking stays marked this long after the voice drops, so that the pauses between words
/// do not make the mark flicker.
const HOLD_MS: u64 = 600;

/// The RMS level of a block, in dBFS.
pub fn level_dbfs(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return FLOOR_DBFS;
    }
    let mean = pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / pcm.len() as f64;
    let db = 10.0 * (mean / (32768.0f64 * 32768.0)).log10();
    (db as f32).max(FLOOR_DBFS)
}

/// The loudest level since it was last read, written by an audio thread and read by the
/// call (an f32's bits in an atomic: neither side ever waits).
#[derive(Debug)]
pub struct PeakLevel(AtomicU32);

impl Default for PeakLevel {
    fn default() -> Self {
        PeakLevel(AtomicU32::new(FLOOR_DBFS.to_bits()))
    }
}

impl PeakLevel {
    pub fn note(&self, dbfs: f32) {
        let _ = self.0.fetch_update(Relaxed, Relaxed, |old| (dbfs > f32::from_bits(old)).then_some(dbfs.to_bits()));
    }

    /// The loudest since the last `take`, and starts over.
    pub fn take(&self) -> f32 {
        f32::from_bits(self.0.swap(FLOOR_DBFS.to_bits(), Relaxed))
    }
}

/// Whether one voice is speaking, from its levels over time.
#[derive(Debug, Default)]
pub struct Speaking {
    last_loud_ms: Option<u64>,
}

impl Speaking {
    /// Takes the level heard up to `now_ms`; returns whether the voice counts as speaking.
    pub fn update(&mut self, dbfs: f32, now_ms: u64) -> bool {
        if dbfs > SPEAKING_DBFS {
            self.last_loud_ms = Some(now_ms);
        }
        self.last_loud_ms.is_some_and(|t| now_ms.saturating_sub(t) < HOLD_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_of_silence_a_tone_and_full_scale() {
        assert_eq!(level_dbfs(&[0; 960]), FLOOR_DBFS);
        assert_eq!(level_dbfs(&[]), FLOOR_DBFS);
        let full: Vec<i16> = (0..960).map(|i| if i % 2 == 0 { 32767 } else { -32768 }).collect();
        assert!(level_dbfs(&full).abs() < 0.01);
        // A sine at amplitude 0.1 of full scale: -20 dB peak, -23 dB RMS.
        let sine: Vec<i16> =
            (0..960).map(|i| ((i as f64 * 2.0 * std::f64::consts::PI / 48.0).sin() * 3276.8) as i16).collect();
        assert!((level_dbfs(&sine) + 23.0).abs() < 0.1, "{}", level_dbfs(&sine));
    }

    #[test]
    fn the_peak_is_the_loudest_since_the_last_read() {
        let p = PeakLevel::default();
        p.note(-30.0);
        p.note(-50.0);
        assert_eq!(p.take(), -30.0);
        assert_eq!(p.take(), FLOOR_DBFS, "starts over");
    }

    #[test]
    fn speaking_holds_through_the_pauses_between_words() {
        let mut s = Speaking::default();
        assert!(!s.update(-60.0, 0), "a quiet room");
        assert!(s.update(-20.0, 100));
        assert!(s.update(-70.0, 500), "a pause between words");
        assert!(!s.update(-70.0, 800), "stopped talking");
        assert!(s.update(-30.0, 900));
    }
}
