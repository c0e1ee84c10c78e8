//! Webcams through nokhwa (V4L2 on Linux). The camera lives on its own thread because
//! nokhwa's handle may not move between threads; frames come out through a one-frame
//! channel (a slow consumer gets the newest frame, never blocks the camera). Dropping the
//! `Camera` stops the stream, which turns the camera light off.

use std::sync::mpsc;

use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
};

use super::{CapturedFrame, DeviceError, DeviceInfo, DeviceKind, VideoSource};
use crate::frame::I420Frame;
use crate::worker::{StopFlag, Worker};

/// Cameras present now. Ids are the system's camera index ("0", "1", ...).
pub fn list() -> Vec<DeviceInfo> {
    match nokhwa::query(ApiBackend::Auto) {
        Ok(cams) => cams
            .into_iter()
            .map(|c| DeviceInfo {
                kind: DeviceKind::Camera,
                id: c.index().to_string(),
                name: c.human_name(),
                default: false,
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "camera query failed");
            Vec::new()
        }
    }
}

pub struct Camera {
    name: String,
    /// Declared before `frames`: it is joined while the channel is still open.
    capture: Worker,
    frames: mpsc::Receiver<Result<CapturedFrame, DeviceError>>,
}

impl Camera {
    /// Opens camera `id` (an index or a name from [`list`]), or the first one, at about
    /// `width`x`height`@`fps` (MJPEG preferred); frames are scaled to exactly that size.
    pub fn open(id: Option<&str>, width: u32, height: u32, fps: u32) -> Result<Camera, DeviceError> {
        let cams = list();
        let info = match id {
            None => cams.first().cloned().ok_or(DeviceError::NotFound { kind: "camera", id: String::new() })?,
            Some(id) => cams
                .iter()
                .find(|c| c.id == id || c.name == id)
                .cloned()
                .ok_or_else(|| DeviceError::NotFound { kind: "camera", id: id.into() })?,
        };
        let index = match info.id.parse::<u32>() {
            Ok(n) => CameraIndex::Index(n),
            Err(_) => CameraIndex::String(info.id.clone()),
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = info.name.clone();
        let capture =
            Worker::spawn("camera", move |stop| capture_loop(index, name, width, height, fps, tx, ready_tx, stop))
                .map_err(|e| DeviceError::Failed { kind: "camera", name: info.name.clone(), reason: e.to_string() })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Camera { name: info.name, capture, frames: rx }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                Err(DeviceError::Failed { kind: "camera", name: info.name, reason: "capture thread died".into() })
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn capture_loop(
    index: CameraIndex,
    name: String,
    width: u32,
    height: u32,
    fps: u32,
    tx: mpsc::SyncSender<Result<CapturedFrame, DeviceError>>,
    ready: mpsc::Sender<Result<(), DeviceError>>,
    stop: StopFlag,
) {
    let busy = |e: nokhwa::NokhwaError| DeviceError::Busy { kind: "camera", name: name.clone(), reason: e.to_string() };
    let want = CameraFormat::new(Resolution::new(width, height), FrameFormat::MJPEG, fps);
    let mut cam =
        match nokhwa::Camera::new(index, RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(want))) {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(busy(e)));
                return;
            }
        };
    if let Err(e) = cam.open_stream() {
        let _ = ready.send(Err(busy(e)));
        return;
    }
    let _ = ready.send(Ok(()));
    while !stop.is_set() {
        let item = cam
            .frame()
            .map_err(|e| DeviceError::Failed { kind: "camera", name: name.clone(), reason: e.to_string() })
            .and_then(|buf| {
                let capture_ms = confab_proto::wall_ms();
                let res = buf.resolution();
                let frame = match buf.source_frame_format() {
                    FrameFormat::YUYV => yuyv_to_i420(buf.buffer(), res.width(), res.height()),
                    _ => {
                        let rgb = buf.decode_image::<RgbFormat>().map_err(|e| DeviceError::Failed {
                            kind: "camera",
                            name: name.clone(),
                            reason: format!("cannot decode frame: {e}"),
                        })?;
                        rgb_to_i420(rgb.as_raw(), res.width(), res.height())
                    }
                };
                let frame =
                    if (frame.width, frame.height) != (width, height) { frame.scaled(width, height) } else { frame };
                Ok(CapturedFrame { frame, capture_ms })
            });
        let failed = item.is_err();
        // A full channel means the encoder is behind: drop this frame, keep capturing.
        match tx.try_send(item) {
            Err(mpsc::TrySendError::Disconnected(_)) => break,
            _ if failed => break,
            _ => {}
        }
    }
    let _ = cam.stop_stream();
}

impl VideoSource for Camera {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, DeviceError> {
        match self.frames.recv() {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.capture.ask_stop();
        // Unblock a capture thread waiting to hand over a frame; `capture` joins it next.
        while self.frames.try_recv().is_ok() {}
    }
}

/// Packed YUYV 4:2:2 to I420 (chroma of each row pair averaged).
pub fn yuyv_to_i420(src: &[u8], width: u32, height: u32) -> I420Frame {
    let (w, h) = (width as usize, height as usize);
    let mut out = I420Frame::new(width, height);
    let cw = out.chroma_width();
    let (y, u, v) = out.planes_mut();
    for row in 0..h {
        let line = &src[row * w * 2..(row + 1) * w * 2];
        for col in 0..w {
            y[row * w + col] = line[col * 2];
        }
        if row % 2 == 0 {
            let next = if row + 1 < h { &src[(row + 1) * w * 2..(row + 2) * w * 2] } else { line };
            for c in 0..w / 2 {
                u[(row / 2) * cw + c] = ((line[c * 4 + 1] as u16 + next[c * 4 + 1] as u16) / 2) as u8;
                v[(row / 2) * cw + c] = ((line[c * 4 + 3] as u16 + next[c * 4 + 3] as u16) / 2) as u8;
            }
        }
    }
    out
}

/// Packed RGB24 to I420 with BT.601 limited-range coefficients.
pub fn rgb_to_i420(src: &[u8], width: u32, height: u32) -> I420Frame {
    let (w, h) = (width as usize, height as usize);
    let mut out = I420Frame::new(width, height);
    let cw = out.chroma_width();
    let (y, u, v) = out.planes_mut();
    for row in 0..h {
        for col in 0..w {
            let p = &src[(row * w + col) * 3..];
            let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
            y[row * w + col] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16).clamp(0, 255) as u8;
            if row % 2 == 0 && col % 2 == 0 {
                u[(row / 2) * cw + col / 2] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
                v[(row / 2) * cw + col / 2] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_conversions() {
        // White and black in RGB map to limited-range luma with neutral chroma.
        let rgb = [255u8, 255, 255, 0, 0, 0, 255, 255, 255, 0, 0, 0];
        let f = rgb_to_i420(&rgb, 2, 2);
        assert_eq!(f.y(), &[235, 16, 235, 16]);
        let (_, u, v) = f.planes();
        assert_eq!((u[0], v[0]), (128, 128));
        let yuyv = [10u8, 100, 20, 200, 30, 110, 40, 210];
        let f = yuyv_to_i420(&yuyv, 2, 2);
        assert_eq!(f.y(), &[10, 20, 30, 40]);
        let (_, u, v) = f.planes();
        assert_eq!((u[0], v[0]), (105, 205));
    }
}
