//! The media pipelines around the peer connections. CPU work (capture, VP8, Opus, playout)
//! runs on dedicated threads; queues between them are bounded and drop the oldest video
//! rather than block capture.
//!
//! ```text
//! VideoSource -> capture thread -> [newest-frame slot] -> encode thread -> broadcast -> per-peer writers
//! AudioSource -> capture thread (echo, noise, level; Opus) ---------------> broadcast -> per-peer writers
//! per-peer reader -> Vp8Assembler -> VideoPlayout -> [32 frames] -> decode thread -> FrameSink
//! per-peer reader -> JitterBuffer <- playout thread (Opus decode, mix) -> AudioSink -> EchoReference
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use confab_proto::PeerId;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::audio_processing::CaptureProcessor;
use crate::codec::opus::{OpusDecoder, OpusEncoder, FRAME_SAMPLES, SAMPLE_RATE};
use crate::codec::vp8::{Vp8Config, Vp8Decoder, Vp8Encoder};
use crate::device_recovery::Recovery;
use crate::devices::{AudioSink, AudioSource, CapturedFrame, VideoSource};
use crate::frame::I420Frame;
use crate::jitter::{AudioTick, JitterBuffer};
use crate::levels::{level_dbfs, PeakLevel};
use crate::mixer::mix;
use crate::stamp::FrameStamp;
use crate::vp8_rtp::Vp8Frame;
use crate::worker::Worker;

/// One encoded frame on its way to every peer.
#[derive(Clone, Debug)]
pub struct MediaPacket {
    pub data: Bytes,
    pub duration: Duration,
}

/// A decoded remote picture.
#[derive(Clone, Debug)]
pub struct DecodedFrame {
    pub frame: I420Frame,
    /// The sender's stamp, when the picture carries one (synthetic sources): frame number
    /// and capture time in ms since the Unix epoch.
    pub stamp: Option<FrameStamp>,
    /// When it was decoded, ms since the Unix epoch.
    pub decoded_ms: u64,
}

/// Where decoded video goes: the UI, or a test that checks stamps. Called on the decode
/// thread of each peer; keep it quick.
pub trait FrameSink: Send + Sync {
    fn on_frame(&self, peer: &PeerId, frame: &DecodedFrame);
}

/// The peer id under which local frames reach the frame sink when the call's self view is
/// on (the UI's own tile).
pub const SELF_TILE: &str = "self";

/// A sink that drops frames.
pub struct NoFrames;
impl FrameSink for NoFrames {
    fn on_frame(&self, _: &PeerId, _: &DecodedFrame) {}
}

/// The send side shared by all peers of a call.
#[derive(Clone)]
pub struct SendSide {
    pub video: broadcast::Sender<MediaPacket>,
    pub audio: broadcast::Sender<MediaPacket>,
    /// Set by any peer's keyframe request; the encoder clears it (at most every 500 ms).
    pub keyframe: Arc<AtomicBool>,
    /// Set when a peer connection starts sending: it needs a keyframe at once.
    pub new_viewer: Arc<AtomicBool>,
    pub frames_encoded: Arc<AtomicU64>,
    /// What the encoder may send (kbit/s), set from the bandwidth estimates; 0 = as configured.
    pub video_budget_kbps: Arc<AtomicU32>,
    /// How loud our microphone is, as sent (silence while muted).
    pub self_level: Arc<PeakLevel>,
    /// Camera frames skipped as unreadable (corrupt, short), over the call.
    pub frames_bad: Arc<AtomicU64>,
}

impl SendSide {
    pub fn new() -> Self {
        SendSide {
            video: broadcast::channel(32).0,
            audio: broadcast::channel(64).0,
            keyframe: Arc::new(AtomicBool::new(true)),
            new_viewer: Arc::new(AtomicBool::new(false)),
            frames_encoded: Arc::new(AtomicU64::new(0)),
            video_budget_kbps: Arc::new(AtomicU32::new(0)),
            self_level: Arc::new(PeakLevel::default()),
            frames_bad: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Default for SendSide {
    fn default() -> Self {
        Self::new()
    }
}

/// Holds the newest captured frame; a new one replaces an unencoded older one.
struct FrameSlot {
    state: Mutex<(Option<CapturedFrame>, bool)>,
    ready: Condvar,
    replaced: AtomicU64,
}

impl FrameSlot {
    fn put(&self, f: CapturedFrame) {
        let mut s = self.state.lock().unwrap();
        if s.0.replace(f).is_some() {
            self.replaced.fetch_add(1, Relaxed);
        }
        self.ready.notify_one();
    }
    fn close(&self) {
        self.state.lock().unwrap().1 = true;
        self.ready.notify_all();
    }
    fn take(&self) -> Option<CapturedFrame> {
        let mut s = self.state.lock().unwrap();
        loop {
            if s.1 {
                return None;
            }
            if let Some(f) = s.0.take() {
                return Some(f);
            }
            s = self.ready.wait(s).unwrap();
        }
    }
}

/// What the capture thread reads from: the source, and how to get it back when it fails.
/// Switching cameras replaces both under the lock, between two frames.
struct VideoInput {
    source: Option<Box<dyn VideoSource>>,
    recovery: Option<Recovery<Box<dyn VideoSource>>>,
    /// The bad frames `source` had reported, to count only what is new; it starts again
    /// with every source.
    seen_bad: u64,
}

/// Capture + encode threads of the local video. Every frame is fitted (cropped, scaled) to
/// the encoder's size, so a new source, whatever its size, feeds the same encoder: peers
/// see a keyframe, never a renegotiation. Dropping it stops capture at once (the source is
/// dropped, so a camera's light goes out) and joins both threads.
pub struct VideoPipeline {
    slot: Arc<FrameSlot>,
    input: Arc<Mutex<VideoInput>>,
    out: SendSide,
    _capture: Worker,
    _encode: Worker,
}

/// Least time between two keyframes the encoder makes on request.
const MIN_KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

impl VideoPipeline {
    /// `recovery` opens the source again when it fails (a camera); `None` ends the video
    /// instead.
    pub fn start(
        source: Box<dyn VideoSource>,
        recovery: Option<Recovery<Box<dyn VideoSource>>>,
        enc: Vp8Config,
        out: SendSide,
        self_view: Option<Arc<dyn FrameSink>>,
    ) -> Result<Self, crate::codec::vp8::Vp8Error> {
        let mut encoder = Vp8Encoder::new(enc)?;
        let slot = Arc::new(FrameSlot {
            state: Mutex::new((None, false)),
            ready: Condvar::new(),
            replaced: AtomicU64::new(0),
        });
        let input = Arc::new(Mutex::new(VideoInput { source: Some(source), recovery, seen_bad: 0 }));
        let (slot1, input1, bad1) = (slot.clone(), input.clone(), out.frames_bad.clone());
        let capture = Worker::spawn("video-capture", move |stop| {
            let mut last_attempt: Option<Instant> = None;
            while !stop.is_set() {
                let mut guard = input1.lock().unwrap();
                let VideoInput { source, recovery, seen_bad } = &mut *guard;
                let Some(src) = source.as_mut() else {
                    // Stopped, or being switched: try to get it back once a second.
                    *seen_bad = 0;
                    if let Some(r) = recovery.as_mut() {
                        if last_attempt.is_none_or(|t| t.elapsed() >= REOPEN_EVERY) {
                            last_attempt = Some(Instant::now());
                            *source = r.attempt();
                            if source.is_some() {
                                continue;
                            }
                        }
                    }
                    drop(guard);
                    std::thread::park_timeout(Duration::from_millis(50));
                    continue;
                };
                let got = src.next_frame();
                let now_bad = src.bad_frames();
                bad1.fetch_add(now_bad.saturating_sub(*seen_bad), Relaxed);
                *seen_bad = now_bad;
                match got {
                    Ok(Some(f)) => {
                        if let Some(r) = recovery.as_mut() {
                            r.delivering();
                        }
                        drop(guard);
                        let mut frame = f.frame.fitted(enc.width, enc.height);
                        if let Some(stamp) = f.stamp {
                            stamp.draw(&mut frame);
                        }
                        let f = CapturedFrame { frame, ..f };
                        slot1.put(match &self_view {
                            Some(view) => {
                                // Lend the frame to the self view without copying it.
                                let d = DecodedFrame { frame: f.frame, stamp: None, decoded_ms: f.capture_ms };
                                view.on_frame(&PeerId(SELF_TILE.into()), &d);
                                CapturedFrame { frame: d.frame, ..f }
                            }
                            None => f,
                        });
                    }
                    Ok(None) => break,
                    Err(e) => match recovery.as_mut() {
                        Some(r) => {
                            debug!(error = %e, "video source stopped");
                            // A camera that failed usually opens again at once; the call hears
                            // of it only if it does not.
                            r.interrupted(e);
                            *source = None;
                            last_attempt = None;
                        }
                        None => {
                            warn!(error = %e, "video capture failed");
                            break;
                        }
                    },
                }
            }
            slot1.close();
            // The source goes with the pipeline's input, when the pipeline drops.
        })
        .expect("spawn capture thread");
        let slot2 = slot.clone();
        let duration = Duration::from_nanos(1_000_000_000 / enc.fps.max(1) as u64);
        let out2 = out.clone();
        let encode = Worker::spawn("video-encode", move |_| {
            let out = out2;
            let mut last_key: Option<Instant> = None;
            while let Some(f) = slot2.take() {
                // Fitted on capture already; a frame of another size would be one too many.
                let frame = f.frame.fitted(enc.width, enc.height);
                // Honour keyframe requests at most every 500 ms (the first always): on a
                // congested path each keyframe is a burst that causes the next loss and the
                // next request, a storm that starves everything else. A request that waits
                // is kept and served when the interval is up.
                let key = if out.new_viewer.swap(false, Relaxed) {
                    out.keyframe.store(false, Relaxed); // this one serves any request too
                    true
                } else if last_key.is_none_or(|t: Instant| t.elapsed() >= MIN_KEYFRAME_INTERVAL) {
                    out.keyframe.swap(false, Relaxed)
                } else {
                    false
                };
                if key {
                    last_key = Some(Instant::now());
                }
                let budget = out.video_budget_kbps.load(Relaxed);
                let current = encoder.settings().bitrate_kbps;
                // Small moves are noise; each reconfiguration costs the rate control.
                if budget > 0 && budget.abs_diff(current) * 20 > current {
                    if let Err(e) = encoder.set_bitrate(budget) {
                        warn!(error = %e, kbps = budget, "cannot change the video bitrate");
                    }
                }
                match encoder.encode(&frame, key) {
                    Ok(Some(e)) => {
                        out.frames_encoded.fetch_add(1, Relaxed);
                        // No receivers yet is fine: nobody is connected.
                        let _ = out.video.send(MediaPacket { data: Bytes::from(e.data), duration });
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "video encode failed");
                        break;
                    }
                }
            }
        })
        .expect("spawn encode thread");
        Ok(VideoPipeline { slot, input, out, _capture: capture, _encode: encode })
    }

    /// Sends video from another source from now on, through the same encoder. The old
    /// source is closed first (a camera may not open twice, and a USB bus may not carry
    /// two), then `open` runs; if it fails, the pipeline has no source and the error is
    /// returned (the caller puts the old one back). The next frame is a keyframe.
    pub fn switch<E>(
        &self,
        open: impl FnOnce() -> Result<(Box<dyn VideoSource>, Option<Recovery<Box<dyn VideoSource>>>), E>,
    ) -> Result<(), E> {
        let mut input = self.input.lock().unwrap();
        input.source = None;
        input.recovery = None;
        let (source, recovery) = open()?;
        input.source = Some(source);
        input.recovery = recovery;
        input.seen_bad = 0;
        // Every peer needs a keyframe of the new picture at once; a delta frame against
        // the old camera's picture would be garbage.
        self.out.new_viewer.store(true, Relaxed);
        Ok(())
    }

    /// Frames the encoder never saw because a newer one replaced them.
    pub fn frames_replaced(&self) -> u64 {
        self.slot.replaced.load(Relaxed)
    }
}

impl Drop for VideoPipeline {
    fn drop(&mut self) {
        // Capture stops before anything else (the camera light goes out at once, not a frame
        // later); the encoder ends when the slot closes. `_capture`, then `_encode`, are
        // joined next; the source is dropped with the input once the capture thread let go.
        self._capture.ask_stop();
        self.slot.close();
        if let Ok(mut input) = self.input.try_lock() {
            input.source = None;
        }
    }
}

/// How often a stopped device is tried again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Frames a reopened speaker must take before it counts as playing again (1 s).
const SPEAKER_PLAYS: u32 = 50;

/// Capture + Opus thread of the local audio. `muted` stops sending (the device stays open
/// so unmuting is instant). A microphone's frames go through `processing` first (echo,
/// noise, level); it keeps running while muted, so the echo canceller stays converged. A
/// microphone that stops delivering (suspended, unplugged, its server restarted) is opened
/// again through `recovery` until it is back, or the default one if it is gone.
pub struct AudioPipeline {
    _thread: Worker,
}

impl AudioPipeline {
    pub fn start(
        source: Box<dyn AudioSource>,
        mut recovery: Option<Recovery<Box<dyn AudioSource>>>,
        mut processing: Option<CaptureProcessor>,
        muted: Arc<AtomicBool>,
        out: SendSide,
    ) -> Result<Self, crate::codec::opus::OpusError> {
        let mut enc = OpusEncoder::new(32_000)?;
        let thread = Worker::spawn("audio-capture", move |stop| {
            let mut source = Some(source);
            while !stop.is_set() {
                let Some(src) = source.as_mut() else {
                    let Some(r) = recovery.as_mut() else { break };
                    source = r.attempt();
                    if source.is_none() {
                        std::thread::park_timeout(REOPEN_EVERY);
                    }
                    continue;
                };
                match src.next_frame() {
                    Ok(Some(mut pcm)) => {
                        if let Some(r) = recovery.as_mut() {
                            r.delivering();
                        }
                        if let Some(p) = processing.as_mut() {
                            p.capture(&mut pcm);
                        }
                        if muted.load(Relaxed) {
                            continue;
                        }
                        out.self_level.note(level_dbfs(&pcm));
                        match enc.encode(&pcm) {
                            Ok(p) => {
                                let _ = out
                                    .audio
                                    .send(MediaPacket { data: Bytes::from(p), duration: Duration::from_millis(20) });
                            }
                            Err(e) => warn!(error = %e, "opus encode failed"),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => match recovery.as_mut() {
                        Some(r) => {
                            debug!(error = %e, "microphone stopped");
                            r.failed(e);
                            source = None;
                        }
                        None => {
                            warn!(error = %e, "audio capture failed");
                            break;
                        }
                    },
                }
            }
        })
        .expect("spawn audio thread");
        Ok(AudioPipeline { _thread: thread })
    }
}

/// Counters of one remote peer's media, shared by its threads and the call.
#[derive(Default, Debug)]
pub struct PeerMediaStats {
    /// Round trip to the peer in ms (0 until known): how long a retransmission takes.
    pub rtt_ms: AtomicU64,
    pub frames_decoded: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub keyframes_requested: AtomicU64,
    pub first_frame: OnceLock<Instant>,
}

/// A remote peer's audio as the playout thread sees it.
pub struct PeerAudio {
    jitter: JitterBuffer,
    decoder: OpusDecoder,
    /// The last ~1.4 s heard from this peer, for tone detection.
    recent: VecDeque<i16>,
    /// How loud this peer is, as played.
    pub level: PeakLevel,
    epoch: Instant,
}

/// 72 frames (1.44 s): room for the 65536-sample window tone detection uses.
const RECENT_SAMPLES: usize = 72 * FRAME_SAMPLES;
const TONE_WINDOW: usize = 65_536;

impl PeerAudio {
    pub fn new() -> Result<Self, crate::codec::opus::OpusError> {
        Ok(PeerAudio {
            jitter: JitterBuffer::new(),
            decoder: OpusDecoder::new()?,
            recent: VecDeque::with_capacity(RECENT_SAMPLES),
            level: PeakLevel::default(),
            epoch: Instant::now(),
        })
    }

    pub fn push(&mut self, seq: u16, ts: u32, payload: Vec<u8>) {
        let now = self.epoch.elapsed().as_secs_f64() * 1000.0;
        self.jitter.push(seq, ts, payload, now);
    }

    fn next_frame(&mut self) -> Option<[i16; FRAME_SAMPLES]> {
        let pcm = match self.jitter.pop() {
            AudioTick::Packet(p) => self.decoder.decode(&p).ok(),
            AudioTick::Lost { next } => self.decoder.conceal(next.as_deref()).ok(),
            AudioTick::Silence => None,
        }?;
        if self.recent.len() + FRAME_SAMPLES > RECENT_SAMPLES {
            self.recent.drain(..FRAME_SAMPLES);
        }
        self.recent.extend(pcm.iter().copied());
        self.level.note(level_dbfs(&pcm));
        Some(pcm)
    }

    /// The dominant frequency heard lately, if enough was heard.
    pub fn tone_hz(&self) -> Option<f64> {
        if self.recent.len() < TONE_WINDOW {
            return None;
        }
        let v: Vec<i16> = self.recent.iter().copied().collect();
        crate::tone::dominant_frequency(&v, SAMPLE_RATE)
    }

    /// Audio packets that arrived from this peer.
    pub fn packets_received(&self) -> u64 {
        self.jitter.stats.received
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter.jitter_ms()
    }
}

pub type PeerAudioMap = Arc<Mutex<HashMap<PeerId, Arc<Mutex<PeerAudio>>>>>;

/// The audio playout thread: every 20 ms (paced by the sink), one frame from each peer,
/// mixed. A speaker that stops is opened again through `recovery` (or the default one
/// instead); meanwhile the mix goes on at real-time pace into nothing, so that every peer's
/// jitter buffer keeps draining and sound resumes in step.
pub struct AudioPlayoutThread {
    _thread: Worker,
}

impl AudioPlayoutThread {
    pub fn start(
        mut sink: Box<dyn AudioSink>,
        mut recovery: Option<Recovery<Box<dyn AudioSink>>>,
        peers: PeerAudioMap,
    ) -> Self {
        let thread = Worker::spawn("audio-playout", move |stop| {
            // While the speaker is being opened again: when it was last tried.
            let mut reopening: Option<Instant> = None;
            // Frames the speaker took since it was opened again; enough of them mean it plays.
            let mut played = 0u32;
            while !stop.is_set() {
                if let (Some(since), Some(r)) = (reopening, recovery.as_mut()) {
                    if since.elapsed() >= REOPEN_EVERY {
                        match r.attempt() {
                            Some(s) => {
                                sink = s;
                                reopening = None;
                                played = 0;
                            }
                            None => reopening = Some(Instant::now()),
                        }
                    }
                }
                let list: Vec<Arc<Mutex<PeerAudio>>> = peers.lock().unwrap().values().cloned().collect();
                let frames: Vec<[i16; FRAME_SAMPLES]> =
                    list.iter().filter_map(|p| p.lock().unwrap().next_frame()).collect();
                let mixed = mix(frames.iter());
                match sink.play(&mixed) {
                    Ok(()) if reopening.is_none() => {
                        // A speaker that does not play blocks and fails within seconds: a
                        // second of frames taken means it plays.
                        played += 1;
                        if played == SPEAKER_PLAYS {
                            if let Some(r) = recovery.as_mut() {
                                r.delivering();
                            }
                        }
                    }
                    Ok(()) => {}
                    Err(e) => match recovery.as_mut() {
                        Some(r) => {
                            debug!(error = %e, "speaker stopped");
                            r.failed(e);
                            // The first attempt at once: a device that is simply gone moves
                            // to the default without a gap worth mentioning.
                            reopening = Some(Instant::now() - REOPEN_EVERY);
                            sink = Box::new(crate::devices::synthetic::NullSink::new());
                        }
                        None => {
                            warn!(error = %e, "audio playback failed");
                            break;
                        }
                    },
                }
            }
            debug!("playout stopped");
        })
        .expect("spawn playout thread");
        AudioPlayoutThread { _thread: thread }
    }
}

/// One remote peer's video decoder thread. Frames come in through a small bounded queue;
/// the thread asks for a keyframe (through `want_keyframe`) when it cannot decode.
pub struct VideoDecodeThread {
    pub tx: std::sync::mpsc::SyncSender<Vp8Frame>,
    /// Set when a frame was dropped before reaching the decoder.
    lost: Arc<AtomicBool>,
    /// Ends when `tx` closes (it drains the frames queued first), not by the stop flag.
    _thread: Worker,
}

impl VideoDecodeThread {
    pub fn start(
        peer: PeerId,
        sink: Arc<dyn FrameSink>,
        stats: Arc<PeerMediaStats>,
        want_keyframe: tokio::sync::mpsc::Sender<()>,
        on_first: Box<dyn FnOnce() + Send>,
    ) -> Self {
        // Room for a burst: frames held while a retransmission fills a hole come out all at
        // once when it arrives (up to the retransmission wait, ~0.8 s at 30 fps). Dropping one
        // of them would cost a keyframe round trip, the very freeze the wait avoided.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vp8Frame>(32);
        let lost = Arc::new(AtomicBool::new(false));
        let lost1 = lost.clone();
        let thread = Worker::spawn(format!("video-decode-{}", &peer.0[..peer.0.len().min(6)]), move |_| {
            let mut dec = match Vp8Decoder::new(1) {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot start the VP8 decoder");
                    return;
                }
            };
            let mut on_first = Some(on_first);
            // Until a keyframe decodes, delta frames only make garbage.
            let mut need_key = true;
            while let Ok(f) = rx.recv() {
                let key = f.keyframe;
                if f.after_loss || lost1.swap(false, Relaxed) {
                    // The reference chain broke: only a keyframe decodes cleanly now.
                    need_key = true;
                }
                if need_key && !key {
                    stats.frames_dropped.fetch_add(1, Relaxed);
                    let _ = want_keyframe.try_send(());
                    continue;
                }
                match dec.decode(&f.data) {
                    Ok(Some(frame)) => {
                        need_key = false;
                        stats.frames_decoded.fetch_add(1, Relaxed);
                        let stamp = FrameStamp::read(&frame);
                        let decoded = DecodedFrame { frame, stamp, decoded_ms: confab_proto::wall_ms() };
                        if let Some(f) = on_first.take() {
                            let _ = stats.first_frame.set(Instant::now());
                            f();
                        }
                        sink.on_frame(&peer, &decoded);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        debug!(error = %e, "undecodable frame; asking for a keyframe");
                        stats.frames_dropped.fetch_add(1, Relaxed);
                        need_key = true;
                        let _ = want_keyframe.try_send(());
                    }
                }
            }
        })
        .expect("spawn decode thread");
        VideoDecodeThread { tx, lost, _thread: thread }
    }

    /// A frame was dropped on the way: the decoder must wait for a keyframe.
    pub fn mark_loss(&self) {
        self.lost.store(true, Relaxed);
    }
}

impl Drop for VideoDecodeThread {
    fn drop(&mut self) {
        // Closing our sender ends the thread once the channel drains.
        let (dead, _) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.tx, dead));
        // `_thread` is joined next, once it has drained the queue.
    }
}
