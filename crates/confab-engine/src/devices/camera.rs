//! Webcams: a capture thread per open camera runs its [`CameraStream`] (nokhwa's, or a
//! test's), converts each frame to I420 and hands it over through a one-frame channel (a
//! slow consumer gets the newest frame, never blocks the camera). A bad frame (a corrupt
//! JPEG while a USB camera starts, a short buffer) is skipped and counted; a camera that
//! keeps failing ends the stream with an error, and the video pipeline opens it again.
//! Dropping the `Camera` stops the stream, which turns the camera light off.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::camera_backend::{choose_mode, CameraMode, Cameras};
use super::pixels::to_i420;
use super::{CapturedFrame, DeviceError, DeviceInfo, DeviceKind, VideoSource};
use crate::worker::{StopFlag, Worker};

/// Cameras present now, by their stable ids.
pub fn list(cameras: &Cameras) -> Vec<DeviceInfo> {
    cameras
        .0
        .list()
        .into_iter()
        .map(|c| DeviceInfo { kind: DeviceKind::Camera, id: c.id, name: c.name, default: false })
        .collect()
}

/// Bad frames in a row that make a camera count as failed (a second at 30 fps): a camera
/// warming up sends a few, a broken one sends nothing else.
const BAD_FRAMES_IN_A_ROW: u32 = 30;
/// Failed reads in a row that do the same.
const FAILED_READS_IN_A_ROW: u32 = 5;
/// A camera that sends nothing for this long has stopped.
const STALL: Duration = Duration::from_secs(3);

pub struct Camera {
    name: String,
    mode: CameraMode,
    bad: Arc<AtomicU64>,
    /// Declared before `frames`: it is joined while the channel is still open.
    capture: Worker,
    frames: mpsc::Receiver<Result<CapturedFrame, DeviceError>>,
}

impl Camera {
    /// Opens camera `id` (a stable id from [`list`], or for the command line an index,
    /// path or name), or the first one, in the mode closest to `width`x`height`@`fps`.
    /// Frames come at the camera's own size; the video pipeline fits them to the call's.
    pub fn open(cameras: &Cameras, id: Option<&str>, width: u32, height: u32, fps: u32) -> Result<Camera, DeviceError> {
        let listed = cameras.0.list();
        let entry = match id {
            None => listed.first().cloned().ok_or(DeviceError::NotFound { kind: "camera", id: String::new() })?,
            Some(id) => listed.iter().find(|c| c.id == id || c.name == id).cloned().unwrap_or_else(|| {
                // Not listed under that id: let the system resolve it (an index, a path).
                super::camera_backend::CameraEntry { id: id.into(), name: id.into() }
            }),
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let (ready_tx, ready_rx) = mpsc::channel();
        let bad = Arc::new(AtomicU64::new(0));
        let (system, id, bad1) = (cameras.0.clone(), entry.id.clone(), bad.clone());
        let name = entry.name.clone();
        let capture = Worker::spawn("camera", move |stop| {
            let mut stream = match system.open(&id) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let started = stream.modes().and_then(|modes| {
                let mode = choose_mode(&modes, width, height, fps).ok_or_else(|| DeviceError::Unsupported {
                    kind: "camera",
                    name: name.clone(),
                    reason: "it offers no picture format confab can read".into(),
                })?;
                stream.start(mode)
            });
            match started {
                Ok(mode) => {
                    tracing::info!(camera = %name, %mode, "camera started");
                    let _ = ready_tx.send(Ok(mode));
                    capture_loop(&mut *stream, &name, &bad1, &tx, &stop);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| DeviceError::Failed {
            kind: "camera",
            name: entry.name.clone(),
            reason: e.to_string(),
        })?;
        match ready_rx.recv() {
            Ok(Ok(mode)) => Ok(Camera { name: entry.name, mode, bad, capture, frames: rx }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                Err(DeviceError::Failed { kind: "camera", name: entry.name, reason: "capture thread died".into() })
            }
        }
    }

    /// The mode the camera runs in.
    pub fn mode(&self) -> CameraMode {
        self.mode
    }
}

fn capture_loop(
    stream: &mut dyn super::camera_backend::CameraStream,
    name: &str,
    bad: &AtomicU64,
    tx: &mpsc::SyncSender<Result<CapturedFrame, DeviceError>>,
    stop: &StopFlag,
) {
    let failed = |reason: String| DeviceError::Failed { kind: "camera", name: name.into(), reason };
    let (mut bad_in_a_row, mut failed_reads) = (0u32, 0u32);
    while !stop.is_set() {
        let item = match stream.frame() {
            Ok(raw) => {
                failed_reads = 0;
                let capture_ms = confab_proto::wall_ms();
                match to_i420(&raw) {
                    Ok(frame) => {
                        bad_in_a_row = 0;
                        Ok(CapturedFrame { frame, capture_ms, stamp: None })
                    }
                    Err(why) => {
                        let total = bad.fetch_add(1, Relaxed) + 1;
                        bad_in_a_row += 1;
                        // One line for the first bad frame of a run, not one per frame.
                        if bad_in_a_row == 1 {
                            tracing::warn!(camera = name, error = %why, total, "skipping a bad camera frame");
                        }
                        if bad_in_a_row < BAD_FRAMES_IN_A_ROW {
                            continue;
                        }
                        Err(failed(format!("{bad_in_a_row} bad frames in a row (the last: {why})")))
                    }
                }
            }
            Err(e @ DeviceError::Unavailable { .. }) => Err(e),
            Err(e) => {
                failed_reads += 1;
                if failed_reads < FAILED_READS_IN_A_ROW {
                    tracing::debug!(camera = name, error = %e, "camera read failed");
                    std::thread::park_timeout(Duration::from_millis(20));
                    continue;
                }
                Err(e)
            }
        };
        let end = item.is_err();
        // A full channel means the encoder is behind: drop this frame, keep capturing.
        match tx.try_send(item) {
            Err(mpsc::TrySendError::Disconnected(_)) => break,
            _ if end => break,
            _ => {}
        }
    }
}

impl VideoSource for Camera {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, DeviceError> {
        match self.frames.recv_timeout(STALL) {
            Ok(r) => r.map(Some),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(DeviceError::Failed {
                kind: "camera",
                name: self.name.clone(),
                reason: format!("no picture for {} s", STALL.as_secs()),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(DeviceError::Failed {
                kind: "camera",
                name: self.name.clone(),
                reason: "its capture thread ended".into(),
            }),
        }
    }

    fn bad_frames(&self) -> u64 {
        self.bad.load(Relaxed)
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        self.capture.ask_stop();
        // Unblock a capture thread waiting to hand over a frame; `capture` joins it next.
        while self.frames.try_recv().is_ok() {}
    }
}
