//! Decoded frames to the webview. Each tile (a remote peer, or `self`) gets frames scaled in
//! Rust to the size the tile is shown at, sent through a Tauri channel as raw bytes. At most
//! one frame per tile is in flight: until the page says it drew it (`frame_done`), newer
//! frames replace the waiting one, so a slow page never slows capture or decoding.
//!
//! Wire format of one message (little endian):
//! `u8 version (1) | u8 id length | id (UTF-8) | u16 width | u16 height | u32 frame number
//! (0xFFFFFFFF if unstamped) | Y | U | V` with planes packed, chroma at half size rounded up.

use std::collections::HashMap;
use std::sync::Mutex;

use confab_engine::frame::I420Frame;
use confab_engine::{DecodedFrame, FrameSink};
use confab_proto::PeerId;
use tauri::ipc::{Channel, InvokeResponseBody};

/// Largest size sent for a tile whose size the page has not reported yet.
const DEFAULT_TILE: (u32, u32) = (640, 360);

#[derive(Default)]
struct Tile {
    /// Size the tile is drawn at, in device pixels.
    size: Option<(u32, u32)>,
    in_flight: bool,
    /// The newest frame that came while one was in flight (already scaled).
    waiting: Option<Vec<u8>>,
    sent: u64,
    replaced: u64,
}

pub struct FrameForwarder {
    channel: Channel<InvokeResponseBody>,
    tiles: Mutex<HashMap<String, Tile>>,
}

impl FrameForwarder {
    pub fn new(channel: Channel<InvokeResponseBody>) -> Self {
        FrameForwarder { channel, tiles: Mutex::new(HashMap::new()) }
    }

    /// The page reports how big a tile is drawn.
    pub fn set_tile_size(&self, tile: &str, width: u32, height: u32) {
        let mut tiles = self.tiles.lock().unwrap();
        tiles.entry(tile.to_string()).or_default().size = Some((width.clamp(16, 3840), height.clamp(16, 2160)));
    }

    /// The page drew the last frame of `tile`: send the waiting one, if any.
    pub fn frame_done(&self, tile: &str) {
        let next = {
            let mut tiles = self.tiles.lock().unwrap();
            let Some(t) = tiles.get_mut(tile) else { return };
            match t.waiting.take() {
                Some(msg) => {
                    t.sent += 1;
                    Some(msg)
                }
                None => {
                    t.in_flight = false;
                    None
                }
            }
        };
        if let Some(msg) = next {
            let _ = self.channel.send(InvokeResponseBody::Raw(msg));
        }
    }

    /// Per tile: frames sent to the page, and frames replaced by a newer one before the page
    /// was ready for them (dropped on the way to the screen).
    pub fn counts(&self) -> HashMap<String, (u64, u64)> {
        self.tiles.lock().unwrap().iter().map(|(k, t)| (k.clone(), (t.sent, t.replaced))).collect()
    }

    /// Forgets a tile (its peer left).
    pub fn remove(&self, tile: &str) {
        self.tiles.lock().unwrap().remove(tile);
    }

    fn push(&self, tile: &str, frame: &I420Frame, frame_no: Option<u32>) {
        let target = self.tiles.lock().unwrap().get(tile).and_then(|t| t.size).unwrap_or(DEFAULT_TILE);
        let (w, h) = fit(frame.width, frame.height, target);
        let scaled;
        let frame = if (w, h) == (frame.width, frame.height) {
            frame
        } else {
            scaled = frame.scaled(w, h);
            &scaled
        };
        let msg = encode(tile, frame, frame_no);
        let send_now = {
            let mut tiles = self.tiles.lock().unwrap();
            let t = tiles.entry(tile.to_string()).or_default();
            if t.in_flight {
                if t.waiting.replace(msg.clone()).is_some() {
                    t.replaced += 1;
                }
                false
            } else {
                t.in_flight = true;
                t.sent += 1;
                true
            }
        };
        if send_now {
            let _ = self.channel.send(InvokeResponseBody::Raw(msg));
        }
    }
}

impl FrameSink for FrameForwarder {
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

pub fn encode(tile: &str, f: &I420Frame, frame_no: Option<u32>) -> Vec<u8> {
    let id = tile.as_bytes();
    let mut out = Vec::with_capacity(2 + id.len() + 8 + f.data.len());
    out.push(1);
    out.push(id.len().min(255) as u8);
    out.extend_from_slice(&id[..id.len().min(255)]);
    out.extend_from_slice(&(f.width as u16).to_le_bytes());
    out.extend_from_slice(&(f.height as u16).to_le_bytes());
    out.extend_from_slice(&frame_no.unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&f.data);
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
        let m = encode("ab", &f, Some(7));
        assert_eq!(&m[..4], &[1, 2, b'a', b'b']);
        assert_eq!(&m[4..8], &[4, 0, 2, 0]);
        assert_eq!(&m[8..12], &7u32.to_le_bytes());
        assert_eq!(m.len(), 12 + 8 + 2 + 2);
    }
}
