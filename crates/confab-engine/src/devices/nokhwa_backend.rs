//! The machine's cameras: V4L2 through nokhwa for streaming, and the `v4l` crate for what
//! nokhwa does not tell (a node's bus path, and whether it captures video at all: a UVC
//! webcam has a second node for metadata only).

use std::borrow::Cow;

use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution};

use super::camera_backend::{CameraEntry, CameraMode, CameraStream, CameraSystem, PixelFormat, RawFrame};
use super::DeviceError;

pub struct NokhwaCameras;

/// One video capture node.
struct Node {
    entry: CameraEntry,
    index: u32,
    path: String,
}

fn nodes() -> Vec<Node> {
    let mut out: Vec<Node> = Vec::new();
    for node in v4l::context::enum_devices() {
        let path = node.path().to_string_lossy().into_owned();
        let Ok(dev) = v4l::Device::with_path(node.path()) else { continue };
        let Ok(caps) = dev.query_caps() else { continue };
        // A node with no capture formats is a metadata node (or an output): not a camera.
        let captures = v4l::video::Capture::enum_formats(&dev).map(|f| !f.is_empty()).unwrap_or(false);
        if !captures {
            continue;
        }
        let bus = if caps.bus.is_empty() { path.clone() } else { caps.bus.clone() };
        let id = format!("v4l:{}@{}", caps.card, bus);
        // Two capture nodes of one device (rare) would share an id: the first one serves.
        if out.iter().any(|n| n.entry.id == id) {
            continue;
        }
        out.push(Node { entry: CameraEntry { id, name: caps.card }, index: node.index() as u32, path });
    }
    out
}

fn frame_format(f: FrameFormat) -> Option<PixelFormat> {
    Some(match f {
        FrameFormat::MJPEG => PixelFormat::Mjpeg,
        FrameFormat::YUYV => PixelFormat::Yuyv,
        FrameFormat::NV12 => PixelFormat::Nv12,
        FrameFormat::RAWRGB => PixelFormat::Rgb24,
        FrameFormat::GRAY => PixelFormat::Gray,
        _ => return None,
    })
}

fn nokhwa_format(f: PixelFormat) -> FrameFormat {
    match f {
        PixelFormat::Mjpeg => FrameFormat::MJPEG,
        PixelFormat::Yuyv => FrameFormat::YUYV,
        PixelFormat::Nv12 => FrameFormat::NV12,
        PixelFormat::Rgb24 => FrameFormat::RAWRGB,
        PixelFormat::Gray => FrameFormat::GRAY,
    }
}

impl CameraSystem for NokhwaCameras {
    fn list(&self) -> Vec<CameraEntry> {
        nodes().into_iter().map(|n| n.entry).collect()
    }

    /// `id` is a stable id from [`CameraSystem::list`]; for the command line, a node's index
    /// ("0"), path ("/dev/video2") or name also do.
    fn open(&self, id: &str) -> Result<Box<dyn CameraStream>, DeviceError> {
        let all = nodes();
        let node = all
            .iter()
            .find(|n| n.entry.id == id)
            .or_else(|| all.iter().find(|n| n.index.to_string() == id || n.path == id || n.entry.name == id))
            .ok_or_else(|| DeviceError::NotFound { kind: "camera", id: id.into() })?;
        let name = node.entry.name.clone();
        let busy = |e| camera_error(&name, e, |kind, name, reason| DeviceError::Busy { kind, name, reason });
        let cam = nokhwa::Camera::new(
            CameraIndex::Index(node.index),
            RequestedFormat::new::<RgbFormat>(RequestedFormatType::None),
        )
        .map_err(busy)?;
        Ok(Box::new(NokhwaStream { cam, name: node.entry.name.clone(), mode: None }))
    }
}

struct NokhwaStream {
    cam: nokhwa::Camera,
    name: String,
    mode: Option<CameraMode>,
}

impl NokhwaStream {
    fn failed(&self, e: nokhwa::NokhwaError) -> DeviceError {
        camera_error(&self.name, e, |kind, name, reason| DeviceError::Failed { kind, name, reason })
    }
}

/// nokhwa's error as confab's: a camera that is gone (ENODEV, or its node removed) is
/// `Unavailable`; anything else is what `otherwise` makes of it. nokhwa gives only text.
fn camera_error(
    name: &str,
    e: nokhwa::NokhwaError,
    otherwise: fn(&'static str, String, String) -> DeviceError,
) -> DeviceError {
    let reason = e.to_string();
    let gone = ["No such device", "os error 19", "No such file"].iter().any(|s| reason.contains(s));
    if gone {
        DeviceError::Unavailable { kind: "camera", name: name.into(), reason }
    } else {
        otherwise("camera", name.into(), reason)
    }
}

impl CameraStream for NokhwaStream {
    fn modes(&mut self) -> Result<Vec<CameraMode>, DeviceError> {
        let formats = self.cam.compatible_camera_formats().map_err(|e| self.failed(e))?;
        Ok(formats
            .into_iter()
            .filter_map(|f| {
                Some(CameraMode {
                    format: frame_format(f.format())?,
                    width: f.resolution().width(),
                    height: f.resolution().height(),
                    fps: f.frame_rate(),
                })
            })
            .collect())
    }

    fn start(&mut self, mode: CameraMode) -> Result<CameraMode, DeviceError> {
        let want = CameraFormat::new(Resolution::new(mode.width, mode.height), nokhwa_format(mode.format), mode.fps);
        let request = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Exact(want));
        self.cam.set_camera_requset(request).map_err(|e| self.failed(e))?;
        self.cam.open_stream().map_err(|e| self.failed(e))?;
        let got = self.cam.camera_format();
        let running = CameraMode {
            format: frame_format(got.format()).unwrap_or(mode.format),
            width: got.resolution().width(),
            height: got.resolution().height(),
            fps: got.frame_rate(),
        };
        self.mode = Some(running);
        Ok(running)
    }

    fn frame(&mut self) -> Result<RawFrame<'_>, DeviceError> {
        let mode = self.mode.ok_or_else(|| DeviceError::Failed {
            kind: "camera",
            name: self.name.clone(),
            reason: "not started".into(),
        })?;
        let data = match self.cam.frame_raw() {
            Ok(Cow::Borrowed(d)) => d,
            // nokhwa borrows V4L2's buffer; an owned one would not outlive this call.
            Ok(Cow::Owned(_)) => {
                return Err(DeviceError::Failed {
                    kind: "camera",
                    name: self.name.clone(),
                    reason: "frame not in the driver's buffer".into(),
                })
            }
            // `self.failed` would borrow all of `self` while the frame borrows the camera.
            Err(e) => {
                return Err(camera_error(&self.name, e, |kind, name, reason| DeviceError::Failed {
                    kind,
                    name,
                    reason,
                }))
            }
        };
        // V4L2 hands out the whole mapped buffer; the stride is worked out from its length.
        Ok(RawFrame { format: mode.format, width: mode.width, height: mode.height, stride: None, data })
    }
}

impl Drop for NokhwaStream {
    fn drop(&mut self) {
        // The camera light goes out here, not whenever nokhwa gets round to it.
        let _ = self.cam.stop_stream();
    }
}
