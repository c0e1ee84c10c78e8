//! The frame stamp: a frame number and capture time drawn into the top-left of a picture as
//! black and white blocks, big enough to survive VP8 at ordinary bitrates. A receiver reads
//! it back from the decoded picture to measure glass-to-glass latency and count gaps with
//! no side channel. A CRC rejects stamps damaged by coding artefacts.

use crate::frame::I420Frame;

/// What a stamp carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStamp {
    /// Counts frames from 0 at the source.
    pub frame_no: u32,
    /// Capture time, milliseconds since the Unix epoch (48 bits are kept).
    pub capture_ms: u64,
}

/// Blocks per row and rows of blocks: 96 bits = 32 frame number + 48 time + 16 CRC.
const COLS: u32 = 48;
const ROWS: u32 = 2;
const WHITE: u8 = 235;
const BLACK: u8 = 16;

/// Side of one block in pixels for a picture `width` wide.
pub fn block_size(width: u32) -> u32 {
    ((width / COLS) & !1).max(4)
}

/// The smallest picture a stamp fits in.
pub fn fits(width: u32, height: u32) -> bool {
    block_size(width) * COLS <= width && block_size(width) * ROWS <= height
}

impl FrameStamp {
    fn bits(&self) -> [bool; (COLS * ROWS) as usize] {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&self.frame_no.to_be_bytes());
        bytes[4..10].copy_from_slice(&self.capture_ms.to_be_bytes()[2..]);
        let crc = crc16(&bytes[..10]);
        bytes[10..].copy_from_slice(&crc.to_be_bytes());
        let mut bits = [false; (COLS * ROWS) as usize];
        for (i, b) in bits.iter_mut().enumerate() {
            *b = bytes[i / 8] & (0x80 >> (i % 8)) != 0;
        }
        bits
    }

    /// Draws the stamp into `frame` (luma blocks, neutral chroma under them).
    pub fn draw(&self, frame: &mut I420Frame) {
        if !fits(frame.width, frame.height) {
            return;
        }
        let b = block_size(frame.width) as usize;
        let w = frame.width as usize;
        let cw = frame.chroma_width();
        let bits = self.bits();
        let (y, u, v) = frame.planes_mut();
        for (i, bit) in bits.iter().enumerate() {
            let (bx, by) = (i % COLS as usize, i / COLS as usize);
            let value = if *bit { WHITE } else { BLACK };
            for row in by * b..(by + 1) * b {
                y[row * w + bx * b..row * w + (bx + 1) * b].fill(value);
            }
        }
        for row in 0..(ROWS as usize * b).div_ceil(2) {
            let end = (COLS as usize * b).div_ceil(2);
            u[row * cw..row * cw + end].fill(128);
            v[row * cw..row * cw + end].fill(128);
        }
    }

    /// Reads a stamp back, or `None` if there is none or it is damaged.
    pub fn read(frame: &I420Frame) -> Option<FrameStamp> {
        if !fits(frame.width, frame.height) {
            return None;
        }
        let b = block_size(frame.width) as usize;
        let w = frame.width as usize;
        let y = frame.y();
        let inset = b / 4;
        let mut bytes = [0u8; 12];
        for i in 0..(COLS * ROWS) as usize {
            let (bx, by) = (i % COLS as usize, i / COLS as usize);
            let mut sum = 0u32;
            let mut n = 0u32;
            for row in by * b + inset..(by + 1) * b - inset {
                for col in bx * b + inset..(bx + 1) * b - inset {
                    sum += y[row * w + col] as u32;
                    n += 1;
                }
            }
            if sum / n.max(1) > 128 {
                bytes[i / 8] |= 0x80 >> (i % 8);
            }
        }
        let crc = u16::from_be_bytes([bytes[10], bytes[11]]);
        if crc != crc16(&bytes[..10]) {
            return None;
        }
        let frame_no = u32::from_be_bytes(bytes[..4].try_into().ok()?);
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&bytes[4..10]);
        Some(FrameStamp { frame_no, capture_ms: u64::from_be_bytes(ms) })
    }
}

/// CRC-16/CCITT-FALSE.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in data {
        crc ^= (byte as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc16(b"123456789"), 0x29B1);
    }

    #[test]
    fn round_trip_on_raw_frames_of_many_sizes() {
        for (w, h) in [(320, 180), (640, 360), (1280, 720), (1920, 1080), (200, 20)] {
            let mut f = I420Frame::new(w, h);
            let s = FrameStamp { frame_no: 0xDEAD_BEEF, capture_ms: 1_764_000_000_123 };
            s.draw(&mut f);
            assert_eq!(FrameStamp::read(&f), Some(s), "{w}x{h}");
        }
    }

    #[test]
    fn damage_is_detected_not_misread() {
        let mut f = I420Frame::new(640, 360);
        FrameStamp { frame_no: 7, capture_ms: 99 }.draw(&mut f);
        let b = block_size(640) as usize;
        // Flip one block.
        let (y, _, _) = f.planes_mut();
        for row in 0..b {
            for col in 0..b {
                y[row * 640 + 5 * b + col] ^= 0xFF;
            }
        }
        assert_eq!(FrameStamp::read(&f), None);
        assert_eq!(FrameStamp::read(&I420Frame::new(640, 360)), None, "a blank frame has no stamp");
    }
}
