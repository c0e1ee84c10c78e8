//! What the capture loop needs from a camera system, and nothing more: a list of cameras
//! with stable ids, the modes one offers, and its frames as bytes with their layout. The
//! real system is V4L2 through nokhwa (`nokhwa_backend.rs`); tests plug in cameras that
//! play prepared frames, so that the loop, the conversions and the recovery they exercise
//! are the ones a webcam's frames take.

use std::fmt;
use std::sync::Arc;

use super::DeviceError;

/// How a camera lays out one frame's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Motion JPEG: each frame a JPEG picture.
    Mjpeg,
    /// Packed 4:2:2, Y0 U Y1 V.
    Yuyv,
    /// A Y plane, then interleaved U V at half resolution.
    Nv12,
    /// Packed 8-bit R G B.
    Rgb24,
    /// 8-bit luma only.
    Gray,
}

/// One way a camera can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CameraMode {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl fmt::Display for CameraMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}x{}@{}", self.format, self.width, self.height, self.fps)
    }
}

/// One frame as the camera delivered it, borrowed from the camera's own buffer.
pub struct RawFrame<'a> {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes from the start of one row to the next in the first plane; `None` when the
    /// system does not say (it is then worked out from the buffer's length).
    pub stride: Option<usize>,
    pub data: &'a [u8],
}

/// A camera as a system lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CameraEntry {
    /// Stable across runs and replugging into the same port: the camera's name and bus
    /// path, never its index (indices shift when another camera is plugged in).
    pub id: String,
    pub name: String,
}

/// An open camera. Not `Send`: some systems' handles must stay on the thread that opened
/// them, so a camera is opened, run and dropped on its capture thread.
pub trait CameraStream {
    /// The modes it offers.
    fn modes(&mut self) -> Result<Vec<CameraMode>, DeviceError>;
    /// Starts streaming in `mode` (one of [`CameraStream::modes`]); returns the mode it
    /// really runs in.
    fn start(&mut self, mode: CameraMode) -> Result<CameraMode, DeviceError>;
    /// Blocks until the next frame. An error is a failed read; the caller decides whether
    /// the camera is gone.
    fn frame(&mut self) -> Result<RawFrame<'_>, DeviceError>;
}

/// Where cameras come from.
pub trait CameraSystem: Send + Sync {
    fn list(&self) -> Vec<CameraEntry>;
    /// Opens camera `id` from [`CameraSystem::list`].
    fn open(&self, id: &str) -> Result<Box<dyn CameraStream>, DeviceError>;
}

/// The camera system a call uses: the machine's, or one a test provides.
#[derive(Clone)]
pub struct Cameras(pub Arc<dyn CameraSystem>);

impl Cameras {
    /// The machine's cameras (V4L2 on Linux).
    pub fn system() -> Cameras {
        Cameras(Arc::new(super::nokhwa_backend::NokhwaCameras))
    }
}

impl Default for Cameras {
    fn default() -> Self {
        Cameras::system()
    }
}

impl fmt::Debug for Cameras {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cameras")
    }
}

/// How well `format` serves a call: MJPEG first, as browsers choose (a USB 2 camera sends
/// 720p30 only compressed), then the raw formats in the order they cost to convert.
fn format_rank(format: PixelFormat) -> u32 {
    match format {
        PixelFormat::Mjpeg => 0,
        PixelFormat::Nv12 => 1,
        PixelFormat::Yuyv => 2,
        PixelFormat::Rgb24 => 3,
        PixelFormat::Gray => 4,
    }
}

/// The mode closest to a call of `width`x`height`@`fps`: the frame rate first (a camera
/// that cannot keep up makes a jerky call whatever its size), then the size (larger than
/// asked costs a downscale, smaller a blurry picture, so a size below is penalised more),
/// then the format.
pub fn choose_mode(offered: &[CameraMode], width: u32, height: u32, fps: u32) -> Option<CameraMode> {
    let want_px = (width as f64 * height as f64).max(1.0);
    offered.iter().copied().filter(|m| m.width >= 2 && m.height >= 2).min_by(|a, b| {
        let cost = |m: &CameraMode| {
            let slow = fps.saturating_sub(m.fps) as f64 / fps.max(1) as f64;
            let ratio = m.width as f64 * m.height as f64 / want_px;
            let size = if ratio >= 1.0 { ratio.log2() } else { 2.0 * (1.0 / ratio).log2() };
            // A whole frame rate short outweighs any size; formats only break ties.
            (slow * 100.0 + size) * 10.0 + format_rank(m.format) as f64 * 0.01
        };
        cost(a).total_cmp(&cost(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use PixelFormat::*;

    fn m(format: PixelFormat, width: u32, height: u32, fps: u32) -> CameraMode {
        CameraMode { format, width, height, fps }
    }

    #[test]
    fn a_usb_webcam_runs_mjpeg_at_720p30_not_yuyv_at_10_fps() {
        // What a typical UVC webcam offers: raw only at low rates for large sizes.
        let offered = [
            m(Yuyv, 640, 480, 30),
            m(Yuyv, 1280, 720, 10),
            m(Mjpeg, 640, 480, 30),
            m(Mjpeg, 1280, 720, 30),
            m(Mjpeg, 1920, 1080, 30),
        ];
        assert_eq!(choose_mode(&offered, 1280, 720, 30), Some(m(Mjpeg, 1280, 720, 30)));
        assert_eq!(choose_mode(&offered, 640, 360, 30), Some(m(Mjpeg, 640, 480, 30)));
    }

    #[test]
    fn the_rate_comes_before_the_size_and_a_bigger_mode_before_a_smaller_one() {
        let offered = [m(Yuyv, 1280, 720, 5), m(Yuyv, 640, 480, 30)];
        assert_eq!(choose_mode(&offered, 1280, 720, 30), Some(m(Yuyv, 640, 480, 30)));
        let offered = [m(Nv12, 640, 360, 30), m(Nv12, 1920, 1080, 30)];
        assert_eq!(choose_mode(&offered, 1280, 720, 30), Some(m(Nv12, 1920, 1080, 30)));
        assert_eq!(choose_mode(&[], 1280, 720, 30), None);
    }
}
