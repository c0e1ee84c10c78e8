//! Extends RTP's wrapping counters (16-bit sequence numbers, 32-bit timestamps) to 64 bits,
//! so that the audio jitter buffer, the VP8 assembler and the video playout clock can order
//! and subtract them without thinking about wraps.

/// Extends one wrapping counter. Each value is placed in the 64-bit extension nearest the
/// highest value seen so far, so a packet reordered across a wrap lands before it.
#[derive(Clone, Copy, Debug)]
pub struct Unwrapper {
    bits: u32,
    highest: Option<u64>,
}

impl Unwrapper {
    /// For RTP sequence numbers.
    pub const fn sequence() -> Self {
        Unwrapper { bits: 16, highest: None }
    }

    /// For RTP timestamps.
    pub const fn timestamp() -> Self {
        Unwrapper { bits: 32, highest: None }
    }

    /// The extended value of `value`. The first value lands one span up, so that a packet
    /// reordered before it still has room below.
    pub fn extend(&mut self, value: u64) -> u64 {
        let span = 1u64 << self.bits;
        let ext = match self.highest {
            None => value + span,
            Some(h) => {
                let base = h & !(span - 1);
                [base.wrapping_sub(span) | value, base | value, (base + span) | value]
                    .into_iter()
                    .min_by_key(|c| c.abs_diff(h))
                    .expect("three candidates")
            }
        };
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        ext
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_wrap_forward_and_reorder_back() {
        let mut u = Unwrapper::sequence();
        let a = u.extend(65_534);
        assert_eq!(u.extend(65_535), a + 1);
        assert_eq!(u.extend(1), a + 3, "across the wrap");
        assert_eq!(u.extend(0), a + 2, "reordered across the wrap");
        assert_eq!(u.extend(65_535), a + 1, "late from before the wrap");
    }

    #[test]
    fn timestamps_wrap() {
        let mut u = Unwrapper::timestamp();
        let a = u.extend(u32::MAX as u64 - 10);
        assert_eq!(u.extend(5), a + 16);
    }

    #[test]
    fn the_first_value_leaves_room_below() {
        let mut u = Unwrapper::sequence();
        let a = u.extend(0);
        assert_eq!(u.extend(65_535), a - 1);
    }
}
