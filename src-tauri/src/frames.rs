//! Decoded frames on their way to the page. Each tile (a remote peer, or `self`) gets frames
//! scaled in Rust to the size the tile is drawn at, kept in that tile's mailbox until the
//! page's frame stream (frame_stream.rs) can take one. At most `IN_FLIGHT` frames per tile
//! are on their way: until the page says it drew one, a newer frame replaces the waiting one,
//! so a slow page never slows capture or decoding, and the page is never sent a backlog it
//! could not show.
//!
//! Wire format of one message (little endian):
//! `u8 format | u8 id length | id (UTF-8) | u16 width | u16 height | u32 frame number
//! (0xFFFFFFFF if unstamped) | pixels`, where format 1 is I420 (`Y | U | V`, planes packed,
//! chroma at half size rounded up) for pages that convert on the GPU, and format 2 is RGBA
//! (converted here, with SIMD) for pages that draw with a 2D canvas. The format byte's top
//! bit says the tile is shown at half rate (`REDUCED`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use confab_engine::frame::I420Frame;
use confab_engine::{DecodedFrame, FrameSink};
use confab_proto::PeerId;
use tokio::sync::Notify;

/// What the page wants its pixels as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PixelFormat {
    I420 = 1,
    Rgba = 2,
}

impl PixelFormat {
    pub fn parse(s: &str) -> Option<PixelFormat> {
        match s {
            "i420" => Some(PixelFormat::I420),
            "rgba" => Some(PixelFormat::Rgba),
            _ => None,
        }
    }
}

/// Frames per tile sent and not yet drawn. One would do if the way to the page and back (the
/// app, WebKit's network process, the page's next refresh, the ack) were always shorter than
/// a frame; on a busy machine it is not, and a second frame already at the page is drawn at
/// the next refresh instead of a round trip later. (Not shown to matter in the benchmark: with
/// 3 remote tiles on 2 cores the peers starved the machine, and 1 or 2 both drew ~9 fps.)
const IN_FLIGHT: u8 = 2;

/// With this many tiles on screen (self view included), small tiles of people who are not
/// speaking get every other frame: 15 of 30 fps. The speaking one stays at full rate.
const MANY_TILES: usize = 4;
/// Smaller than this (device pixels) is small: a tile of a 2x2 grid in the default window.
const SMALL_TILE: u32 = 640 * 360;
/// The format byte's flag for a tile shown at half rate.
pub const REDUCED: u8 = 0x80;

/// Largest size sent for a tile whose size the page has not reported yet.
const DEFAULT_TILE: (u32, u32) = (640, 360);

#[derive(Default)]
struct Tile {
    /// Size the tile is drawn at, in device pixels.
    size: Option<(u32, u32)>,
    in_flight: u8,
    /// The newest frame not yet sent (already scaled and encoded).
    waiting: Option<Vec<u8>>,
    /// When it was offered, to send the oldest first when several tiles are ready.
    waiting_since: u64,
    sent: u64,
    replaced: u64,
    speaking: bool,
    /// Frames that came for this tile, to keep every other one at half rate.
    arrived: u64,
}

/// What to do with a frame that just came for a tile.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Not shown (half rate): not even scaled.
    Skip,
    /// Scale it to fit `target`; `reduced` if the tile is at half rate.
    Show { target: (u32, u32), reduced: bool },
}

/// Every tile's newest frame and whether the page is ready for another: plain data.
#[derive(Default)]
pub struct Mailboxes {
    tiles: HashMap<String, Tile>,
    offers: u64,
}

impl Mailboxes {
    /// A frame came for `tile`: whether to show it, and how big.
    pub fn admit(&mut self, tile: &str) -> Admit {
        let many = self.tiles.len() >= MANY_TILES;
        let t = self.tiles.entry(tile.to_string()).or_default();
        let target = t.size.unwrap_or(DEFAULT_TILE);
        let small = target.0 * target.1 < SMALL_TILE;
        let reduced = many && small && !t.speaking && tile != confab_engine::SELF_TILE;
        t.arrived += 1;
        if reduced && t.arrived.is_multiple_of(2) {
            return Admit::Skip;
        }
        Admit::Show { target, reduced }
    }

    /// Who is speaking now (from the call's voice levels).
    pub fn set_speaking(&mut self, tile: &str, speaking: bool) {
        if let Some(t) = self.tiles.get_mut(tile) {
            t.speaking = speaking;
        }
    }

    pub fn set_size(&mut self, tile: &str, width: u32, height: u32) {
        self.tiles.entry(tile.to_string()).or_default().size = Some((width.clamp(16, 3840), height.clamp(16, 2160)));
    }

    /// A new frame for `tile`. It replaces one still waiting, which then never reaches the
    /// page (counted as replaced). True if the page can take it now.
    pub fn offer(&mut self, tile: &str, msg: Vec<u8>) -> bool {
        self.offers += 1;
        let t = self.tiles.entry(tile.to_string()).or_default();
        if t.waiting.replace(msg).is_some() {
            t.replaced += 1;
        }
        t.waiting_since = self.offers;
        t.in_flight < IN_FLIGHT
    }

    /// The frame to send next: the longest-waiting one of the tiles the page is ready for.
    pub fn take_ready(&mut self) -> Option<Vec<u8>> {
        let t = self
            .tiles
            .values_mut()
            .filter(|t| t.in_flight < IN_FLIGHT && t.waiting.is_some())
            .min_by_key(|t| t.waiting_since)?;
        t.in_flight += 1;
        t.sent += 1;
        t.waiting.take()
    }

    /// The page drew (or threw away) a frame of `tile` it had.
    pub fn drawn(&mut self, tile: &str) {
        if let Some(t) = self.tiles.get_mut(tile) {
            t.in_flight = t.in_flight.saturating_sub(1);
        }
    }

    /// The page is gone (reloaded, or its stream broke): what it had in flight is lost and
    /// the next page starts ready for every tile.
    pub fn page_gone(&mut self) {
        for t in self.tiles.values_mut() {
            t.in_flight = 0;
        }
    }

    /// Forgets a tile (its peer left).
    pub fn remove(&mut self, tile: &str) {
        self.tiles.remove(tile);
    }

    /// A new call: the last call's people are gone (a call that ended tells no one left), and
    /// must not count as tiles on screen. Our own view stays.
    pub fn forget_peers(&mut self) {
        self.tiles.retain(|k, _| k == confab_engine::SELF_TILE);
    }

    /// Per tile: frames sent to the page, and frames replaced by a newer one before the page
    /// was ready for them (dropped on the way to the screen).
    pub fn counts(&self) -> HashMap<String, (u64, u64)> {
        self.tiles.iter().map(|(k, t)| (k.clone(), (t.sent, t.replaced))).collect()
    }
}

/// Where every decoded frame goes (the preview's and the call's): scales it for its tile and
/// leaves it in the tile's mailbox for the page's stream.
#[derive(Default)]
pub struct FrameHub {
    boxes: Mutex<Mailboxes>,
    /// Told whenever a frame the page can take arrives.
    pub ready: Notify,
    /// The page's `PixelFormat` (I420 until it says).
    format: AtomicU8,
}

impl FrameHub {
    pub fn set_format(&self, format: PixelFormat) {
        self.format.store(format as u8, Ordering::Relaxed);
    }

    pub fn format(&self) -> PixelFormat {
        if self.format.load(Ordering::Relaxed) == PixelFormat::Rgba as u8 {
            PixelFormat::Rgba
        } else {
            PixelFormat::I420
        }
    }

    pub fn set_tile_size(&self, tile: &str, width: u32, height: u32) {
        self.boxes.lock().unwrap().set_size(tile, width, height);
    }

    pub fn take_ready(&self) -> Option<Vec<u8>> {
        self.boxes.lock().unwrap().take_ready()
    }

    pub fn drawn(&self, tile: &str) {
        let mut boxes = self.boxes.lock().unwrap();
        boxes.drawn(tile);
        if boxes.tiles.get(tile).is_some_and(|t| t.waiting.is_some()) {
            self.ready.notify_one();
        }
    }

    pub fn page_gone(&self) {
        self.boxes.lock().unwrap().page_gone();
        self.ready.notify_one();
    }

    pub fn remove(&self, tile: &str) {
        self.boxes.lock().unwrap().remove(tile);
    }

    pub fn counts(&self) -> HashMap<String, (u64, u64)> {
        self.boxes.lock().unwrap().counts()
    }

    pub fn set_speaking(&self, tile: &str, speaking: bool) {
        self.boxes.lock().unwrap().set_speaking(tile, speaking);
    }

    pub fn forget_peers(&self) {
        self.boxes.lock().unwrap().forget_peers();
    }

    pub fn push(&self, tile: &str, frame: &I420Frame, frame_no: Option<u32>) {
        let Admit::Show { target, reduced } = self.boxes.lock().unwrap().admit(tile) else { return };
        let (w, h) = fit(frame.width, frame.height, target);
        // Scaling happens here, on the decoder's (or camera's) thread, outside the lock.
        let scaled;
        let frame = if (w, h) == (frame.width, frame.height) {
            frame
        } else {
            scaled = frame.scaled(w, h);
            &scaled
        };
        let mut msg = encode(tile, frame, frame_no, self.format());
        if reduced {
            msg[0] |= REDUCED;
        }
        if self.boxes.lock().unwrap().offer(tile, msg) {
            self.ready.notify_one();
        }
    }
}

impl FrameSink for FrameHub {
    fn on_frame(&self, peer: &PeerId, f: &DecodedFrame) {
        self.push(peer.as_str(), &f.frame, f.stamp.map(|s| s.frame_no));
    }
}

/// The largest even size with the frame's aspect ratio that fits `target` and does not
/// exceed the frame itself (upscaling is the GPU's job).
pub fn fit(w: u32, h: u32, target: (u32, u32)) -> (u32, u32) {
    let scale = (target.0 as f64 / w as f64).min(target.1 as f64 / h as f64).min(1.0);
    let even = |v: f64| ((v as u32) & !1).max(2);
    (even(w as f64 * scale), even(h as f64 * scale))
}

pub fn encode(tile: &str, f: &I420Frame, frame_no: Option<u32>, format: PixelFormat) -> Vec<u8> {
    let id = &tile.as_bytes()[..tile.len().min(255)];
    let header = 2 + id.len() + 8;
    let pixels = match format {
        PixelFormat::I420 => f.data.len(),
        PixelFormat::Rgba => f.width as usize * f.height as usize * 4,
    };
    let mut out = Vec::with_capacity(header + pixels);
    out.push(format as u8);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
    out.extend_from_slice(&(f.width as u16).to_le_bytes());
    out.extend_from_slice(&(f.height as u16).to_le_bytes());
    out.extend_from_slice(&frame_no.unwrap_or(u32::MAX).to_le_bytes());
    match format {
        PixelFormat::I420 => out.extend_from_slice(&f.data),
        PixelFormat::Rgba => f.append_rgba(&mut out),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_aspect_and_never_upscales() {
        assert_eq!(fit(1280, 720, (640, 640)), (640, 360));
        assert_eq!(fit(1280, 720, (4000, 4000)), (1280, 720));
        assert_eq!(fit(640, 360, (300, 100)), (176, 100));
    }

    #[test]
    fn wire_format() {
        let f = I420Frame::new(4, 2);
        let m = encode("ab", &f, Some(7), PixelFormat::I420);
        assert_eq!(&m[..4], &[1, 2, b'a', b'b']);
        assert_eq!(&m[4..8], &[4, 0, 2, 0]);
        assert_eq!(&m[8..12], &7u32.to_le_bytes());
        assert_eq!(m.len(), 12 + 8 + 2 + 2);
    }

    #[test]
    fn rgba_is_converted_here() {
        let mut f = I420Frame::new(4, 2);
        // Limited-range white and black: Y 235 and 16, no colour.
        let (y, u, v) = f.planes_mut();
        y[..4].fill(235);
        y[4..].fill(16);
        u.fill(128);
        v.fill(128);
        let m = encode("x", &f, None, PixelFormat::Rgba);
        assert_eq!(m[0], 2);
        assert_eq!(&m[7..11], &u32::MAX.to_le_bytes());
        let px = &m[11..];
        assert_eq!(px.len(), 4 * 2 * 4);
        for p in px[..16].chunks(4) {
            assert!(p[0] >= 250 && p[1] >= 250 && p[2] >= 250 && p[3] == 255, "{p:?}");
        }
        for p in px[16..].chunks(4) {
            assert!(p[0] <= 5 && p[1] <= 5 && p[2] <= 5 && p[3] == 255, "{p:?}");
        }
    }

    #[test]
    fn frames_in_flight_are_bounded_and_the_newest_waits() {
        let mut m = Mailboxes::default();
        assert!(m.offer("a", vec![1]));
        assert_eq!(m.take_ready(), Some(vec![1]));
        assert!(m.offer("a", vec![2]));
        assert_eq!(m.take_ready(), Some(vec![2]));
        // Neither drawn yet: two more come, the first of them is replaced.
        assert!(!m.offer("a", vec![3]));
        assert!(!m.offer("a", vec![4]));
        assert_eq!(m.take_ready(), None);
        m.drawn("a");
        assert_eq!(m.take_ready(), Some(vec![4]));
        assert_eq!(m.take_ready(), None);
        assert_eq!(m.counts()["a"], (3, 1));
    }

    #[test]
    fn tiles_do_not_wait_for_each_other_and_the_oldest_goes_first() {
        let mut m = Mailboxes::default();
        m.offer("a", vec![1]);
        m.offer("b", vec![2]);
        m.offer("c", vec![3]);
        assert_eq!(m.take_ready(), Some(vec![1]));
        m.offer("a", vec![4]);
        assert_eq!(m.take_ready(), Some(vec![2]));
        assert_eq!(m.take_ready(), Some(vec![3]));
        assert_eq!(m.take_ready(), Some(vec![4]));
        m.offer("a", vec![5]);
        assert_eq!(m.take_ready(), None, "a has all it may have in flight");
        m.drawn("a");
        assert_eq!(m.take_ready(), Some(vec![5]));
    }

    #[test]
    fn a_new_page_is_ready_for_every_tile() {
        let mut m = Mailboxes::default();
        for n in 0..IN_FLIGHT {
            m.offer("a", vec![n]);
            m.take_ready();
        }
        m.offer("a", vec![9]);
        assert_eq!(m.take_ready(), None);
        m.page_gone();
        assert_eq!(m.take_ready(), Some(vec![9]));
    }

    fn shown(m: &mut Mailboxes, tile: &str, n: usize) -> Vec<bool> {
        (0..n).map(|_| matches!(m.admit(tile), Admit::Show { .. })).collect()
    }

    #[test]
    fn with_many_tiles_small_quiet_ones_get_every_other_frame() {
        let mut m = Mailboxes::default();
        for t in ["self", "a", "b"] {
            m.set_size(t, 576, 323);
        }
        assert_eq!(shown(&mut m, "a", 4), [true; 4], "three tiles are not many");
        m.set_size("c", 576, 323);
        assert_eq!(m.admit("a"), Admit::Show { target: (576, 323), reduced: true });
        assert_eq!(shown(&mut m, "a", 4), [false, true, false, true]);
        assert_eq!(shown(&mut m, "self", 4), [true; 4], "our own view stays at full rate");
        m.set_speaking("a", true);
        assert_eq!(shown(&mut m, "a", 4), [true; 4], "the speaker stays at full rate");
        m.set_speaking("a", false);
        m.set_size("b", 1280, 720);
        assert_eq!(shown(&mut m, "b", 4), [true; 4], "a big tile stays at full rate");
        m.remove("c");
        assert_eq!(shown(&mut m, "a", 4), [true; 4]);
        m.set_size("c", 576, 323);
        m.forget_peers();
        m.set_size("d", 576, 323);
        assert_eq!(shown(&mut m, "d", 4), [true; 4], "the last call's people are not on screen");
        assert_eq!(m.admit("self"), Admit::Show { target: (576, 323), reduced: false }, "our view keeps its size");
    }

    #[test]
    fn sizes_survive_and_removed_tiles_are_forgotten() {
        let mut m = Mailboxes::default();
        assert_eq!(m.admit("a"), Admit::Show { target: DEFAULT_TILE, reduced: false });
        m.set_size("a", 5000, 4);
        assert_eq!(m.admit("a"), Admit::Show { target: (3840, 16), reduced: false });
        m.offer("a", vec![1]);
        m.remove("a");
        assert_eq!(m.take_ready(), None);
        assert!(m.counts().is_empty());
    }
}
