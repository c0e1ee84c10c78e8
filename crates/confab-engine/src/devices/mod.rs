//! Capture and playback devices behind traits, so that the call pipeline runs the same code
//! with a webcam and microphone as with the synthetic sources the tests use.
//!
//! Every source is paced by its own clock: `next_frame` blocks until the next frame is due
//! (a camera by its sensor, a synthetic source by a timer). Every sink paces playback the
//! same way: `play` blocks while the device has enough queued.

pub mod audio;
pub mod camera;
pub mod synthetic;

use crate::codec::opus::FRAME_SAMPLES;
use crate::frame::I420Frame;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no {kind} found{}", if .id.is_empty() { String::new() } else { format!(" with id '{}'", .id) })]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} '{name}' is busy or cannot be opened: {reason}")]
    Busy { kind: &'static str, name: String, reason: String },
    #[error("{kind} '{name}' failed: {reason}")]
    Failed { kind: &'static str, name: String, reason: String },
    #[error("unknown device spec '{0}' (expected synthetic, camera[:ID], mic[:ID], speaker[:ID] or none)")]
    BadSpec(String),
}

/// A captured picture and when it was taken (ms since the Unix epoch).
#[derive(Clone, Debug)]
pub struct CapturedFrame {
    pub frame: I420Frame,
    pub capture_ms: u64,
}

pub trait VideoSource: Send {
    /// Human-readable name, for logs and the UI.
    fn name(&self) -> String;
    /// Blocks until the next frame is captured. `Ok(None)` means the source has ended.
    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, DeviceError>;
}

pub trait AudioSource: Send {
    fn name(&self) -> String;
    /// Blocks until the next 20 ms of 48 kHz mono is captured.
    fn next_frame(&mut self) -> Result<Option<[i16; FRAME_SAMPLES]>, DeviceError>;
}

pub trait AudioSink: Send {
    fn name(&self) -> String;
    /// Queues 20 ms of 48 kHz mono for playback, blocking while the device is full, so
    /// the caller is paced by the device's clock.
    fn play(&mut self, pcm: &[i16; FRAME_SAMPLES]) -> Result<(), DeviceError>;
}

/// What kind of device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Camera,
    Microphone,
    Speaker,
}

/// One device as the UI lists it. `id` is stable across runs for the same hardware.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    pub kind: DeviceKind,
    pub id: String,
    pub name: String,
}

/// Every device the system offers, plus the synthetic ones when asked.
pub fn list_devices(include_synthetic: bool) -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    if include_synthetic {
        out.push(DeviceInfo { kind: DeviceKind::Camera, id: "synthetic".into(), name: "Synthetic camera".into() });
        out.push(DeviceInfo { kind: DeviceKind::Microphone, id: "synthetic".into(), name: "Synthetic tone".into() });
        out.push(DeviceInfo { kind: DeviceKind::Speaker, id: "null".into(), name: "Null speaker (discards)".into() });
    }
    out.extend(camera::list());
    out.extend(audio::list());
    out
}

/// Which video to send.
#[derive(Clone, Debug, PartialEq)]
pub enum VideoSpec {
    None,
    Synthetic,
    Camera(Option<String>),
}

/// Which audio to send.
#[derive(Clone, Debug, PartialEq)]
pub enum AudioSpec {
    None,
    Synthetic(f64),
    Mic(Option<String>),
}

/// Where to play what we hear.
#[derive(Clone, Debug, PartialEq)]
pub enum SinkSpec {
    Null,
    Speaker(Option<String>),
}

impl std::str::FromStr for VideoSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.split_once(':') {
            None if s == "none" => Ok(VideoSpec::None),
            None if s == "synthetic" => Ok(VideoSpec::Synthetic),
            None if s == "camera" => Ok(VideoSpec::Camera(None)),
            Some(("camera", id)) if !id.is_empty() => Ok(VideoSpec::Camera(Some(id.into()))),
            _ => Err(DeviceError::BadSpec(s.into())),
        }
    }
}

impl std::str::FromStr for AudioSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.split_once(':') {
            None if s == "none" => Ok(AudioSpec::None),
            None if s == "synthetic" => Ok(AudioSpec::Synthetic(440.0)),
            None if s == "mic" => Ok(AudioSpec::Mic(None)),
            Some(("synthetic", hz)) => match hz.parse::<f64>() {
                Ok(hz) if (20.0..=20_000.0).contains(&hz) => Ok(AudioSpec::Synthetic(hz)),
                _ => Err(DeviceError::BadSpec(s.into())),
            },
            Some(("mic", id)) if !id.is_empty() => Ok(AudioSpec::Mic(Some(id.into()))),
            _ => Err(DeviceError::BadSpec(s.into())),
        }
    }
}

impl std::str::FromStr for SinkSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.split_once(':') {
            None if s == "null" || s == "none" => Ok(SinkSpec::Null),
            None if s == "speaker" => Ok(SinkSpec::Speaker(None)),
            Some(("speaker", id)) if !id.is_empty() => Ok(SinkSpec::Speaker(Some(id.into()))),
            _ => Err(DeviceError::BadSpec(s.into())),
        }
    }
}

/// Opens the video source a spec names. `None` for `VideoSpec::None`.
pub fn open_video(
    spec: &VideoSpec,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<Option<Box<dyn VideoSource>>, DeviceError> {
    Ok(match spec {
        VideoSpec::None => None,
        VideoSpec::Synthetic => Some(Box::new(synthetic::SyntheticVideo::new(width, height, fps))),
        VideoSpec::Camera(id) => Some(Box::new(camera::Camera::open(id.as_deref(), width, height, fps)?)),
    })
}

pub fn open_audio(spec: &AudioSpec) -> Result<Option<Box<dyn AudioSource>>, DeviceError> {
    Ok(match spec {
        AudioSpec::None => None,
        AudioSpec::Synthetic(hz) => Some(Box::new(synthetic::SyntheticAudio::new(*hz))),
        AudioSpec::Mic(id) => Some(Box::new(audio::Microphone::open(id.as_deref())?)),
    })
}

pub fn open_sink(spec: &SinkSpec) -> Result<Box<dyn AudioSink>, DeviceError> {
    Ok(match spec {
        SinkSpec::Null => Box::new(synthetic::NullSink::new()),
        SinkSpec::Speaker(id) => Box::new(audio::Speaker::open(id.as_deref())?),
    })
}

/// Milliseconds since the Unix epoch, the clock of capture stamps.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse_nonsense() {
        assert_eq!("synthetic".parse::<VideoSpec>().unwrap(), VideoSpec::Synthetic);
        assert_eq!("camera:/dev/video2".parse::<VideoSpec>().unwrap(), VideoSpec::Camera(Some("/dev/video2".into())));
        assert_eq!("synthetic:523.25".parse::<AudioSpec>().unwrap(), AudioSpec::Synthetic(523.25));
        assert_eq!("mic".parse::<AudioSpec>().unwrap(), AudioSpec::Mic(None));
        for bad in ["", "webcam", "camera:", "synthetic:loud", "synthetic:5"] {
            assert!(bad.parse::<AudioSpec>().is_err() || bad.parse::<VideoSpec>().is_err(), "{bad}");
        }
        let e = "webcam".parse::<VideoSpec>().unwrap_err().to_string();
        assert!(e.contains("webcam") && e.contains("camera[:ID]"), "{e}");
    }

    /// This machine has no camera or sound card: opening them fails with a message that
    /// says so, never a panic. On a machine with devices the same calls open them.
    #[test]
    fn missing_hardware_is_a_clear_error() {
        let cams = camera::list();
        if cams.is_empty() {
            let e = open_video(&VideoSpec::Camera(None), 640, 360, 30).err().expect("no camera here");
            assert!(e.to_string().contains("no camera"), "{e}");
        }
        let e = open_video(&VideoSpec::Camera(Some("no-such-camera".into())), 640, 360, 30).err().unwrap();
        assert!(e.to_string().contains("no-such-camera"), "{e}");
        let e = open_audio(&AudioSpec::Mic(Some("no-such-mic".into()))).err().unwrap();
        assert!(e.to_string().contains("no-such-mic"), "{e}");
        let listed = list_devices(true);
        assert!(listed.iter().any(|d| d.id == "synthetic" && d.kind == DeviceKind::Camera));
    }
}
