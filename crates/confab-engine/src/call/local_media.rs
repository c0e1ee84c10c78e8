//! Our side of the media: the local video and audio pipelines and the specs they were
//! opened from, the send side every peer's tracks read, mute and camera state, and the
//! audio playout thread that mixes what every peer sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use confab_proto::{ClientMsg, PeerId};

use super::{CallConfig, CallError, VoiceLevel};
use crate::audio_processing::{CaptureProcessor, EchoReference, ProcessingSettings, ProcessingSwitch};
use crate::codec::vp8::Vp8Config;
use crate::device_recovery::{DeviceNotice, DeviceNotices, Recovery};
use crate::devices::{self, AudioSink, AudioSpec, Cameras, SinkSpec, VideoSource, VideoSpec};
use crate::levels::Speaking;
use crate::media::{AudioPipeline, AudioPlayoutThread, FrameSink, PeerAudioMap, SendSide, VideoPipeline, SELF_TILE};

pub(super) struct LocalMedia {
    /// Encoded media, keyframe requests and the video budget, shared by every peer's senders.
    pub send: SendSide,
    video: Option<VideoPipeline>,
    audio: Option<AudioPipeline>,
    /// What `video` was opened from: turning the camera back on reopens it.
    video_spec: VideoSpec,
    /// Where we play, as chosen.
    sink_spec: SinkSpec,
    /// The size, rate and bitrate the encoder is made with, and whether captured frames
    /// also go to `frames` as the self view.
    format: VideoFormat,
    muted: Arc<AtomicBool>,
    /// The user wants to send video.
    camera_on: bool,
    /// The camera delivers (false while it is stopped and being opened again): peers see
    /// video only when both hold.
    camera_live: bool,
    /// Where cameras come from (the machine's, or a test's).
    cameras: Cameras,
    /// What a microphone's audio goes through, and what our speaker played (its echo
    /// reference).
    processing: Arc<ProcessingSwitch>,
    pub echo: Arc<EchoReference>,
    /// Where the capture threads report a device stopping and coming back.
    notices: DeviceNotices,
    /// Where decoded pictures (and, with the self view, captured ones) go.
    pub frames: Arc<dyn FrameSink>,
    /// Each peer's audio as the playout thread mixes it; peer sessions add and remove theirs.
    pub audio_map: PeerAudioMap,
    _playout: Option<AudioPlayoutThread>,
    /// Who is speaking, ourselves included.
    speaking: HashMap<PeerId, Speaking>,
}

#[derive(Clone, Copy)]
struct VideoFormat {
    width: u32,
    height: u32,
    fps: u32,
    bitrate_kbps: Option<u32>,
    self_view: bool,
}

impl LocalMedia {
    /// Opens the camera and microphone the config names and starts their pipelines.
    pub fn open(cfg: &CallConfig, frames: Arc<dyn FrameSink>, notices: DeviceNotices) -> Result<LocalMedia, CallError> {
        let format = VideoFormat {
            width: cfg.width,
            height: cfg.height,
            fps: cfg.fps,
            bitrate_kbps: cfg.bitrate_kbps,
            self_view: cfg.self_view,
        };
        let mut media = LocalMedia {
            send: SendSide::new(),
            video: None,
            audio: None,
            video_spec: cfg.video.clone(),
            sink_spec: cfg.sink.clone(),
            format,
            muted: Arc::new(AtomicBool::new(false)),
            // No video source means no camera, whatever the UI's button says.
            camera_on: cfg.video != VideoSpec::None,
            camera_live: true,
            cameras: cfg.cameras.clone(),
            processing: Arc::new(ProcessingSwitch::new(cfg.processing)),
            echo: Arc::new(EchoReference::default()),
            notices,
            frames,
            audio_map: Arc::new(Mutex::new(HashMap::new())),
            _playout: None,
            speaking: HashMap::new(),
        };
        media.video = media.start_video(&cfg.video)?;
        media.audio = media.start_audio(&cfg.audio)?;
        Ok(media)
    }

    /// Opens where we play (the call's speaker, or nothing); it also hands what it plays to
    /// the echo canceller.
    pub fn open_sink(&self, spec: &SinkSpec) -> Result<Box<dyn AudioSink>, CallError> {
        Ok(devices::open_sink(spec, Some(self.echo.clone()))?)
    }

    /// Starts mixing every peer's audio into `sink`, opened from `spec` (a speaker that
    /// stops is opened again, or the default one if it is gone).
    pub fn play_to(&mut self, sink: Box<dyn AudioSink>, spec: SinkSpec) {
        let recovery = matches!(spec, SinkSpec::Speaker(_)).then(|| {
            let (echo, chosen) = (self.echo.clone(), spec.clone());
            let open = move |default: bool| {
                let spec = if default { SinkSpec::Speaker(None) } else { chosen.clone() };
                devices::open_sink(&spec, Some(echo.clone()))
            };
            let named = matches!(spec, SinkSpec::Speaker(Some(_)));
            Recovery::new("speaker", named, Box::new(open), self.notices.clone())
        });
        // The old thread ends (and lets go of its device) before the new one starts.
        self._playout = None;
        self._playout = Some(AudioPlayoutThread::start(sink, recovery, self.audio_map.clone()));
        self.sink_spec = spec;
    }

    /// Plays to `spec` from now on; if it cannot be opened, the old speaker stays.
    pub fn switch_sink(&mut self, spec: SinkSpec) -> Result<(), CallError> {
        // Let go of the old device first: not every device can be opened twice.
        self._playout = None;
        match self.open_sink(&spec) {
            Ok(sink) => {
                self.play_to(sink, spec);
                Ok(())
            }
            Err(e) => {
                // The old speaker again; if that is gone too (moved away from earlier), the
                // default; failing both, nothing for now, with recovery looking for the
                // default: the call must never be left without a playout thread.
                let old = self.sink_spec.clone();
                let fallback = [old.clone(), SinkSpec::Speaker(None)]
                    .into_iter()
                    .find_map(|spec| self.open_sink(&spec).ok().map(|sink| (sink, spec)));
                match fallback {
                    Some((sink, spec)) => self.play_to(sink, spec),
                    None => {
                        tracing::warn!(
                            "cannot open the old speaker or the default; playing to nothing until one is back"
                        );
                        let null = Box::new(crate::devices::synthetic::NullSink::new());
                        self.play_to(null, SinkSpec::Speaker(None));
                    }
                }
                Err(e)
            }
        }
    }

    /// The video bitrate the user asked for (or the default for the picture size), in kbit/s.
    pub fn wanted_kbps(&self) -> u32 {
        let f = self.format;
        f.bitrate_kbps.unwrap_or_else(|| Vp8Config::realtime(f.width, f.height, f.fps).bitrate_kbps)
    }

    /// Opens what `spec` names, with the recovery that opens a camera again when it fails.
    #[allow(clippy::type_complexity)]
    fn open_video(
        &self,
        spec: &VideoSpec,
    ) -> Result<Option<(Box<dyn VideoSource>, Option<Recovery<Box<dyn VideoSource>>>)>, CallError> {
        let f = self.format;
        let Some(src) = devices::open_video(spec, &self.cameras, f.width, f.height, f.fps)? else { return Ok(None) };
        // A camera that fails is opened again, the same one: moving to another camera
        // without asking would show a room the user did not choose to show.
        let recovery = matches!(spec, VideoSpec::Camera(_)).then(|| {
            let (chosen, cameras) = (spec.clone(), self.cameras.clone());
            let open = move |_default: bool| {
                devices::open_video(&chosen, &cameras, f.width, f.height, f.fps)?
                    .ok_or(devices::DeviceError::NotFound { kind: "camera", id: String::new() })
            };
            Recovery::new("camera", false, Box::new(open), self.notices.clone())
        });
        Ok(Some((src, recovery)))
    }

    fn start_video(&self, spec: &VideoSpec) -> Result<Option<VideoPipeline>, CallError> {
        let f = self.format;
        let Some((src, recovery)) = self.open_video(spec)? else { return Ok(None) };
        let mut enc = match spec {
            VideoSpec::Screen(_) => Vp8Config::screen(f.width, f.height, f.fps.min(devices::screen::MAX_FPS)),
            _ => Vp8Config::realtime(f.width, f.height, f.fps),
        };
        if let Some(kbps) = f.bitrate_kbps {
            enc.bitrate_kbps = kbps;
        }
        self.send.keyframe.store(true, Relaxed);
        let self_view = f.self_view.then(|| self.frames.clone());
        Ok(Some(VideoPipeline::start(src, recovery, enc, self.send.clone(), self_view)?))
    }

    fn start_audio(&self, spec: &AudioSpec) -> Result<Option<AudioPipeline>, CallError> {
        let mic = matches!(spec, AudioSpec::Mic(_));
        // Only a microphone hears a room: a synthetic source has no echo or noise to remove
        // (and noise suppression would take its steady tone for noise).
        let processing = mic.then(|| CaptureProcessor::following(self.processing.clone(), Some(self.echo.clone())));
        // A microphone that stops is opened again (or the default one, if it is gone); a
        // synthetic source cannot stop.
        let recovery = mic.then(|| {
            let chosen = spec.clone();
            let open = move |default: bool| {
                let spec = if default { AudioSpec::Mic(None) } else { chosen.clone() };
                devices::open_audio(&spec)?
                    .ok_or(devices::DeviceError::NotFound { kind: "microphone", id: String::new() })
            };
            let named = matches!(spec, AudioSpec::Mic(Some(_)));
            Recovery::new("microphone", named, Box::new(open), self.notices.clone())
        });
        Ok(match devices::open_audio(spec)? {
            Some(src) => Some(AudioPipeline::start(src, recovery, processing, self.muted.clone(), self.send.clone())?),
            None => None,
        })
    }

    /// How loud each voice was since the last call, and who is speaking (`now_ms`: any
    /// monotonic clock).
    pub fn levels(&mut self, now_ms: u64) -> Vec<VoiceLevel> {
        let mut heard = vec![(PeerId(SELF_TILE.into()), self.send.self_level.take())];
        let peers: Vec<_> = self.audio_map.lock().unwrap().iter().map(|(id, a)| (id.clone(), a.clone())).collect();
        heard.extend(peers.into_iter().map(|(id, a)| (id, a.lock().unwrap().level.take())));
        self.speaking.retain(|id, _| heard.iter().any(|(h, _)| h == id));
        heard
            .into_iter()
            .map(|(peer_id, dbfs)| {
                let speaking = self.speaking.entry(peer_id.clone()).or_default().update(dbfs, now_ms);
                VoiceLevel { peer_id, dbfs, speaking }
            })
            .collect()
    }

    /// Our media state as the room hears it.
    pub fn state_msg(&self) -> ClientMsg {
        ClientMsg::State { muted: self.muted.load(Relaxed), camera: self.camera_on && self.camera_live }
    }

    /// The camera stopped or came back; true if what peers should see changed.
    pub fn camera_notice(&mut self, n: &DeviceNotice) -> bool {
        let live = match n {
            DeviceNotice::Stopped { .. } => false,
            DeviceNotice::Back { .. } | DeviceNotice::Moved { .. } => true,
        };
        let before = self.camera_on && self.camera_live;
        self.camera_live = live;
        before != (self.camera_on && self.camera_live)
    }

    /// Echo cancellation, noise suppression and gain control from now on; the microphone
    /// stays open.
    pub fn set_processing(&mut self, s: ProcessingSettings) {
        self.processing.set(s);
    }

    pub fn set_muted(&mut self, muted: bool) {
        self.muted.store(muted, Relaxed);
    }

    /// Camera off stops capture (the device is released); on opens it again. `None` if it
    /// already was so; an error means it stays off.
    pub fn set_camera(&mut self, on: bool) -> Option<Result<(), CallError>> {
        if on == self.camera_on {
            return None;
        }
        if !on {
            self.camera_on = false;
            self.video = None;
            return Some(Ok(()));
        }
        if self.video_spec == VideoSpec::None {
            return Some(Err(CallError::Device(devices::DeviceError::NotFound { kind: "camera", id: String::new() })));
        }
        Some(self.start_video(&self.video_spec.clone()).map(|v| {
            self.video = v;
            self.camera_on = true;
            self.camera_live = true;
        }))
    }

    /// Sends video from `spec` from now on, through the encoder already running (peers get
    /// a keyframe, not a new connection); if it cannot be opened, the old source again.
    /// With the camera off, only the choice changes (turning it on opens the new one).
    pub fn switch_video(&mut self, spec: VideoSpec) -> Result<(), CallError> {
        if spec == VideoSpec::None {
            self.video = None;
            self.video_spec = spec;
            self.camera_on = false;
            return Ok(());
        }
        let Some(pipeline) = &self.video else {
            self.video_spec = spec;
            return Ok(());
        };
        // `spec` is not None here, so opening it gives a source or an error.
        let open = |spec: &VideoSpec| {
            let none = || CallError::Device(devices::DeviceError::NotFound { kind: "camera", id: String::new() });
            self.open_video(spec)?.ok_or_else(none)
        };
        let opened = pipeline.switch(|| open(&spec));
        match opened {
            Ok(()) => {
                self.video_spec = spec;
                self.camera_live = true;
                Ok(())
            }
            Err(e) => {
                let old = self.video_spec.clone();
                if let Err(again) = pipeline.switch(|| open(&old)) {
                    tracing::warn!(error = %again, "cannot open the old camera again either");
                }
                Err(e)
            }
        }
    }

    /// Sends audio from `spec` from now on; if it cannot be opened, the old one stays.
    pub fn switch_audio(&mut self, spec: AudioSpec) -> Result<(), CallError> {
        let new = self.start_audio(&spec)?;
        // The old capture thread ends (and lets go of its device) as the new one takes over.
        self.audio = new;
        Ok(())
    }

    /// Stops capture: the camera light goes out, the microphone closes.
    pub fn stop_capture(&mut self) {
        self.video = None;
        self.audio = None;
    }
}
