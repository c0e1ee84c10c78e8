//! The screen as a video source: X11, one monitor (RandR) or the whole root window, read
//! through MIT-SHM (the X server writes the picture into memory we share, no copy through
//! the socket) and converted BGRX -> I420 with the `yuv` crate's SIMD kernels. An X server
//! without MIT-SHM (a remote display) is read with plain GetImage. Wayland's portal is not
//! here yet: without an X display, opening says so.

use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::randr::ConnectionExt as _;
use x11rb::protocol::shm::ConnectionExt as _;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, Window};
use x11rb::rust_connection::RustConnection;
use yuv::{YuvConversionMode, YuvRange, YuvStandardMatrix};

use super::{CapturedFrame, DeviceError, VideoSource};
use crate::frame::I420Frame;

const KIND: &str = "screen";

/// A screen share keeps its resolution and gives up frame rate: at most this many a second.
pub const MAX_FPS: u32 = 15;
/// A screen that does not change is sent this often (a receiver that lost a frame, or just
/// joined, gets a picture within this time).
const STILL_EVERY: Duration = Duration::from_secs(1);

/// A part of the root window: a monitor, or all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    pub x: i16,
    pub y: i16,
    pub width: u16,
    pub height: u16,
}

impl Area {
    /// Even sizes (I420 halves them), at least 2x2.
    fn even(self) -> Area {
        Area { width: (self.width & !1).max(2), height: (self.height & !1).max(2), ..self }
    }
}

/// Monitor `n` (0 is the first RandR lists), or the whole screen when there is no `n` or
/// RandR lists none.
pub fn pick_area(monitors: &[Area], root: Area, n: Option<u32>) -> Result<Area, String> {
    match n {
        None => Ok(root.even()),
        Some(_) if monitors.is_empty() && n == Some(0) => Ok(root.even()),
        Some(i) => monitors
            .get(i as usize)
            .map(|a| a.even())
            .ok_or_else(|| format!("there is no screen {i} (this display has {})", monitors.len().max(1))),
    }
}

/// Shared memory the X server writes into; detached and freed on drop.
struct ShmSegment {
    addr: *mut u8,
    len: usize,
}

// The segment is only touched by the thread that owns the capture.
unsafe impl Send for ShmSegment {}

impl ShmSegment {
    fn new(len: usize) -> Option<(ShmSegment, u32)> {
        // SAFETY: a private segment of `len` bytes; the pointer is checked before use and
        // detached in Drop. IPC_RMID right after the server attached makes the kernel free
        // it when the last of us and the server detach, even if we crash.
        unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600);
            if id < 0 {
                return None;
            }
            let addr = libc::shmat(id, std::ptr::null(), 0);
            if addr as isize == -1 {
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                return None;
            }
            Some((ShmSegment { addr: addr as *mut u8, len }, id as u32))
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `addr` maps `len` bytes for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }
}

impl Drop for ShmSegment {
    fn drop(&mut self) {
        // SAFETY: detaching what shmat gave us, once.
        unsafe {
            libc::shmdt(self.addr as *const libc::c_void);
        }
    }
}

enum Reader {
    Shm { seg: u32, mem: ShmSegment },
    GetImage,
}

pub struct ScreenCapture {
    conn: RustConnection,
    root: Window,
    area: Area,
    reader: Reader,
    period: Duration,
    next: Option<Instant>,
    name: String,
    /// The last picture sent (BGRX) and when, to skip the ones that are the same.
    last: Vec<u8>,
    last_sent: Option<Instant>,
}

fn failed(reason: impl std::fmt::Display) -> DeviceError {
    DeviceError::Failed { kind: KIND, name: "X11 display".into(), reason: reason.to_string() }
}

impl ScreenCapture {
    /// Opens screen `n` (see [`pick_area`]) of the X display in `$DISPLAY`, to be read `fps`
    /// times a second.
    pub fn open(n: Option<u32>, fps: u32) -> Result<ScreenCapture, DeviceError> {
        let (conn, screen) = x11rb::connect(None).map_err(|e| DeviceError::Unavailable {
            kind: KIND,
            name: std::env::var("DISPLAY").unwrap_or_else(|_| "(no DISPLAY)".into()),
            reason: format!(
                "no X11 display to share ({e}); on Wayland, screen sharing through the desktop portal is not supported yet"
            ),
        })?;
        let s = &conn.setup().roots[screen];
        let (root, depth) = (s.root, s.root_depth);
        let root_area = Area { x: 0, y: 0, width: s.width_in_pixels, height: s.height_in_pixels };
        // Only 24/32-bit colour reads as BGRX; anything else is a very old setup.
        let bpp = conn.setup().pixmap_formats.iter().find(|f| f.depth == depth).map(|f| f.bits_per_pixel);
        if !(depth == 24 || depth == 32) || bpp != Some(32) {
            return Err(DeviceError::Unsupported {
                kind: KIND,
                name: "X11 display".into(),
                reason: format!("a {depth}-bit display ({bpp:?} bits per pixel); confab reads 24-bit colour"),
            });
        }
        let monitors: Vec<Area> = conn
            .randr_get_monitors(root, true)
            .ok()
            .and_then(|c| c.reply().ok())
            .map(|r| r.monitors.iter().map(|m| Area { x: m.x, y: m.y, width: m.width, height: m.height }).collect())
            .unwrap_or_default();
        let area = pick_area(&monitors, root_area, n)
            .map_err(|reason| DeviceError::NotFound { kind: KIND, id: format!("{} ({reason})", n.unwrap_or(0)) })?;
        let len = area.width as usize * area.height as usize * 4;
        let reader = shm_reader(&conn, len).unwrap_or(Reader::GetImage);
        let how = if matches!(reader, Reader::Shm { .. }) { "MIT-SHM" } else { "GetImage" };
        tracing::info!(w = area.width, h = area.height, x = area.x, y = area.y, how, "screen capture");
        Ok(ScreenCapture {
            conn,
            root,
            area,
            reader,
            period: Duration::from_secs_f64(1.0 / fps.clamp(1, 60) as f64),
            next: None,
            last: Vec::new(),
            last_sent: None,
            name: format!("Screen {} ({}x{})", n.unwrap_or(0), area.width, area.height),
        })
    }

    /// One picture of the area, converted; `None` if it is the one sent last and that was
    /// less than `STILL_EVERY` ago.
    fn grab(&mut self) -> Result<Option<I420Frame>, DeviceError> {
        let a = self.area;
        let z = ImageFormat::Z_PIXMAP.into();
        let owned;
        let bgrx: &[u8] = match &self.reader {
            Reader::Shm { seg, mem } => {
                self.conn
                    .shm_get_image(self.root, a.x, a.y, a.width, a.height, !0, z, *seg, 0)
                    .map_err(failed)?
                    .reply()
                    .map_err(failed)?;
                mem.bytes()
            }
            Reader::GetImage => {
                owned = self
                    .conn
                    .get_image(ImageFormat::Z_PIXMAP, self.root, a.x, a.y, a.width, a.height, !0)
                    .map_err(failed)?
                    .reply()
                    .map_err(failed)?
                    .data;
                &owned
            }
        };
        let now = Instant::now();
        let fresh = self.last_sent.is_none_or(|t| now.duration_since(t) >= STILL_EVERY);
        if !fresh && bgrx == self.last.as_slice() {
            return Ok(None);
        }
        self.last.clear();
        self.last.extend_from_slice(bgrx);
        self.last_sent = Some(now);
        bgrx_to_i420(bgrx, a.width as u32, a.height as u32).map(Some).map_err(failed)
    }
}

fn shm_reader(conn: &RustConnection, len: usize) -> Option<Reader> {
    conn.shm_query_version().ok()?.reply().ok()?;
    let (mem, id) = ShmSegment::new(len)?;
    let seg = conn.generate_id().ok()?;
    let attached = conn.shm_attach(seg, id, false).ok().and_then(|c| c.check().ok()).is_some();
    // SAFETY: marks the segment for removal; it lives on while attached.
    unsafe {
        libc::shmctl(id as i32, libc::IPC_RMID, std::ptr::null_mut());
    }
    // A remote X server cannot see our memory: the attach fails and GetImage it is.
    attached.then_some(Reader::Shm { seg, mem })
}

/// BGRX rows (4 bytes a pixel, no padding) to I420.
pub fn bgrx_to_i420(bgrx: &[u8], width: u32, height: u32) -> Result<I420Frame, String> {
    if bgrx.len() < width as usize * height as usize * 4 {
        return Err(format!("{} bytes for a {width}x{height} picture", bgrx.len()));
    }
    super::pixels::into_i420(width, height, |planar| {
        yuv::bgra_to_yuv420(
            planar,
            bgrx,
            width * 4,
            YuvRange::Limited,
            YuvStandardMatrix::Bt601,
            YuvConversionMode::Balanced,
        )
    })
    .map_err(|e| e.to_string())
}

impl VideoSource for ScreenCapture {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, DeviceError> {
        loop {
            let due = *self.next.get_or_insert_with(Instant::now);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            // A slow grab does not make the next ones hurry to catch up.
            self.next = Some(due.max(now) + self.period);
            if let Some(frame) = self.grab()? {
                return Ok(Some(CapturedFrame { frame, capture_ms: confab_proto::wall_ms(), stamp: None }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screens_are_picked_by_number() {
        let root = Area { x: 0, y: 0, width: 3841, height: 1080 };
        let left = Area { x: 0, y: 0, width: 1920, height: 1080 };
        let right = Area { x: 1920, y: 0, width: 1921, height: 1081 };
        assert_eq!(pick_area(&[left, right], root, None).unwrap(), Area { width: 3840, ..root });
        assert_eq!(pick_area(&[left, right], root, Some(1)).unwrap(), Area { width: 1920, height: 1080, ..right });
        assert!(pick_area(&[left, right], root, Some(2)).unwrap_err().contains("no screen 2"));
        assert_eq!(pick_area(&[], root, Some(0)).unwrap(), Area { width: 3840, ..root });
    }

    #[test]
    fn bgrx_colours_come_through() {
        // Two pixels wide, two high: blue, green / red, white (B, G, R, X).
        let px = [255, 0, 0, 0, 0, 255, 0, 0, 0, 0, 255, 0, 255, 255, 255, 0];
        let f = bgrx_to_i420(&px, 2, 2).unwrap();
        let (y, _, _) = f.planes();
        // BT.601 limited: blue is darkest, then red, then green; white is 235.
        assert!(y[0] < y[2] && y[2] < y[1], "{y:?}");
        assert!(y[3] >= 233, "{y:?}");
        assert!(bgrx_to_i420(&px[..12], 2, 2).is_err());
    }
}
