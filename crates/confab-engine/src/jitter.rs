//! The audio jitter buffer: plain data with time passed in. Packets go in as they arrive
//! (any order, duplicates, gaps); the playout clock takes one 20 ms frame out per tick. The
//! target depth follows the measured network jitter (RFC 3550 estimator), so a steady link
//! plays with ~40 ms of delay and a jittery one buys itself more.

use std::collections::BTreeMap;

use crate::rtp_unwrap::Unwrapper;

/// One playout tick's worth of audio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AudioTick {
    /// The packet due now.
    Packet(Vec<u8>),
    /// The packet due now was lost; `next` (if here) lets Opus rebuild it from FEC.
    Lost { next: Option<Vec<u8>> },
    /// Nothing to play (not started, or starved and re-buffering): play silence.
    Silence,
}

/// Counters for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub played: u64,
    pub concealed: u64,
    pub late: u64,
    pub dropped_for_latency: u64,
}

#[derive(Debug)]
pub struct JitterBuffer {
    packets: BTreeMap<u64, Vec<u8>>,
    /// Extended sequence number of the next frame to play.
    next: Option<u64>,
    seq: Unwrapper,
    playing: bool,
    /// Ticks in a row with nothing at all buffered.
    starved: u32,
    jitter_ms: f64,
    last_transit: Option<f64>,
    pub stats: JitterStats,
}

const FRAME_MS: f64 = 20.0;
const MIN_TARGET_MS: f64 = 40.0;
const MAX_TARGET_MS: f64 = 300.0;
/// Over this many frames beyond the target, one is dropped to cut latency.
const SLACK_FRAMES: usize = 3;
/// After this many empty ticks, stop and re-buffer.
const STARVE_TICKS: u32 = 5;

impl Default for JitterBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl JitterBuffer {
    pub fn new() -> Self {
        JitterBuffer {
            packets: BTreeMap::new(),
            next: None,
            seq: Unwrapper::sequence(),
            playing: false,
            starved: 0,
            jitter_ms: 0.0,
            last_transit: None,
            stats: JitterStats::default(),
        }
    }

    /// Current jitter estimate in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter_ms
    }

    /// Depth the buffer aims for, in milliseconds.
    pub fn target_ms(&self) -> f64 {
        (3.0 * self.jitter_ms + FRAME_MS).clamp(MIN_TARGET_MS, MAX_TARGET_MS)
    }

    fn target_frames(&self) -> usize {
        (self.target_ms() / FRAME_MS).ceil() as usize
    }

    /// Frames buffered from the next one to play on.
    pub fn depth(&self) -> usize {
        match self.next {
            Some(n) => self.packets.range(n..).count(),
            None => self.packets.len(),
        }
    }

    /// A packet arrived at `now_ms` with RTP sequence number `seq` and timestamp `rtp_ts`
    /// (48 kHz clock).
    pub fn push(&mut self, seq: u16, rtp_ts: u32, payload: Vec<u8>, now_ms: f64) {
        self.stats.received += 1;
        let ext = self.seq.extend(seq as u64);
        // RFC 3550 interarrival jitter, in ms.
        let transit = now_ms - rtp_ts as f64 / 48.0;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // A pause in sending (mute) or a timestamp wrap makes a huge jump that is not
            // network jitter: ignore it.
            if d < 1_000.0 {
                self.jitter_ms += (d - self.jitter_ms) / 16.0;
            }
        }
        self.last_transit = Some(transit);
        if let Some(next) = self.next {
            if ext < next {
                self.stats.late += 1;
                return;
            }
        }
        self.packets.entry(ext).or_insert(payload);
    }

    /// Takes the frame due at this playout tick.
    pub fn pop(&mut self) -> AudioTick {
        if !self.playing {
            if self.packets.len() >= self.target_frames() {
                self.playing = true;
                self.next = self.packets.keys().next().copied();
            } else {
                return AudioTick::Silence;
            }
        }
        let mut next = self.next.expect("playing implies a position");
        // Too far behind live: skip ahead, a frame at a time (a 20 ms cut is less audible
        // than latency that only grows). A gap in the sequence is jumped at once: a sender
        // whose numbers leap thousands ahead costs one step, not one per missing number.
        let most = self.target_frames() + SLACK_FRAMES;
        let mut depth = self.depth();
        while depth > most {
            let first = *self.packets.range(next..).next().expect("depth counts packets from next on").0;
            if first != next {
                next = first;
                continue;
            }
            self.packets.remove(&next);
            self.stats.dropped_for_latency += 1;
            depth -= 1;
            next += 1;
        }
        self.next = Some(next + 1);
        if let Some(p) = self.packets.remove(&next) {
            self.starved = 0;
            self.stats.played += 1;
            return AudioTick::Packet(p);
        }
        if self.packets.is_empty() {
            self.starved += 1;
            if self.starved >= STARVE_TICKS {
                // The stream paused (muted, or the network died): wait to refill.
                self.playing = false;
                self.next = None;
                self.starved = 0;
                self.last_transit = None;
                return AudioTick::Silence;
            }
        }
        self.stats.concealed += 1;
        AudioTick::Lost { next: self.packets.get(&(next + 1)).cloned() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(n: u16) -> Vec<u8> {
        n.to_be_bytes().to_vec()
    }

    #[test]
    fn buffers_to_the_target_then_plays_in_order() {
        let mut jb = JitterBuffer::new();
        jb.push(10, 0, pkt(10), 0.0);
        assert_eq!(jb.pop(), AudioTick::Silence, "not enough buffered yet");
        jb.push(12, 1920, pkt(12), 40.0);
        jb.push(11, 960, pkt(11), 41.0);
        assert_eq!(jb.pop(), AudioTick::Packet(pkt(10)));
        assert_eq!(jb.pop(), AudioTick::Packet(pkt(11)));
        assert_eq!(jb.pop(), AudioTick::Packet(pkt(12)));
    }

    #[test]
    fn a_lost_packet_is_concealed_with_the_next_for_fec() {
        let mut jb = JitterBuffer::new();
        for n in [1u16, 2, 4, 5] {
            jb.push(n, n as u32 * 960, pkt(n), n as f64 * 20.0);
        }
        assert_eq!(jb.pop(), AudioTick::Packet(pkt(1)));
        assert_eq!(jb.pop(), AudioTick::Packet(pkt(2)));
        assert_eq!(jb.pop(), AudioTick::Lost { next: Some(pkt(4)) });
        assert_eq!(jb.pop(), AudioTick::Packet(pkt(4)));
        // A packet arriving after its slot is counted late and not played.
        jb.push(3, 3 * 960, pkt(3), 100.0);
        assert_eq!(jb.stats.late, 1);
        assert_eq!(jb.pop(), AudioTick::Packet(pkt(5)));
        assert_eq!(jb.stats.concealed, 1);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut jb = JitterBuffer::new();
        for (i, n) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
            jb.push(n, i as u32 * 960, pkt(n), i as f64 * 20.0);
        }
        let played: Vec<_> = (0..4).map(|_| jb.pop()).collect();
        assert_eq!(played, [65534u16, 65535, 0, 1].map(|n| AudioTick::Packet(pkt(n))));
    }

    #[test]
    fn target_grows_with_jitter_and_latency_is_trimmed() {
        let mut steady = JitterBuffer::new();
        let mut shaky = JitterBuffer::new();
        for n in 0..200u16 {
            let sent = n as f64 * 20.0;
            steady.push(n, n as u32 * 960, pkt(n), sent + 5.0);
            // +/- 40 ms of jitter.
            let j = if n % 2 == 0 { 40.0 } else { 0.0 };
            shaky.push(n, n as u32 * 960, pkt(n), sent + j);
        }
        assert!(steady.target_ms() <= 40.0, "{}", steady.target_ms());
        assert!(shaky.target_ms() >= 100.0, "{}", shaky.target_ms());
        // 200 frames buffered at once: playout trims down to near the target.
        let mut drops = 0;
        for _ in 0..20 {
            if let AudioTick::Packet(_) = steady.pop() {}
            drops = steady.stats.dropped_for_latency;
        }
        assert!(drops > 100, "{drops}");
        assert!(steady.depth() <= steady.target_frames() + SLACK_FRAMES);
    }

    #[test]
    fn a_sequence_number_leap_is_one_step_not_one_per_missing_number() {
        let mut jb = JitterBuffer::new();
        for n in 0..3u16 {
            jb.push(n, n as u32 * 960, pkt(n), n as f64 * 20.0);
        }
        assert_eq!(jb.pop(), AudioTick::Packet(pkt(0)));
        // Then the sender leaps 30,000 numbers ahead, in a burst deep enough to trim: the
        // old recursion took a stack frame per missing number.
        for n in 0..40u16 {
            let seq = 30_000 + n;
            jb.push(seq, seq as u32 * 960, pkt(seq), 100.0);
        }
        let first = jb.pop();
        assert!(matches!(first, AudioTick::Packet(_)), "{first:?}");
        assert!(jb.depth() <= jb.target_frames() + SLACK_FRAMES);
        assert!(jb.stats.dropped_for_latency < 45, "only real packets count as dropped: {:?}", jb.stats);
    }

    #[test]
    fn starvation_rebuffers() {
        let mut jb = JitterBuffer::new();
        for n in 0..3u16 {
            jb.push(n, n as u32 * 960, pkt(n), n as f64 * 20.0);
        }
        for _ in 0..3 {
            assert!(matches!(jb.pop(), AudioTick::Packet(_)));
        }
        for _ in 0..STARVE_TICKS - 1 {
            assert!(matches!(jb.pop(), AudioTick::Lost { next: None }));
        }
        assert_eq!(jb.pop(), AudioTick::Silence);
        // A new burst after the pause plays again once buffered.
        for n in 100..103u16 {
            jb.push(n, n as u32 * 960, pkt(n), 2000.0 + n as f64 * 20.0);
        }
        assert_eq!(jb.pop(), AudioTick::Packet(pkt(100)));
    }
}
