//! Reassembles VP8 frames from RTP packets (RFC 7741), as plain data with time passed in.
//!
//! A frame is complete when we hold its first packet (S=1, partition 0), its last (the RTP
//! marker) and every sequence number between. It is handed out at once, not when the next
//! frame starts, which saves a whole frame interval of latency over a builder that waits
//! for the timestamp to change. Frames come out in order; a frame still incomplete when a
//! later one is complete and `max_wait` has passed is given up, and the next frame out is
//! flagged so the decoder knows the reference chain broke.

use std::collections::BTreeMap;

use crate::rtp_unwrap::Unwrapper;

/// One reassembled frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vp8Frame {
    pub data: Vec<u8>,
    pub rtp_ts: u32,
    /// A keyframe (VP8 payload header P bit clear).
    pub keyframe: bool,
    /// One or more frames before this one were lost.
    pub after_loss: bool,
}

#[derive(Default, Debug)]
struct Pending {
    /// Extended sequence number -> (is start, is end, payload without descriptor).
    packets: BTreeMap<u64, (bool, bool, Vec<u8>)>,
    first_seen_ms: u64,
}

impl Pending {
    fn complete(&self) -> bool {
        let Some((&first, &(start, _, _))) = self.packets.iter().next() else { return false };
        let Some((&last, &(_, end, _))) = self.packets.iter().next_back() else { return false };
        start && end && (last - first + 1) as usize == self.packets.len()
    }
}

#[derive(Debug)]
pub struct Vp8Assembler {
    /// Frames by extended RTP timestamp.
    pending: BTreeMap<u64, Pending>,
    seq: Unwrapper,
    ts: Unwrapper,
    /// Timestamp of the last frame handed out (frames older than it are late).
    last_out: Option<u64>,
    /// Extended sequence number of the last packet of the last frame handed out: a frame
    /// that does not follow on from it had a whole frame lost before it.
    last_out_seq: Option<u64>,
    lost: bool,
    max_wait_ms: u64,
}

/// Strips the VP8 payload descriptor. Returns (start of frame, payload) or `None` if the
/// packet is malformed.
fn parse_descriptor(p: &[u8]) -> Option<(bool, &[u8])> {
    let b0 = *p.first()?;
    let x = b0 & 0x80 != 0;
    let s = b0 & 0x10 != 0;
    let pid = b0 & 0x07;
    let mut i = 1;
    if x {
        let b1 = *p.get(i)?;
        i += 1;
        if b1 & 0x80 != 0 {
            // PictureID: 7 or 15 bits.
            let m = *p.get(i)? & 0x80 != 0;
            i += if m { 2 } else { 1 };
        }
        if b1 & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if b1 & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    let payload = p.get(i..)?;
    if payload.is_empty() {
        return None;
    }
    Some((s && pid == 0, payload))
}

impl Vp8Assembler {
    /// How long an incomplete frame may wait for retransmissions; follow the round trip.
    pub fn set_max_wait(&mut self, ms: u64) {
        self.max_wait_ms = ms;
    }

    pub fn new(max_wait_ms: u64) -> Self {
        Vp8Assembler {
            pending: BTreeMap::new(),
            seq: Unwrapper::sequence(),
            ts: Unwrapper::timestamp(),
            last_out: None,
            last_out_seq: None,
            lost: false,
            max_wait_ms,
        }
    }

    /// Adds one RTP packet; returns the frames it completed, in order.
    pub fn push(&mut self, seq: u16, ts: u32, marker: bool, payload: &[u8], now_ms: u64) -> Vec<Vp8Frame> {
        let Some((start, data)) = parse_descriptor(payload) else { return Vec::new() };
        let eseq = self.seq.extend(seq as u64);
        let ets = self.ts.extend(ts as u64);
        if self.last_out.is_some_and(|l| ets <= l) {
            return Vec::new(); // late or duplicate of a frame already out
        }
        let frame =
            self.pending.entry(ets).or_insert_with(|| Pending { packets: BTreeMap::new(), first_seen_ms: now_ms });
        frame.packets.entry(eseq).or_insert((start, marker, data.to_vec()));
        self.drain(now_ms)
    }

    /// Gives up on stale incomplete frames; call now and then even without packets.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Vp8Frame> {
        self.drain(now_ms)
    }

    fn drain(&mut self, now_ms: u64) -> Vec<Vp8Frame> {
        let mut out = Vec::new();
        while let Some((&ts, oldest)) = self.pending.iter().next() {
            let stale = now_ms.saturating_sub(oldest.first_seen_ms) >= self.max_wait_ms;
            if oldest.complete() {
                let first = *oldest.packets.keys().next().expect("complete frames have packets");
                let keyframe =
                    oldest.packets.values().next().is_some_and(|(_, _, d)| d.first().is_some_and(|b| b & 1 == 0));
                let follows = self.last_out_seq.is_none_or(|l| first == l + 1);
                // A frame lost whole (every packet) shows only as a hole in the sequence
                // numbers: wait for its retransmission like for any missing packet, unless
                // this frame needs nothing before it.
                if !(follows || keyframe || stale) {
                    break;
                }
                let f = self.pending.remove(&ts).expect("present");
                self.last_out_seq = f.packets.keys().next_back().copied();
                let data: Vec<u8> = f.packets.into_values().flat_map(|(_, _, d)| d).collect();
                let after_loss = std::mem::take(&mut self.lost) || !follows;
                out.push(Vp8Frame { data, rtp_ts: ts as u32, keyframe, after_loss });
                self.last_out = Some(ts);
                continue;
            }
            let newer_complete = self.pending.values().skip(1).any(Pending::complete);
            // Bound memory: never hold more than a second of frames.
            if (newer_complete && stale) || self.pending.len() > 30 {
                self.pending.remove(&ts);
                self.last_out = Some(ts);
                self.lost = true;
                continue;
            }
            break;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packets of one frame: descriptor with S on the first, marker on the last.
    fn packets(frame: &[u8], per: usize) -> Vec<(Vec<u8>, bool)> {
        let chunks: Vec<&[u8]> = frame.chunks(per).collect();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                // X=1, I=1 with a 15-bit picture id, to exercise descriptor parsing.
                let mut p = vec![if i == 0 { 0x90 } else { 0x80 }, 0x80, 0x80 | 0x12, 0x34];
                p.extend_from_slice(c);
                (p, i == chunks.len() - 1)
            })
            .collect()
    }

    #[test]
    fn frames_come_out_on_their_last_packet() {
        let mut a = Vp8Assembler::new(100);
        let key = vec![0x00u8; 3000]; // P bit 0: keyframe
        let pk = packets(&key, 1000);
        assert!(a.push(10, 1000, pk[0].1, &pk[0].0, 0).is_empty());
        assert!(a.push(11, 1000, pk[1].1, &pk[1].0, 0).is_empty());
        let out = a.push(12, 1000, pk[2].1, &pk[2].0, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data, key);
        assert!(out[0].keyframe && !out[0].after_loss);
    }

    #[test]
    fn reordering_is_fine_and_duplicates_ignored() {
        let mut a = Vp8Assembler::new(100);
        let f = vec![0x01u8; 2500];
        let pk = packets(&f, 1000);
        assert!(a.push(2, 3000, pk[2].1, &pk[2].0, 0).is_empty());
        assert!(a.push(0, 3000, pk[0].1, &pk[0].0, 0).is_empty());
        let out = a.push(1, 3000, pk[1].1, &pk[1].0, 0);
        assert_eq!(out[0].data, f);
        assert!(!out[0].keyframe);
        assert!(a.push(1, 3000, pk[1].1, &pk[1].0, 0).is_empty(), "duplicate after output");
    }

    #[test]
    fn a_lost_packet_gives_up_the_frame_and_flags_the_next() {
        let mut a = Vp8Assembler::new(100);
        let f1 = packets(&[0x01u8; 2000], 1000);
        let f2 = packets(&[0x01u8; 500], 1000);
        a.push(0, 0, f1[0].1, &f1[0].0, 0); // seq 1 lost
        assert!(a.push(2, 3000, f2[0].1, &f2[0].0, 10).is_empty(), "waits for a retransmission");
        let out = a.poll(150);
        assert_eq!(out.len(), 1);
        assert!(out[0].after_loss, "the frame after a lost one is flagged");
        // The late retransmission of the lost packet is ignored.
        assert!(a.push(1, 0, f1[1].1, &f1[1].0, 160).is_empty());
    }

    #[test]
    fn a_frame_lost_whole_is_waited_for_then_given_up() {
        let mut a = Vp8Assembler::new(100);
        let one = |n: u8| packets(&[0x01u8, n], 1000).remove(0).0;
        assert_eq!(a.push(0, 0, true, &one(0), 0).len(), 1);
        // Frame 1 (seq 1) is missing entirely; frame 2 is complete but must not jump it.
        assert!(a.push(2, 6000, true, &one(2), 10).is_empty(), "holds for the retransmission");
        let out = a.push(1, 3000, true, &one(1), 50);
        assert_eq!(out.iter().map(|f| (f.rtp_ts, f.after_loss)).collect::<Vec<_>>(), [(3000, false), (6000, false)]);
        // Frame 4 lost for good: frame 5 goes out after the wait, flagged.
        assert!(a.push(4, 12000, true, &one(5), 200).is_empty());
        assert!(a.poll(250).is_empty());
        let out = a.poll(300);
        assert_eq!(out.iter().map(|f| (f.rtp_ts, f.after_loss)).collect::<Vec<_>>(), [(12000, true)]);
        // A keyframe after a hole needs nothing before it.
        let key = packets(&[0x00u8; 10], 1000).remove(0).0;
        assert!(a.push(9, 20000, true, &key, 400)[0].keyframe);
    }

    #[test]
    fn wraps_and_garbage() {
        let mut a = Vp8Assembler::new(100);
        let f = packets(&[0x00u8; 1500], 1000);
        a.push(65535, u32::MAX - 10, f[0].1, &f[0].0, 0);
        assert_eq!(a.push(0, u32::MAX - 10, f[1].1, &f[1].0, 0).len(), 1);
        let g = packets(&[0x01u8; 10], 1000);
        assert_eq!(a.push(1, 2990, g[0].1, &g[0].0, 0).len(), 1, "timestamp wrapped forward");
        assert!(a.push(2, 6000, true, &[], 0).is_empty());
        assert!(a.push(3, 6000, true, &[0x80], 0).is_empty(), "truncated descriptor");
    }
}
