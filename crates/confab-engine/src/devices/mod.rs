//! Capture and playback devices behind traits, so that the call pipeline runs the same code
//! with a webcam and microphone as with the synthetic sources the tests use.
//!
//! Every source is paced by its own clock: `next_frame` blocks until the next frame is due
//! (a camera by its sensor, a synthetic source by a timer). Every sink paces playback the
//! same way: `play` blocks while the device has enough queued.

pub mod audio;
pub mod camera;
pub mod camera_backend;
mod nokhwa_backend;
pub mod pixels;
pub mod resample;
pub mod screen;
pub mod synthetic;

pub use camera_backend::Cameras;

use crate::codec::opus::FRAME_SAMPLES;
use crate::frame::I420Frame;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("no {kind} found{}", if .id.is_empty() { String::new() } else { format!(" with id '{}'", .id) })]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} '{name}' is busy or cannot be opened: {reason}")]
    Busy { kind: &'static str, name: String, reason: String },
    #[error("{kind} '{name}' is not available ({}): {reason}", unavailable_why(.kind))]
    Unavailable { kind: &'static str, name: String, reason: String },
    #[error("{kind} '{name}' cannot record or play the way confab asks: {reason}")]
    Unsupported { kind: &'static str, name: String, reason: String },
    #[error("{kind} '{name}': confab is not allowed to use it: {reason}")]
    Denied { kind: &'static str, name: String, reason: String },
    #[error("{kind} '{name}' failed: {reason}")]
    Failed { kind: &'static str, name: String, reason: String },
    #[error(
        "unknown device spec '{0}' (expected synthetic, synthetic:4x3, camera[:ID], screen[:N], mic[:ID], speaker[:ID] or none)"
    )]
    BadSpec(String),
}

/// What usually makes a device of `kind` vanish.
fn unavailable_why(kind: &str) -> &'static str {
    match kind {
        "camera" => "unplugged, or its driver stopped",
        _ => "unplugged, or its sound server stopped",
    }
}

/// A captured picture (at the source's own size) and when it was taken (ms since the Unix
/// epoch).
#[derive(Clone, Debug)]
pub struct CapturedFrame {
    pub frame: I420Frame,
    pub capture_ms: u64,
    /// A synthetic source's stamp, drawn once the picture is fitted to the call's size (a
    /// crop would cut it).
    pub stamp: Option<crate::stamp::FrameStamp>,
}

pub trait VideoSource: Send {
    /// Human-readable name, for logs and the UI.
    fn name(&self) -> String;
    /// Blocks until the next frame is captured. `Ok(None)` means the source has ended.
    fn next_frame(&mut self) -> Result<Option<CapturedFrame>, DeviceError>;
    /// Frames the source skipped because they could not be read (corrupt, short).
    fn bad_frames(&self) -> u64 {
        0
    }
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// The system's default of its kind (what "" opens); listed first.
    pub default: bool,
}

/// Every device the system offers, plus the synthetic ones when asked.
pub fn list_devices(include_synthetic: bool) -> Vec<DeviceInfo> {
    let mut out = Vec::new();
    if include_synthetic {
        let synthetic =
            |kind, id: &str, name: &str| DeviceInfo { kind, id: id.into(), name: name.into(), default: false };
        out.push(synthetic(DeviceKind::Camera, SYNTHETIC, "Synthetic camera"));
        out.push(synthetic(DeviceKind::Camera, SYNTHETIC_4X3, "Synthetic camera 4:3"));
        out.push(synthetic(DeviceKind::Microphone, SYNTHETIC, "Synthetic tone"));
        out.push(synthetic(DeviceKind::Speaker, NULL_SPEAKER, "Null speaker (discards)"));
    }
    out.extend(camera::list(&Cameras::system()));
    out.extend(audio::list());
    out
}

/// The device ids that are not hardware, as [`list_devices`] offers them and specs spell them.
pub const NONE: &str = "none";
pub const SYNTHETIC: &str = "synthetic";
/// A second synthetic camera, 640x480 (4:3), for switching and cropping without hardware.
pub const SYNTHETIC_4X3: &str = "synthetic:4x3";
pub const NULL_SPEAKER: &str = "null";

/// Which video to send.
#[derive(Clone, Debug, PartialEq)]
pub enum VideoSpec {
    None,
    /// The moving test picture at the call's size.
    Synthetic,
    /// A 640x480 test picture with a circle in it, for switching and cropping.
    SyntheticFourByThree,
    Camera(Option<String>),
    /// The screen (X11): monitor N, or the whole display.
    Screen(Option<u32>),
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

// Two spellings, one set of rules: a UI picks a device id from `list_devices` ("" for the
// system default), a command line writes `KIND[:ID]` (`camera`, `mic:alsa:hw:1`). The
// `from_device_id`s below say what each id means; `FromStr` adds only the `KIND:` prefixes.

impl VideoSpec {
    /// The camera a device id from [`list_devices`] names; "" is the default camera.
    pub fn from_device_id(id: &str) -> VideoSpec {
        match id {
            NONE => VideoSpec::None,
            SYNTHETIC => VideoSpec::Synthetic,
            SYNTHETIC_4X3 => VideoSpec::SyntheticFourByThree,
            "" => VideoSpec::Camera(None),
            id => VideoSpec::Camera(Some(id.into())),
        }
    }
}

impl AudioSpec {
    /// The microphone a device id from [`list_devices`] names; "" is the default one.
    pub fn from_device_id(id: &str) -> AudioSpec {
        match id {
            NONE => AudioSpec::None,
            SYNTHETIC => AudioSpec::Synthetic(440.0),
            "" => AudioSpec::Mic(None),
            id => AudioSpec::Mic(Some(id.into())),
        }
    }
}

impl SinkSpec {
    /// The speaker a device id from [`list_devices`] names; "" is the default one.
    pub fn from_device_id(id: &str) -> SinkSpec {
        match id {
            NULL_SPEAKER | NONE => SinkSpec::Null,
            "" => SinkSpec::Speaker(None),
            id => SinkSpec::Speaker(Some(id.into())),
        }
    }
}

impl std::str::FromStr for VideoSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.split_once(':') {
            None if s == NONE || s == SYNTHETIC => Ok(VideoSpec::from_device_id(s)),
            None if s == "camera" => Ok(VideoSpec::from_device_id("")),
            Some(_) if s == SYNTHETIC_4X3 => Ok(VideoSpec::SyntheticFourByThree),
            Some(("camera", id)) if !id.is_empty() => Ok(VideoSpec::Camera(Some(id.into()))),
            None if s == "screen" => Ok(VideoSpec::Screen(None)),
            Some(("screen", n)) => {
                n.parse().map(|n| VideoSpec::Screen(Some(n))).map_err(|_| DeviceError::BadSpec(s.into()))
            }
            _ => Err(DeviceError::BadSpec(s.into())),
        }
    }
}

impl std::str::FromStr for AudioSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.split_once(':') {
            None if s == NONE || s == SYNTHETIC => Ok(AudioSpec::from_device_id(s)),
            None if s == "mic" => Ok(AudioSpec::from_device_id("")),
            Some((SYNTHETIC, hz)) => match hz.parse::<f64>() {
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
            None if s == NULL_SPEAKER || s == NONE => Ok(SinkSpec::from_device_id(s)),
            None if s == "speaker" => Ok(SinkSpec::from_device_id("")),
            Some(("speaker", id)) if !id.is_empty() => Ok(SinkSpec::Speaker(Some(id.into()))),
            _ => Err(DeviceError::BadSpec(s.into())),
        }
    }
}

/// Opens the video source a spec names, from `cameras` if it is a camera, for a call of
/// `width`x`height`@`fps`. `None` for `VideoSpec::None`.
pub fn open_video(
    spec: &VideoSpec,
    cameras: &Cameras,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<Option<Box<dyn VideoSource>>, DeviceError> {
    Ok(match spec {
        VideoSpec::None => None,
        VideoSpec::Synthetic => Some(Box::new(synthetic::SyntheticVideo::new(width, height, fps))),
        VideoSpec::SyntheticFourByThree => Some(Box::new(synthetic::SyntheticVideo::four_by_three(fps))),
        VideoSpec::Camera(id) => Some(Box::new(camera::Camera::open(cameras, id.as_deref(), width, height, fps)?)),
        VideoSpec::Screen(n) => Some(Box::new(screen::ScreenCapture::open(*n, fps.min(screen::MAX_FPS))?)),
    })
}

pub fn open_audio(spec: &AudioSpec) -> Result<Option<Box<dyn AudioSource>>, DeviceError> {
    Ok(match spec {
        AudioSpec::None => None,
        AudioSpec::Synthetic(hz) => Some(Box::new(synthetic::SyntheticAudio::new(*hz))),
        AudioSpec::Mic(id) => Some(Box::new(audio::Microphone::open(id.as_deref())?)),
    })
}

/// Opens where we play; a speaker also hands what it plays to `echo` (a null sink plays
/// nothing a microphone could hear).
pub fn open_sink(
    spec: &SinkSpec,
    echo: Option<std::sync::Arc<crate::audio_processing::EchoReference>>,
) -> Result<Box<dyn AudioSink>, DeviceError> {
    Ok(match spec {
        SinkSpec::Null => Box::new(synthetic::NullSink::new()),
        SinkSpec::Speaker(id) => Box::new(audio::Speaker::open(id.as_deref(), echo)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_refuse_nonsense() {
        assert_eq!("synthetic".parse::<VideoSpec>().unwrap(), VideoSpec::Synthetic);
        assert_eq!("synthetic:4x3".parse::<VideoSpec>().unwrap(), VideoSpec::SyntheticFourByThree);
        assert!("synthetic:3x4".parse::<VideoSpec>().is_err());
        assert_eq!("camera:/dev/video2".parse::<VideoSpec>().unwrap(), VideoSpec::Camera(Some("/dev/video2".into())));
        assert_eq!("synthetic:523.25".parse::<AudioSpec>().unwrap(), AudioSpec::Synthetic(523.25));
        assert_eq!("mic".parse::<AudioSpec>().unwrap(), AudioSpec::Mic(None));
        for bad in ["", "webcam", "camera:", "synthetic:loud", "synthetic:5"] {
            assert!(bad.parse::<AudioSpec>().is_err() || bad.parse::<VideoSpec>().is_err(), "{bad}");
        }
        let e = "webcam".parse::<VideoSpec>().unwrap_err().to_string();
        assert!(e.contains("webcam") && e.contains("camera[:ID]"), "{e}");
    }

    #[test]
    fn device_ids_from_the_list_mean_what_the_command_line_spells() {
        let cameras =
            [("", "camera"), ("none", "none"), ("synthetic", "synthetic"), ("synthetic:4x3", "synthetic:4x3")];
        for (id, spec) in cameras.into_iter().chain([("0", "camera:0"), ("v4l:C920@usb-3", "camera:v4l:C920@usb-3")]) {
            assert_eq!(VideoSpec::from_device_id(id), spec.parse().unwrap(), "{id:?}");
        }
        for (id, spec) in [("", "mic"), ("none", "none"), ("synthetic", "synthetic"), ("alsa:hw:1", "mic:alsa:hw:1")] {
            assert_eq!(AudioSpec::from_device_id(id), spec.parse().unwrap(), "{id:?}");
        }
        for (id, spec) in [("", "speaker"), ("null", "null"), ("none", "none"), ("alsa:pulse", "speaker:alsa:pulse")] {
            assert_eq!(SinkSpec::from_device_id(id), spec.parse().unwrap(), "{id:?}");
        }
        for d in list_devices(true) {
            let named = match d.kind {
                DeviceKind::Camera => VideoSpec::from_device_id(&d.id) != VideoSpec::Camera(None),
                DeviceKind::Microphone => AudioSpec::from_device_id(&d.id) != AudioSpec::Mic(None),
                DeviceKind::Speaker => SinkSpec::from_device_id(&d.id) != SinkSpec::Speaker(None),
            };
            assert!(named, "listed device {d:?} must not mean 'the default'");
        }
    }

    /// This machine has no camera or sound card: opening them fails with a message that
    /// says so, never a panic. On a machine with devices the same calls open them.
    #[test]
    fn missing_hardware_is_a_clear_error() {
        let cams = camera::list(&Cameras::system());
        if cams.is_empty() {
            let e =
                open_video(&VideoSpec::Camera(None), &Cameras::system(), 640, 360, 30).err().expect("no camera here");
            assert!(e.to_string().contains("no camera"), "{e}");
        }
        let e = open_video(&VideoSpec::Camera(Some("no-such-camera".into())), &Cameras::system(), 640, 360, 30)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no-such-camera"), "{e}");
        let e = open_audio(&AudioSpec::Mic(Some("no-such-mic".into()))).err().unwrap();
        assert!(e.to_string().contains("no-such-mic"), "{e}");
        let listed = list_devices(true);
        assert!(listed.iter().any(|d| d.id == "synthetic" && d.kind == DeviceKind::Camera));
    }
}
