//! When to show each received video frame: the video jitter buffer, as plain data with time
//! passed in.
//!
//! Frames do not arrive evenly. On a lossy path a frame waits for its retransmission (a round
//! trip or more) and the frames behind it queue up; shown on arrival, the picture would stop
//! for that wait and then jump, a freeze every time a packet is lost. So each frame is shown
//! at its capture time (RTP timestamp) plus the path's fastest transit plus a target delay,
//! the 95th percentile of how late recent frames were. On a clean path that is a few
//! milliseconds; with 5 % loss it grows to about a retransmission time, and the waits it
//! covers no longer show. It shrinks again when the path calms down.

use std::collections::VecDeque;

use crate::rtp_unwrap::Unwrapper;

/// Frames whose lateness sets the target (about 5 s at 30 fps).
const DELAY_WINDOW: usize = 150;
/// Frames over which the fastest transit is taken (about 10 s at 30 fps): long enough to
/// see a fast frame, short enough to follow clock drift and path changes.
const TRANSIT_WINDOW: usize = 300;
/// A frame is never held longer than this for smoothness; beyond it latency hurts more.
pub const MAX_DELAY_MS: f64 = 600.0;

#[derive(Debug)]
pub struct VideoPlayout {
    /// Extends RTP timestamps (90 kHz); the first frame's extended value is the zero of
    /// capture times.
    ts: Unwrapper,
    first_ts: Option<u64>,
    /// Arrival minus capture time (ms) of recent frames: transit plus clock offset.
    transits: VecDeque<f64>,
    /// How much later than the fastest transit recent frames arrived (ms).
    delays: VecDeque<f64>,
}

impl Default for VideoPlayout {
    fn default() -> Self {
        Self::new()
    }
}

impl VideoPlayout {
    pub fn new() -> Self {
        VideoPlayout { ts: Unwrapper::timestamp(), first_ts: None, transits: VecDeque::new(), delays: VecDeque::new() }
    }

    /// A frame with RTP timestamp `rtp_ts` is complete at `now_ms`: returns when to show it
    /// (same clock as `now_ms`, never before it).
    pub fn schedule(&mut self, rtp_ts: u32, now_ms: u64) -> u64 {
        let ext = self.ts.extend(rtp_ts as u64);
        let ts = ext as i64 - *self.first_ts.get_or_insert(ext) as i64;
        let capture_ms = ts as f64 / 90.0;
        let transit = now_ms as f64 - capture_ms;
        push(&mut self.transits, transit, TRANSIT_WINDOW);
        let fastest = self.transits.iter().copied().fold(f64::INFINITY, f64::min);
        push(&mut self.delays, transit - fastest, DELAY_WINDOW);
        let target = self.target_ms();
        let show = capture_ms + fastest + target;
        (show.round().max(0.0) as u64).max(now_ms)
    }

    /// The delay added to the fastest transit now (ms).
    pub fn target_ms(&self) -> f64 {
        if self.delays.is_empty() {
            return 0.0;
        }
        let mut d: Vec<f64> = self.delays.iter().copied().collect();
        d.sort_by(f64::total_cmp);
        d[(d.len() - 1) * 95 / 100].min(MAX_DELAY_MS)
    }
}

fn push(q: &mut VecDeque<f64>, v: f64, cap: usize) {
    if q.len() == cap {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u32 = 3000; // 90 kHz ticks at 30 fps
    const FRAME_MS: u64 = 33;

    #[test]
    fn an_even_path_adds_nothing() {
        let mut p = VideoPlayout::new();
        for i in 0..100u64 {
            let now = 1_000 + i * 100 / 3;
            // Arrival times are whole milliseconds, capture times are not: 1 ms of rounding.
            assert!(p.schedule(i as u32 * FRAME, now) - now <= 1, "frame {i}");
        }
        assert!(p.target_ms() < 1.0);
    }

    #[test]
    fn waits_for_retransmissions_are_absorbed_once_seen() {
        let mut p = VideoPlayout::new();
        let mut now = 0;
        let mut shown = Vec::new();
        for i in 0..300u32 {
            // Every 20th frame waits 250 ms for a resend; the frames behind it arrive with it.
            let arrive =
                if i % 20 >= 10 && i % 20 < 18 { now.max(((i / 20) * 20 + 18) as u64 * FRAME_MS) } else { now };
            now = (i as u64 + 1) * FRAME_MS;
            shown.push(p.schedule(i * FRAME, arrive));
        }
        // Early on the holds show as jumps; once the target covers them, frames are evenly spaced.
        let gaps: Vec<u64> = shown.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[..40].iter().any(|g| *g > 150), "the first holds are visible: {:?}", &gaps[..40]);
        // (A freeze, by WebRTC's measure, is a gap over 150 ms beyond the usual interval.)
        assert!(gaps[200..].iter().all(|g| *g <= 70), "later ones are not: {:?}", &gaps[200..]);
        assert!(p.target_ms() > 200.0 && p.target_ms() <= MAX_DELAY_MS);
    }

    #[test]
    fn never_in_the_past_and_never_beyond_the_cap() {
        let mut p = VideoPlayout::new();
        p.schedule(0, 0);
        // A frame 5 s late: shown now, and the target stays capped.
        assert_eq!(p.schedule(FRAME, 5_000), 5_000);
        assert!(p.target_ms() <= MAX_DELAY_MS);
    }

    #[test]
    fn timestamps_wrap() {
        let mut p = VideoPlayout::new();
        let start = u32::MAX - FRAME;
        assert_eq!(p.schedule(start, 100), 100);
        assert_eq!(p.schedule(start.wrapping_add(FRAME), 133), 133);
        assert_eq!(p.schedule(start.wrapping_add(2 * FRAME), 167), 167);
    }
}
