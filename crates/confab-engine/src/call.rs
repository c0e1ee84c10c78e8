//! A call: one room, one peer connection per remote peer (a mesh), local capture sent to
//! all of them, and their media decoded and played. [`Call`] is the handle: commands in,
//! [`CallEvent`]s out. One task owns all the call's state; dropping the handle (or `leave`)
//! ends it, which closes every peer connection and stops every thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_proto::{ClientMsg, ErrorCode, IceServer, PeerId, PeerInfo, ServerMsg, SignalData};
use rtc::media::Sample;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState, StatsSelector};
use webrtc::rtp_transceiver::RtpSender;

use crate::codec::vp8::Vp8Config;
use crate::devices::{self, AudioSpec, SinkSpec, VideoSpec};
use crate::media::{
    AudioPipeline, FrameSink, MediaPacket, PeerAudio, PeerAudioMap, PeerMediaStats, PlayoutThread, SendSide,
    VideoDecodeThread, VideoPipeline,
};
use crate::negotiation::{Negotiation, OfferAction};
use crate::rtc::{self as rtcglue, IcePolicy, PcEvent, RtcSettings};
use crate::signaling::{self, SignalEvent, TlsOptions};
use crate::vp8_rtp::{Vp8Assembler, Vp8Frame};

/// Everything needed to join a call.
#[derive(Clone, Debug)]
pub struct CallConfig {
    /// `ws://host:port/ws` or `wss://...`.
    pub server: String,
    pub tls: TlsOptions,
    pub room: String,
    pub name: String,
    pub password: Option<String>,
    pub video: VideoSpec,
    pub audio: AudioSpec,
    pub sink: SinkSpec,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// VP8 target in kbit/s; `None` picks one for the size.
    pub bitrate_kbps: Option<u32>,
    pub ice_policy: IcePolicy,
    /// Local UDP addresses for ICE host candidates.
    pub udp_bind: Vec<String>,
    /// Extra ICE servers besides those the signaling server hands out.
    pub extra_ice_servers: Vec<IceServer>,
    /// Also hand captured local frames to the frame sink, as peer [`SELF_TILE`] (the UI's
    /// self view).
    pub self_view: bool,
}

/// The peer id under which local frames reach the frame sink when `self_view` is on.
pub const SELF_TILE: &str = "self";

impl CallConfig {
    pub fn new(server: impl Into<String>, room: impl Into<String>, name: impl Into<String>) -> Self {
        CallConfig {
            server: server.into(),
            tls: TlsOptions::default(),
            room: room.into(),
            name: name.into(),
            password: None,
            video: VideoSpec::Synthetic,
            audio: AudioSpec::Synthetic(440.0),
            sink: SinkSpec::Null,
            width: 1280,
            height: 720,
            fps: 30,
            bitrate_kbps: None,
            ice_policy: IcePolicy::All,
            udp_bind: vec!["0.0.0.0:0".into()],
            extra_ice_servers: Vec::new(),
            self_view: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Signal(#[from] signaling::SignalError),
    #[error("the server refused to let us in: {message} ({code})")]
    Refused { code: ErrorCode, message: String },
    #[error("the server closed the connection before we joined{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    #[error("cannot start the video encoder: {0}")]
    Video(#[from] crate::codec::vp8::Vp8Error),
    #[error("cannot start the audio codec: {0}")]
    Audio(#[from] crate::codec::opus::OpusError),
    #[error("the call has ended")]
    Ended,
}

/// Once-a-second figures for one remote peer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PeerStats {
    pub peer_id: PeerId,
    pub fps_sent: f64,
    pub fps_received: f64,
    pub bitrate_in_kbps: f64,
    pub bitrate_out_kbps: f64,
    pub rtt_ms: Option<f64>,
    pub packets_lost: i64,
    pub jitter_ms: f64,
    pub frames_decoded: u64,
    pub frames_dropped: u64,
    /// host, srflx, prflx or relay: how the selected ICE pair reaches the peer.
    pub candidate_type: Option<String>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub audio_tone_hz: Option<f64>,
    pub audio_packets_received: u64,
}

/// What a call reports.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEvent {
    Joined {
        peer_id: PeerId,
        room: String,
        max_peers: u32,
        peers: Vec<PeerInfo>,
    },
    PeerJoined {
        peer: PeerInfo,
    },
    PeerLeft {
        peer_id: PeerId,
    },
    Connection {
        peer_id: PeerId,
        state: String,
    },
    /// The first decoded picture from a peer, `ms` after both of us were in the room.
    FirstFrame {
        peer_id: PeerId,
        ms: u64,
    },
    RemoteState {
        peer_id: PeerId,
        muted: bool,
        camera: bool,
    },
    Chat {
        from: PeerId,
        name: String,
        text: String,
        ts: u64,
    },
    Stats {
        stats: PeerStats,
    },
    Error {
        message: String,
    },
    /// The call is over; no more events follow.
    Ended {
        reason: String,
    },
}

enum Command {
    Mute(bool),
    Camera(bool),
    SwitchVideo(VideoSpec, oneshot::Sender<Result<(), CallError>>),
    SwitchAudio(AudioSpec, oneshot::Sender<Result<(), CallError>>),
    Chat(String),
    Leave(oneshot::Sender<()>),
}

/// The handle of a running call: the commands of [`CallController`] (through `Deref`) plus
/// the event stream.
pub struct Call {
    control: CallController,
    events: mpsc::Receiver<CallEvent>,
    /// Our id in the room.
    pub peer_id: PeerId,
}

/// Sends commands to a running call; cheap to clone, so a UI can keep one while a task
/// reads the events.
#[derive(Clone)]
pub struct CallController {
    cmd: mpsc::Sender<Command>,
}

impl std::ops::Deref for Call {
    type Target = CallController;
    fn deref(&self) -> &CallController {
        &self.control
    }
}

impl Call {
    /// Opens the devices, connects to the server and joins the room. Returns once the
    /// server said `joined`; the first event is [`CallEvent::Joined`].
    pub async fn join(cfg: CallConfig, frames: Arc<dyn FrameSink>) -> Result<Call, CallError> {
        // Devices first: a busy camera should fail the join, not half a call.
        let send = SendSide::new();
        let muted = Arc::new(AtomicBool::new(false));
        let video = start_video(&cfg, &cfg.video, &send, &frames)?;
        let audio = match devices::open_audio(&cfg.audio)? {
            Some(src) => Some(AudioPipeline::start(src, muted.clone(), send.clone())?),
            None => None,
        };
        let sink = devices::open_sink(&cfg.sink)?;

        let (sig_tx, mut sig_rx) = signaling::connect(&cfg.server, &cfg.tls).await?;
        let _ = sig_tx
            .send(ClientMsg::Join { room: cfg.room.clone(), name: cfg.name.clone(), password: cfg.password.clone() })
            .await;
        let (me, room, max_peers, peers, ice) = loop {
            match sig_rx.recv().await {
                Some(SignalEvent::Msg(ServerMsg::Joined { peer_id, room, max_peers, peers, ice_servers, .. })) => {
                    break (peer_id, room, max_peers, peers, ice_servers)
                }
                Some(SignalEvent::Msg(ServerMsg::Error { code, message })) => {
                    return Err(CallError::Refused { code, message })
                }
                Some(SignalEvent::Msg(_)) => continue,
                Some(SignalEvent::Closed(r)) => return Err(CallError::Closed(r)),
                None => return Err(CallError::Closed(None)),
            }
        };
        info!(peer = %me, %room, peers = peers.len(), "joined");
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (pc_tx, pc_rx) = mpsc::channel(1024);
        let mut ice_servers = ice;
        ice_servers.extend(cfg.extra_ice_servers.iter().cloned());
        let audio_map: PeerAudioMap = Arc::new(Mutex::new(HashMap::new()));
        let playout = PlayoutThread::start(sink, audio_map.clone());
        let _ = ev_tx.send(CallEvent::Joined { peer_id: me.clone(), room, max_peers, peers: peers.clone() }).await;
        let rtc = RtcSettings { ice_servers, policy: cfg.ice_policy, udp_bind: cfg.udp_bind.clone() };
        let mut task = CallTask {
            cfg,
            me: me.clone(),
            sig_tx,
            ev_tx,
            pc_tx,
            rtc,
            peers: HashMap::new(),
            send,
            video,
            audio,
            _playout: playout,
            audio_map,
            muted,
            camera_on: true,
            frames,
        };
        // Everyone already here offers to us; we answer (we are the polite side).
        for p in peers {
            task.add_peer(p, true).await;
        }
        tokio::spawn(task.run(cmd_rx, sig_rx, pc_rx));
        Ok(Call { control: CallController { cmd: cmd_tx }, events: ev_rx, peer_id: me })
    }

    /// The next event; `None` after [`CallEvent::Ended`].
    pub async fn next_event(&mut self) -> Option<CallEvent> {
        self.events.recv().await
    }

    /// A handle for commands that outlives borrows of the call.
    pub fn controller(&self) -> CallController {
        self.control.clone()
    }

    /// Leaves the room: capture stops, every peer connection closes, every thread ends.
    /// Returns when all of that is done.
    pub async fn leave(self) {
        self.control.leave().await
    }
}

impl CallController {
    pub async fn set_muted(&self, muted: bool) {
        let _ = self.cmd.send(Command::Mute(muted)).await;
    }

    /// Camera off stops capture (the device is released); on opens it again.
    pub async fn set_camera(&self, on: bool) {
        let _ = self.cmd.send(Command::Camera(on)).await;
    }

    pub async fn switch_video(&self, spec: VideoSpec) -> Result<(), CallError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::SwitchVideo(spec, tx)).await.map_err(|_| CallError::Ended)?;
        rx.await.map_err(|_| CallError::Ended)?
    }

    pub async fn switch_audio(&self, spec: AudioSpec) -> Result<(), CallError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::SwitchAudio(spec, tx)).await.map_err(|_| CallError::Ended)?;
        rx.await.map_err(|_| CallError::Ended)?
    }

    pub async fn chat(&self, text: impl Into<String>) {
        let _ = self.cmd.send(Command::Chat(text.into())).await;
    }

    /// Leaves the room and waits until everything is closed. Harmless if already ended.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn start_video(
    cfg: &CallConfig,
    spec: &VideoSpec,
    send: &SendSide,
    frames: &Arc<dyn FrameSink>,
) -> Result<Option<VideoPipeline>, CallError> {
    let Some(src) = devices::open_video(spec, cfg.width, cfg.height, cfg.fps)? else { return Ok(None) };
    let mut enc = Vp8Config::realtime(cfg.width, cfg.height, cfg.fps);
    if let Some(kbps) = cfg.bitrate_kbps {
        enc.bitrate_kbps = kbps;
    }
    send.keyframe.store(true, Relaxed);
    let self_view = cfg.self_view.then(|| frames.clone());
    Ok(Some(VideoPipeline::start(src, enc, send.clone(), self_view)?))
}

struct PeerSession {
    info: PeerInfo,
    pc: Arc<dyn PeerConnection>,
    neg: Negotiation,
    connected: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// When both of us were in the room: the zero of `first_frame_ms`.
    since: Instant,
    stats: Arc<PeerMediaStats>,
    audio: Arc<Mutex<PeerAudio>>,
    last: StatsSample,
    /// Whether "could not connect" was already reported.
    reported_stuck: bool,
}

/// What to add to a connection failure when only TURN relays may be used: then the relay
/// is the likely culprit.
fn relay_hint(policy: IcePolicy) -> &'static str {
    if policy == IcePolicy::Relay {
        " through the TURN relay (check its address and credentials)"
    } else {
        ""
    }
}

/// How long a new peer connection may take before the user is told it is not coming up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(8);

#[derive(Default, Clone, Copy)]
struct StatsSample {
    at: Option<Instant>,
    bytes_in: u64,
    bytes_out: u64,
    frames_decoded: u64,
    frames_encoded: u64,
}

struct CallTask {
    cfg: CallConfig,
    me: PeerId,
    sig_tx: mpsc::Sender<ClientMsg>,
    ev_tx: mpsc::Sender<CallEvent>,
    pc_tx: mpsc::Sender<(PeerId, PcEvent)>,
    rtc: RtcSettings,
    peers: HashMap<PeerId, PeerSession>,
    send: SendSide,
    video: Option<VideoPipeline>,
    audio: Option<AudioPipeline>,
    _playout: PlayoutThread,
    audio_map: PeerAudioMap,
    muted: Arc<AtomicBool>,
    camera_on: bool,
    frames: Arc<dyn FrameSink>,
}

impl CallTask {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut sig_rx: mpsc::Receiver<SignalEvent>,
        mut pc_rx: mpsc::Receiver<(PeerId, PcEvent)>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut leave_ack = None;
        let reason = loop {
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Leave(ack)) => { leave_ack = Some(ack); break "left".to_string(); }
                    Some(c) => self.command(c).await,
                    None => break "the call handle was dropped".into(),
                },
                ev = sig_rx.recv() => match ev {
                    Some(SignalEvent::Msg(m)) => self.server_msg(m).await,
                    Some(SignalEvent::Closed(r)) => break format!("signaling connection lost{}", r.map(|r| format!(": {r}")).unwrap_or_default()),
                    None => break "signaling connection lost".into(),
                },
                Some((peer, ev)) = pc_rx.recv() => self.pc_event(peer, ev).await,
                _ = tick.tick() => self.stats().await,
            }
        };
        info!(%reason, "call ending");
        let _ = self.sig_tx.send(ClientMsg::Leave).await;
        // Stop capture first: the camera light goes out before anything else.
        self.video = None;
        self.audio = None;
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        for p in peers {
            self.remove_peer(&p).await;
        }
        let _ = self.ev_tx.send(CallEvent::Ended { reason }).await;
        drop(self);
        if let Some(ack) = leave_ack {
            let _ = ack.send(());
        }
    }

    async fn emit(&self, ev: CallEvent) {
        let _ = self.ev_tx.send(ev).await;
    }

    async fn signal(&self, to: &PeerId, data: SignalData) {
        let _ = self.sig_tx.send(ClientMsg::Signal { to: to.clone(), data }).await;
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Mute(m) => {
                self.muted.store(m, Relaxed);
                self.send_state().await;
            }
            Command::Camera(on) => {
                if on == self.camera_on {
                    return;
                }
                self.camera_on = on;
                if on {
                    match start_video(&self.cfg, &self.cfg.video.clone(), &self.send, &self.frames) {
                        Ok(v) => self.video = v,
                        Err(e) => {
                            self.camera_on = false;
                            self.emit(CallEvent::Error { message: format!("cannot turn the camera on: {e}") }).await;
                        }
                    }
                } else {
                    self.video = None;
                }
                self.send_state().await;
            }
            Command::SwitchVideo(spec, ack) => {
                // Release the old camera first: some cannot be opened twice.
                self.video = None;
                let r = start_video(&self.cfg, &spec, &self.send, &self.frames).map(|v| {
                    self.video = v;
                    self.cfg.video = spec;
                });
                if r.is_err() {
                    self.video =
                        start_video(&self.cfg, &self.cfg.video.clone(), &self.send, &self.frames).ok().flatten();
                }
                let _ = ack.send(r);
            }
            Command::SwitchAudio(spec, ack) => {
                let r = (|| -> Result<(), CallError> {
                    let src = devices::open_audio(&spec)?;
                    self.audio = match src {
                        Some(s) => Some(AudioPipeline::start(s, self.muted.clone(), self.send.clone())?),
                        None => None,
                    };
                    self.cfg.audio = spec;
                    Ok(())
                })();
                let _ = ack.send(r);
            }
            Command::Chat(text) => {
                let _ = self.sig_tx.send(ClientMsg::Chat { text }).await;
            }
            Command::Leave(_) => unreachable!("handled by run"),
        }
    }

    async fn send_state(&self) {
        let _ = self.sig_tx.send(ClientMsg::State { muted: self.muted.load(Relaxed), camera: self.camera_on }).await;
    }

    async fn server_msg(&mut self, m: ServerMsg) {
        match m {
            ServerMsg::PeerJoined { peer } => {
                self.emit(CallEvent::PeerJoined { peer: peer.clone() }).await;
                self.add_peer(peer, false).await;
            }
            ServerMsg::PeerLeft { peer_id } => {
                self.remove_peer(&peer_id).await;
                self.emit(CallEvent::PeerLeft { peer_id }).await;
            }
            ServerMsg::Signal { from, data } => self.remote_signal(from, data).await,
            ServerMsg::State { from, muted, camera } => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.info.muted = muted;
                    p.info.camera = camera;
                }
                self.emit(CallEvent::RemoteState { peer_id: from, muted, camera }).await;
            }
            ServerMsg::Chat { from, name, text, ts } => self.emit(CallEvent::Chat { from, name, text, ts }).await,
            ServerMsg::Error { code, message } => {
                self.emit(CallEvent::Error { message: format!("server: {message} ({code})") }).await
            }
            ServerMsg::Joined { .. } | ServerMsg::Left { .. } => {}
        }
    }

    /// A new remote peer. `polite`: they were here first and will offer; else we offer.
    async fn add_peer(&mut self, info: PeerInfo, polite: bool) {
        let id = info.peer_id.clone();
        let pc = match rtcglue::build_pc(&id, &self.rtc, self.pc_tx.clone()).await {
            Ok(pc) => pc,
            Err(e) => {
                self.emit(CallEvent::Error { message: format!("cannot set up a connection to {}: {e}", info.name) })
                    .await;
                return;
            }
        };
        let (connected, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            match add_sender(&pc, kind, &self.me, &self.send, connected.subscribe()).await {
                Ok(mut t) => tasks.append(&mut t),
                Err(e) => warn!(error = %e, ?kind, "cannot add a track"),
            }
        }
        let audio = match PeerAudio::new() {
            Ok(a) => Arc::new(Mutex::new(a)),
            Err(e) => {
                warn!(error = %e, "opus decoder");
                return;
            }
        };
        self.audio_map.lock().unwrap().insert(id.clone(), audio.clone());
        let mut session = PeerSession {
            info,
            pc: pc.clone(),
            neg: Negotiation::new(polite),
            connected,
            tasks,
            since: Instant::now(),
            stats: Arc::new(PeerMediaStats::default()),
            audio,
            last: StatsSample::default(),
            reported_stuck: false,
        };
        if !polite {
            session.neg.offer_sent();
            match async {
                let offer = pc.create_offer(None).await?;
                pc.set_local_description(offer.clone()).await?;
                Ok::<_, webrtc::error::Error>(with_host_candidates(&pc, offer).await)
            }
            .await
            {
                Ok(offer) => self.signal(&id, SignalData::Sdp(rtcglue::from_rtc_sdp(&offer))).await,
                Err(e) => self.emit(CallEvent::Error { message: format!("cannot make an offer: {e}") }).await,
            }
        }
        self.peers.insert(id, session);
    }

    async fn remove_peer(&mut self, id: &PeerId) {
        self.audio_map.lock().unwrap().remove(id);
        if let Some(p) = self.peers.remove(id) {
            for t in &p.tasks {
                t.abort();
            }
            let _ = p.pc.close().await;
            for t in p.tasks {
                let _ = t.await;
            }
        }
    }

    async fn remote_signal(&mut self, from: PeerId, data: SignalData) {
        let Some(p) = self.peers.get_mut(&from) else {
            debug!(%from, "signal from a peer we do not know");
            return;
        };
        let pc = p.pc.clone();
        let result: Result<(), webrtc::error::Error> = async {
            match data {
                SignalData::Sdp(d) => match d.kind {
                    confab_proto::SdpType::Offer => match p.neg.on_offer() {
                        OfferAction::Ignore => {}
                        OfferAction::Accept { rollback } => {
                            if rollback {
                                pc.set_local_description(webrtc::peer_connection::RTCSessionDescription::rollback(
                                    None,
                                )?)
                                .await?;
                            }
                            pc.set_remote_description(rtcglue::to_rtc_sdp(&d)?).await?;
                            for c in p.neg.remote_set() {
                                let _ = pc.add_ice_candidate(rtcglue::to_rtc_candidate(&c)).await;
                            }
                            let answer = pc.create_answer(None).await?;
                            pc.set_local_description(answer.clone()).await?;
                            let answer = with_host_candidates(&pc, answer).await;
                            let _ = self
                                .sig_tx
                                .send(ClientMsg::Signal {
                                    to: from.clone(),
                                    data: SignalData::Sdp(rtcglue::from_rtc_sdp(&answer)),
                                })
                                .await;
                        }
                    },
                    confab_proto::SdpType::Answer | confab_proto::SdpType::Pranswer => {
                        if p.neg.on_answer() {
                            pc.set_remote_description(rtcglue::to_rtc_sdp(&d)?).await?;
                            for c in p.neg.remote_set() {
                                let _ = pc.add_ice_candidate(rtcglue::to_rtc_candidate(&c)).await;
                            }
                        }
                    }
                    confab_proto::SdpType::Rollback => {}
                },
                SignalData::Candidate(Some(c)) => {
                    if let Some(c) = p.neg.on_candidate(c) {
                        if let Err(e) = pc.add_ice_candidate(rtcglue::to_rtc_candidate(&c)).await {
                            debug!(error = %e, "remote candidate refused");
                        }
                    }
                }
                SignalData::Candidate(None) => {}
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.emit(CallEvent::Error { message: format!("negotiation with {from} failed: {e}") }).await;
        }
    }

    async fn pc_event(&mut self, peer: PeerId, ev: PcEvent) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        match ev {
            PcEvent::Candidate(c) => {
                let data = SignalData::Candidate(Some(rtcglue::from_rtc_candidate(&c)));
                let _ = self.sig_tx.send(ClientMsg::Signal { to: peer, data }).await;
            }
            PcEvent::GatheringComplete => {
                let _ = self.sig_tx.send(ClientMsg::Signal { to: peer, data: SignalData::Candidate(None) }).await;
            }
            PcEvent::IceServerError { url, code, text } => {
                let message = format!("ICE server {url} failed for {}: {code} {text}", p.info.name);
                self.emit(CallEvent::Error { message }).await;
            }
            PcEvent::State(state) => {
                if state == RTCPeerConnectionState::Connected {
                    let _ = p.connected.send(true);
                }
                if state == RTCPeerConnectionState::Failed {
                    let message = format!("no network path to {}{}", p.info.name, relay_hint(self.cfg.ice_policy));
                    self.emit(CallEvent::Error { message }).await;
                }
                let state = format!("{state}").to_lowercase();
                self.emit(CallEvent::Connection { peer_id: peer, state }).await;
            }
            PcEvent::Track(track) => {
                let kind = track.kind().await;
                let task = if kind == RtpCodecKind::Video {
                    let ev_tx = self.ev_tx.clone();
                    let since = p.since;
                    let who = peer.clone();
                    let on_first: Box<dyn FnOnce() + Send> = Box::new(move || {
                        let ms = since.elapsed().as_millis() as u64;
                        let _ = ev_tx.try_send(CallEvent::FirstFrame { peer_id: who, ms });
                    });
                    tokio::spawn(receive_video(track, peer.clone(), self.frames.clone(), p.stats.clone(), on_first))
                } else {
                    tokio::spawn(receive_audio(track, p.audio.clone()))
                };
                p.tasks.push(task);
            }
        }
    }

    async fn stats(&mut self) {
        let now = Instant::now();
        // A connection that never comes up must say so, not hang in silence.
        let mut stuck = Vec::new();
        for p in self.peers.values_mut() {
            if !*p.connected.borrow() && !p.reported_stuck && now.duration_since(p.since) >= CONNECT_DEADLINE {
                p.reported_stuck = true;
                stuck.push(p.info.name.clone());
            }
        }
        for name in stuck {
            let how = relay_hint(self.cfg.ice_policy);
            let message = format!("could not connect to {name}{how} within {} s", CONNECT_DEADLINE.as_secs());
            self.emit(CallEvent::Error { message }).await;
        }
        let frames_encoded = self.send.frames_encoded.load(Relaxed);
        let mut out = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let report = p.pc.get_stats(now, StatsSelector::None).await;
            let mut s = PeerStats { peer_id: id.clone(), ..Default::default() };
            for inb in report.inbound_rtp_streams() {
                s.bytes_received += inb.bytes_received;
                s.packets_lost += inb.received_rtp_stream_stats.packets_lost;
            }
            for outb in report.outbound_rtp_streams() {
                s.bytes_sent += outb.sent_rtp_stream_stats.bytes_sent;
            }
            for pair in report.candidate_pairs() {
                if pair.nominated && pair.current_round_trip_time > 0.0 {
                    s.rtt_ms = Some(pair.current_round_trip_time * 1000.0);
                }
            }
            s.candidate_type = selected_candidate_type(&p.pc).await;
            s.frames_decoded = p.stats.frames_decoded.load(Relaxed);
            s.frames_dropped = p.stats.frames_dropped.load(Relaxed);
            {
                let a = p.audio.lock().unwrap();
                s.jitter_ms = a.jitter_ms();
                s.audio_tone_hz = a.tone_hz();
                s.audio_packets_received = a.packets_received();
            }
            if let Some(at) = p.last.at {
                let dt = now.duration_since(at).as_secs_f64().max(1e-3);
                s.bitrate_in_kbps = (s.bytes_received.saturating_sub(p.last.bytes_in)) as f64 * 8.0 / dt / 1000.0;
                s.bitrate_out_kbps = (s.bytes_sent.saturating_sub(p.last.bytes_out)) as f64 * 8.0 / dt / 1000.0;
                s.fps_received = (s.frames_decoded.saturating_sub(p.last.frames_decoded)) as f64 / dt;
                s.fps_sent = if *p.connected.borrow() {
                    (frames_encoded.saturating_sub(p.last.frames_encoded)) as f64 / dt
                } else {
                    0.0
                };
            }
            p.last = StatsSample {
                at: Some(now),
                bytes_in: s.bytes_received,
                bytes_out: s.bytes_sent,
                frames_decoded: s.frames_decoded,
                frames_encoded,
            };
            out.push(s);
        }
        for s in out {
            let _ = self.ev_tx.try_send(CallEvent::Stats { stats: s });
        }
    }
}

/// The local description once it holds the first gathered candidates (host candidates take
/// a millisecond; waits at most 100 ms). Sending them inside the SDP, not only trickled after
/// it, means the remote's ICE agent has pairs to check the moment it starts: with trickle
/// alone, webrtc-rs found a peer-reflexive pair first and then idled a whole second before
/// nominating in about one call of five.
async fn with_host_candidates(
    pc: &Arc<dyn PeerConnection>,
    fallback: webrtc::peer_connection::RTCSessionDescription,
) -> webrtc::peer_connection::RTCSessionDescription {
    let deadline = Instant::now() + Duration::from_millis(100);
    loop {
        if let Some(d) = pc.local_description().await {
            if d.sdp.contains("a=candidate:") || Instant::now() >= deadline {
                return d;
            }
        } else if Instant::now() >= deadline {
            return fallback;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn selected_candidate_type(pc: &Arc<dyn PeerConnection>) -> Option<String> {
    for sender in pc.get_senders().await {
        if let Ok(Some(dtls)) = sender.transport().await {
            if let Ok(Some(pair)) = dtls.ice_transport().get_selected_candidate_pair().await {
                return Some(format!("{}", pair.local().typ).to_lowercase());
            }
        }
    }
    None
}

/// Adds our track of `kind` to `pc` and starts its writer and (for video) keyframe-request
/// tasks. They wait for the connection, then forward every encoded frame.
async fn add_sender(
    pc: &Arc<dyn PeerConnection>,
    kind: RtpCodecKind,
    me: &PeerId,
    send: &SendSide,
    mut connected: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, webrtc::error::Error> {
    let ssrc: u32 = rand::random();
    let codec = if kind == RtpCodecKind::Video { rtcglue::vp8_codec() } else { rtcglue::opus_codec() };
    let mime = codec.mime_type.clone();
    let label = if kind == RtpCodecKind::Video { "video" } else { "audio" };
    let track = Arc::new(TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            format!("confab-{me}"),
            format!("{label}-{me}"),
            label.into(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        ),
    )?);
    let sender: Arc<dyn RtpSender> = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
    let media = if kind == RtpCodecKind::Video { send.video.clone() } else { send.audio.clone() };
    let keyframe = send.keyframe.clone();
    let is_video = kind == RtpCodecKind::Video;
    let writer_track = track.clone();
    let writer = tokio::spawn(async move {
        while !*connected.borrow_and_update() {
            if connected.changed().await.is_err() {
                return;
            }
        }
        let pt = match sender.get_parameters().await {
            Ok(p) => p
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime))
                .map(|c| c.payload_type),
            Err(_) => None,
        }
        .unwrap_or(if is_video { rtcglue::VP8_PT } else { rtcglue::OPUS_PT });
        let mut rx = media.subscribe();
        if is_video {
            // A new viewer needs a keyframe to start from.
            keyframe.store(true, Relaxed);
        }
        loop {
            match rx.recv().await {
                Ok(MediaPacket { data, duration }) => {
                    let sample = Sample { data, duration, ..Sample::new(Instant::now()) };
                    if writer_track.sample_writer(ssrc, pt).write_sample(&sample).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    debug!(n, "peer writer lagged; frames skipped");
                    if is_video {
                        keyframe.store(true, Relaxed);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let mut tasks = vec![writer];
    if is_video {
        let keyframe = send.keyframe.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(_) = ev {
                    debug!("keyframe requested by a peer");
                    keyframe.store(true, Relaxed);
                }
            }
        }));
    }
    Ok(tasks)
}

/// Reads a remote video track: RTP -> VP8 frames -> the decode thread. Sends PLI when the
/// decoder asks (at most every 250 ms).
async fn receive_video(
    track: Arc<dyn TrackRemote>,
    peer: PeerId,
    sink: Arc<dyn FrameSink>,
    stats: Arc<PeerMediaStats>,
    on_first: Box<dyn FnOnce() + Send>,
) {
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let (kf_tx, mut kf_rx) = mpsc::channel::<()>(4);
    let decoder = VideoDecodeThread::start(peer, sink, stats.clone(), kf_tx.clone(), on_first);
    // Wait up to 150 ms for a retransmission (NACK) to complete a frame.
    let mut assembler = Vp8Assembler::new(150);
    let epoch = Instant::now();
    let mut gave_up = tokio::time::interval(Duration::from_millis(50));
    let mut last_pli = Instant::now() - Duration::from_secs(1);
    let forward = |frames: Vec<Vp8Frame>| {
        for f in frames {
            if decoder.tx.try_send(f).is_err() {
                // The decoder is behind: drop this frame. The decoder then waits for a
                // keyframe rather than decode garbage.
                stats.frames_dropped.fetch_add(1, Relaxed);
                decoder.mark_loss();
            }
        }
    };
    loop {
        tokio::select! {
            ev = track.poll() => match ev {
                Some(TrackRemoteEvent::OnRtpPacket(pkt)) => {
                    let now = epoch.elapsed().as_millis() as u64;
                    let h = &pkt.header;
                    forward(assembler.push(h.sequence_number, h.timestamp, h.marker, &pkt.payload, now));
                }
                Some(TrackRemoteEvent::OnEnded) | None => break,
                Some(_) => {}
            },
            _ = gave_up.tick() => forward(assembler.poll(epoch.elapsed().as_millis() as u64)),
            Some(()) = kf_rx.recv() => {
                if last_pli.elapsed() >= Duration::from_millis(250) {
                    last_pli = Instant::now();
                    stats.keyframes_requested.fetch_add(1, Relaxed);
                    debug!(ssrc, "sending PLI");
                    let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                    let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                }
            }
        }
    }
    drop(decoder);
}

/// Reads a remote audio track into that peer's jitter buffer.
async fn receive_audio(track: Arc<dyn TrackRemote>, audio: Arc<Mutex<PeerAudio>>) {
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                audio.lock().unwrap().push(pkt.header.sequence_number, pkt.header.timestamp, pkt.payload.to_vec());
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}
