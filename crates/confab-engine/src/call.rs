//! A call: one room, one peer connection per remote peer (a mesh), local capture sent to
//! all of them, and their media decoded and played. [`Call`] is the handle: commands in,
//! [`CallEvent`]s out. One task owns all the call's state; dropping the handle (or `leave`)
//! ends it, which closes every peer connection and stops every thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_proto::{ClientMsg, ErrorCode, IceServer, PeerId, PeerInfo, Resume, SdpType, ServerMsg, SignalData};
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

use crate::bwe::RateControl;
use crate::codec::vp8::Vp8Config;
use crate::devices::{self, AudioSpec, SinkSpec, VideoSpec};
use crate::media::{
    AudioPipeline, AudioPlayoutThread, FrameSink, MediaPacket, PeerAudio, PeerAudioMap, PeerMediaStats, SendSide,
    VideoDecodeThread, VideoPipeline,
};
use crate::negotiation::{Negotiation, OfferAction};
use crate::playout::VideoPlayout;
use crate::recovery::{self, Change, PeerHealth, Repair};
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
    /// Also hand captured local frames to the frame sink, as peer [`crate::SELF_TILE`] (the UI's
    /// self view).
    pub self_view: bool,
}

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
    /// The video rate the path to this peer allows, by its receiver reports (kbit/s).
    pub path_kbps: u32,
    /// What the video encoder is allowed right now (kbit/s), for all peers.
    pub video_budget_kbps: u32,
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
    /// Media from a peer stopped (`peer_id`), or the connection to the server broke (no
    /// `peer_id`): confab is repairing it. Media that still flows keeps flowing meanwhile.
    Reconnecting {
        #[serde(skip_serializing_if = "Option::is_none")]
        peer_id: Option<PeerId>,
        reason: String,
    },
    /// The repair worked, `after_ms` after it started.
    Reconnected {
        #[serde(skip_serializing_if = "Option::is_none")]
        peer_id: Option<PeerId>,
        after_ms: u64,
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

        let ((sig_tx, sig_rx), joined) = handshake(&cfg, None).await?;
        let JoinedRoom { peer_id: me, room, max_peers, peers, ice_servers: ice, resume_token, .. } = joined;
        info!(peer = %me, %room, peers = peers.len(), "joined");
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (pc_tx, pc_rx) = mpsc::channel(1024);
        let mut ice_servers = ice;
        ice_servers.extend(cfg.extra_ice_servers.iter().cloned());
        let audio_map: PeerAudioMap = Arc::new(Mutex::new(HashMap::new()));
        let playout = AudioPlayoutThread::start(sink, audio_map.clone());
        let _ = ev_tx.send(CallEvent::Joined { peer_id: me.clone(), room, max_peers, peers: peers.clone() }).await;
        let rtc = RtcSettings { ice_servers, policy: cfg.ice_policy, udp_bind: cfg.udp_bind.clone() };
        let wanted_kbps = video_kbps(&cfg);
        let mut task = CallTask {
            cfg,
            me: me.clone(),
            sig_tx: Some(sig_tx),
            token: resume_token,
            backlog: VecDeque::new(),
            link_down_since: None,
            reconnect_attempt: 0,
            roster: peers.iter().map(|p| (p.peer_id.clone(), p.clone())).collect(),
            wanted_kbps,
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
    /// When to restart ICE or give the peer up.
    health: PeerHealth,
    /// What the peer's receiver reports say about the path, and the video rate it allows.
    reports: rtcglue::LinkReports,
    rate: RateControl,
    /// When this peer connection was built (`since` is the first attempt's time) and how many
    /// were built before it that never connected.
    built: Instant,
    retries: u32,
}

/// A peer connection that has not come up this long is built anew by the offering side.
/// webrtc-rs's DTLS handshake can wedge when a packet of a flight is lost (seen at 5 % loss:
/// the server retransmits flight 4 eight times and gives up); a new connection starts the
/// handshake afresh. ICE through a relay plus DTLS normally takes well under 2 s.
const SETUP_RETRY: Duration = Duration::from_secs(4);
const MAX_SETUP_RETRIES: u32 = 4;

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

/// The least the video encoder is asked for (kbit/s): below it a picture is mush anyway.
const MIN_VIDEO_KBPS: u32 = 60;

/// The video bitrate the user asked for (or the default for the picture size), in kbit/s.
fn video_kbps(cfg: &CallConfig) -> u32 {
    cfg.bitrate_kbps.unwrap_or_else(|| Vp8Config::realtime(cfg.width, cfg.height, cfg.fps).bitrate_kbps)
}

/// Messages kept for the server while the connection to it is down.
const MAX_BACKLOG: usize = 256;

/// How long the call keeps trying to get back to the server before it ends.
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(300);

/// What `joined` said.
struct JoinedRoom {
    peer_id: PeerId,
    room: String,
    max_peers: u32,
    peers: Vec<PeerInfo>,
    ice_servers: Vec<IceServer>,
    resume_token: String,
    resumed: bool,
}

type Link = (mpsc::Sender<ClientMsg>, mpsc::Receiver<SignalEvent>);

/// Connects to the server and joins the room (taking up the place `resume` names, if any).
/// Messages the server sends after `joined` stay in the returned receiver.
async fn handshake(cfg: &CallConfig, resume: Option<Resume>) -> Result<(Link, JoinedRoom), CallError> {
    let (tx, mut rx) = signaling::connect(&cfg.server, &cfg.tls).await?;
    let join =
        ClientMsg::Join { room: cfg.room.clone(), name: cfg.name.clone(), password: cfg.password.clone(), resume };
    let _ = tx.send(join).await;
    let joined = async {
        loop {
            match rx.recv().await {
                Some(SignalEvent::Msg(ServerMsg::Joined {
                    peer_id,
                    room,
                    max_peers,
                    peers,
                    ice_servers,
                    resume_token,
                    resumed,
                    ..
                })) => return Ok(JoinedRoom { peer_id, room, max_peers, peers, ice_servers, resume_token, resumed }),
                Some(SignalEvent::Msg(ServerMsg::Error { code, message })) => {
                    return Err(CallError::Refused { code, message })
                }
                Some(SignalEvent::Msg(_)) => continue,
                Some(SignalEvent::Closed(r)) => return Err(CallError::Closed(r)),
                None => return Err(CallError::Closed(None)),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), joined).await {
        Ok(j) => Ok(((tx, rx), j?)),
        Err(_) => Err(CallError::Closed(Some("no answer to join within 10 s".into()))),
    }
}

/// A reconnect attempt in flight; dropping it cancels it.
struct Rejoin(JoinHandle<Result<(Link, JoinedRoom), CallError>>);

impl Drop for Rejoin {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The next message from the server; never resolves while there is no connection.
async fn next_signal(rx: &mut Option<mpsc::Receiver<SignalEvent>>) -> SignalEvent {
    match rx {
        Some(rx) => rx.recv().await.unwrap_or(SignalEvent::Closed(None)),
        None => std::future::pending().await,
    }
}

/// The outcome of the reconnect attempt; never resolves while there is none.
async fn rejoined(r: &mut Option<Rejoin>) -> Result<(Link, JoinedRoom), CallError> {
    match r {
        Some(r) => (&mut r.0).await.unwrap_or_else(|e| Err(CallError::Closed(Some(e.to_string())))),
        None => std::future::pending().await,
    }
}

/// The DTLS fingerprint line of an SDP: it changes only when the other side built a new
/// peer connection (it restarted, or gave us up and came back).
fn fingerprint(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.strip_prefix("a=fingerprint:")).map(str::trim)
}

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
    /// `None` while the connection to the server is down.
    sig_tx: Option<mpsc::Sender<ClientMsg>>,
    /// Proves our place to the server when we reconnect.
    token: String,
    /// What we meant to send while the connection was down.
    backlog: VecDeque<ClientMsg>,
    link_down_since: Option<Instant>,
    reconnect_attempt: u32,
    /// Everyone the server says is in the room (a peer we gave up on stays here, so that it
    /// can come back).
    roster: HashMap<PeerId, PeerInfo>,
    /// The video bitrate asked for (kbit/s): the ceiling of every peer's rate control.
    wanted_kbps: u32,
    ev_tx: mpsc::Sender<CallEvent>,
    pc_tx: mpsc::Sender<(PeerId, PcEvent)>,
    rtc: RtcSettings,
    peers: HashMap<PeerId, PeerSession>,
    send: SendSide,
    video: Option<VideoPipeline>,
    audio: Option<AudioPipeline>,
    _playout: AudioPlayoutThread,
    audio_map: PeerAudioMap,
    muted: Arc<AtomicBool>,
    camera_on: bool,
    frames: Arc<dyn FrameSink>,
}

impl CallTask {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        sig_rx: mpsc::Receiver<SignalEvent>,
        mut pc_rx: mpsc::Receiver<(PeerId, PcEvent)>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut watchdog = tokio::time::interval(Duration::from_millis(250));
        let mut sig_rx = Some(sig_rx);
        let mut retry: Option<Rejoin> = None;
        let mut leave_ack = None;
        let reason = loop {
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Leave(ack)) => { leave_ack = Some(ack); break "left".to_string(); }
                    Some(c) => self.command(c).await,
                    None => break "the call handle was dropped".into(),
                },
                ev = next_signal(&mut sig_rx) => match ev {
                    SignalEvent::Msg(m) => self.server_msg(m).await,
                    SignalEvent::Closed(r) => {
                        // Media does not need the server: keep every peer connection and
                        // get our place back.
                        sig_rx = None;
                        self.sig_tx = None;
                        self.link_down_since = Some(Instant::now());
                        self.reconnect_attempt = 0;
                        let reason = format!("lost the server{}", r.map(|r| format!(": {r}")).unwrap_or_default());
                        warn!(%reason, "reconnecting");
                        self.emit(CallEvent::Reconnecting { peer_id: None, reason }).await;
                        retry = Some(self.rejoin());
                    }
                },
                r = rejoined(&mut retry) => {
                    retry = None;
                    match r {
                        Ok(((tx, rx), joined)) => {
                            sig_rx = Some(rx);
                            self.back(tx, joined).await;
                        }
                        Err(e @ (CallError::Refused { .. } | CallError::Signal(signaling::SignalError::BadUrl(_)))) => {
                            break format!("could not get back into the room: {e}");
                        }
                        Err(e) => {
                            let down = self.link_down_since.map(|t| t.elapsed()).unwrap_or_default();
                            if down >= RECONNECT_GIVE_UP {
                                break format!("lost the server for {} s: {e}", down.as_secs());
                            }
                            debug!(error = %e, attempt = self.reconnect_attempt, "reconnect failed");
                            retry = Some(self.rejoin());
                        }
                    }
                }
                Some((peer, ev)) = pc_rx.recv() => self.pc_event(peer, ev).await,
                _ = tick.tick() => self.stats().await,
                _ = watchdog.tick() => self.repair().await,
            }
        };
        drop(retry);
        info!(%reason, "call ending");
        if let Some(tx) = self.sig_tx.take() {
            let _ = tx.send(ClientMsg::Leave).await;
        }
        // Wait (briefly) for the socket task to deliver the leave and close: a process that
        // exits right after leaving would otherwise drop the socket unsent, and the server
        // would hold our place for its resume grace as if we had crashed.
        if let Some(mut rx) = sig_rx.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async { while rx.recv().await.is_some() {} }).await;
        }
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

    async fn signal(&mut self, to: &PeerId, data: SignalData) {
        self.send(ClientMsg::Signal { to: to.clone(), data }).await;
    }

    /// To the server now, or once we are back with it.
    async fn send(&mut self, m: ClientMsg) {
        let m = match &self.sig_tx {
            Some(tx) => match tx.send(m).await {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => m,
        };
        if self.backlog.len() >= MAX_BACKLOG {
            self.backlog.pop_front();
        }
        self.backlog.push_back(m);
    }

    /// Starts the next attempt to reconnect and take our place back.
    fn rejoin(&mut self) -> Rejoin {
        let delay = recovery::reconnect_delay(self.reconnect_attempt, rand::random_range(0.75..1.25));
        self.reconnect_attempt += 1;
        let cfg = self.cfg.clone();
        let resume = Resume { peer_id: self.me.clone(), token: self.token.clone() };
        Rejoin(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // The whole attempt is bounded (TCP, TLS and WebSocket handshakes included): a
            // server that accepts and then says nothing must not stall reconnecting.
            tokio::time::timeout(Duration::from_secs(15), handshake(&cfg, Some(resume)))
                .await
                .unwrap_or_else(|_| Err(CallError::Closed(Some("no answer within 15 s".into()))))
        }))
    }

    /// We are back in the room.
    async fn back(&mut self, tx: mpsc::Sender<ClientMsg>, joined: JoinedRoom) {
        let after_ms = self.link_down_since.take().map(|t| t.elapsed().as_millis() as u64).unwrap_or(0);
        info!(after_ms, resumed = joined.resumed, peers = joined.peers.len(), "back with the server");
        self.sig_tx = Some(tx);
        self.reconnect_attempt = 0;
        self.token = joined.resume_token;
        if joined.peer_id != self.me {
            // A server that does not know `resume` gave us a new id; the others will see us
            // join afresh and rebuild their connections to us.
            warn!(old = %self.me, new = %joined.peer_id, "the server gave us a new peer id");
            self.me = joined.peer_id;
        }
        // Fresh TURN credentials for connections made from now on.
        self.rtc.ice_servers = joined.ice_servers;
        self.rtc.ice_servers.extend(self.cfg.extra_ice_servers.iter().cloned());
        for m in std::mem::take(&mut self.backlog) {
            // A fresh place: signals for the old room and our old state mean nothing there.
            if joined.resumed || matches!(m, ClientMsg::Chat { .. }) {
                self.send(m).await;
            }
        }
        if !joined.resumed {
            // The server had lost the room (it restarted, or our grace ran out). Whoever it
            // lists is back; connections to them that still work carry on untouched.
            self.send_state().await;
            let listed: HashSet<PeerId> = joined.peers.iter().map(|p| p.peer_id.clone()).collect();
            let now = Instant::now();
            for (id, p) in self.peers.iter_mut() {
                if !listed.contains(id) {
                    p.health.unconfirmed(now);
                }
            }
            for p in joined.peers {
                self.roster.insert(p.peer_id.clone(), p.clone());
                match self.peers.get_mut(&p.peer_id) {
                    Some(s) => s.health.confirmed(),
                    None => {
                        // New to us: it will offer, as to any newcomer.
                        self.emit(CallEvent::PeerJoined { peer: p.clone() }).await;
                        self.add_peer(p, true).await;
                    }
                }
            }
        }
        self.emit(CallEvent::Reconnected { peer_id: None, after_ms }).await;
    }

    /// Restarts ICE where media stopped, gives up peers that stay unreachable, and keeps the
    /// encoder within what the paths carry.
    async fn repair(&mut self) {
        // One encoding feeds every peer, so the slowest path sets the rate.
        let mut budget = self.wanted_kbps;
        for p in self.peers.values_mut() {
            for r in std::mem::take(&mut *p.reports.lock().expect("reports lock")) {
                p.rate.on_report(r);
            }
            if p.health.ever_connected() && !p.health.is_down() {
                budget = budget.min(p.rate.kbps());
            }
        }
        if self.send.video_budget_kbps.swap(budget, Relaxed) != budget {
            debug!(kbps = budget, "video budget");
        }
        let now = Instant::now();
        let link_up = self.sig_tx.is_some();
        let mut restart = Vec::new();
        let mut gone = Vec::new();
        for (id, p) in &self.peers {
            match p.health.due(now, link_up) {
                Repair::RestartIce => restart.push(id.clone()),
                Repair::GiveUp => gone.push(id.clone()),
                Repair::Nothing => {}
            }
        }
        for id in gone {
            info!(peer = %id, "peer unreachable; giving it up");
            self.remove_peer(&id).await;
            self.emit(CallEvent::PeerLeft { peer_id: id }).await;
        }
        for id in restart {
            self.restart_ice(&id).await;
        }
        // Setups that wedged: the offering side starts over (the other side follows when it
        // sees the new DTLS fingerprint).
        let wedged: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                link_up
                    && !p.neg.polite
                    && !p.health.ever_connected()
                    && p.retries < MAX_SETUP_RETRIES
                    && now.duration_since(p.built) >= SETUP_RETRY
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in wedged {
            info!(peer = %id, "connection setup stuck; starting it over");
            self.rebuild(&id, false).await;
            if let Some(p) = self.peers.get_mut(&id) {
                p.retries += 1;
            }
        }
    }

    /// Replaces the peer connection to `id` with a new one (we offer unless `polite`),
    /// keeping what the user was told: when the setup began (and whether it was reported
    /// stuck), and, for a connection that had worked, that this is a reconnect.
    async fn rebuild(&mut self, id: &PeerId, polite: bool) {
        let Some(old) = self.peers.get(id) else { return };
        let (info, since, retries, stuck) = (old.info.clone(), old.since, old.retries, old.reported_stuck);
        let was_up = old.health.ever_connected();
        self.remove_peer(id).await;
        self.add_peer(info, polite).await;
        if let Some(p) = self.peers.get_mut(id) {
            (p.since, p.retries, p.reported_stuck) = (since, retries, stuck);
            if was_up {
                p.health = PeerHealth::replacing(polite, Instant::now());
            }
        }
    }

    /// Offers new ICE credentials to `id`: both sides gather on fresh sockets (new TURN
    /// allocations too) and check pairs again, while DTLS, SRTP and the tracks carry on.
    async fn restart_ice(&mut self, id: &PeerId) {
        let Some(p) = self.peers.get_mut(id) else { return };
        p.health.restarted(Instant::now());
        p.neg.offer_sent();
        let pc = p.pc.clone();
        info!(peer = %id, "restarting ICE");
        let offer = async {
            let opts = || Some(rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true });
            let offer = match pc.create_offer(opts()).await {
                Ok(o) => o,
                Err(_) => {
                    // Our last restart offer is still unanswered: take it back first.
                    pc.set_local_description(webrtc::peer_connection::RTCSessionDescription::rollback(None)?).await?;
                    pc.create_offer(opts()).await?
                }
            };
            pc.set_local_description(offer.clone()).await?;
            Ok::<_, webrtc::error::Error>(with_host_candidates(&pc, offer).await)
        }
        .await;
        match offer {
            Ok(offer) => self.signal(id, SignalData::Sdp(rtcglue::from_rtc_sdp(&offer))).await,
            Err(e) => warn!(peer = %id, error = %e, "ICE restart offer failed"),
        }
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
            Command::Chat(text) => self.send(ClientMsg::Chat { text }).await,
            Command::Leave(_) => unreachable!("handled by run"),
        }
    }

    async fn send_state(&mut self) {
        self.send(ClientMsg::State { muted: self.muted.load(Relaxed), camera: self.camera_on }).await;
    }

    async fn server_msg(&mut self, m: ServerMsg) {
        match m {
            ServerMsg::PeerJoined { peer } => {
                self.roster.insert(peer.peer_id.clone(), peer.clone());
                if let Some(s) = self.peers.get_mut(&peer.peer_id) {
                    // Someone we are in a call with is back after the server lost the room.
                    s.health.confirmed();
                    if !(s.health.ever_connected() && s.health.is_down()) {
                        return; // its connection works (or is still coming up): keep it
                    }
                    // Ours is broken and it may have dropped its side: build a new one.
                    self.rebuild(&peer.peer_id, false).await;
                    return;
                }
                self.emit(CallEvent::PeerJoined { peer: peer.clone() }).await;
                self.add_peer(peer, false).await;
            }
            ServerMsg::PeerLeft { peer_id } => {
                self.roster.remove(&peer_id);
                if self.peers.contains_key(&peer_id) {
                    self.remove_peer(&peer_id).await;
                    self.emit(CallEvent::PeerLeft { peer_id }).await;
                }
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
            // During repairs a signal can race a peer's departure; that is not the user's business.
            ServerMsg::Error { code: ErrorCode::UnknownPeer, message } => debug!(%message, "signal not delivered"),
            ServerMsg::Error { code, message } => {
                self.emit(CallEvent::Error { message: format!("server: {message} ({code})") }).await
            }
            ServerMsg::Joined { .. } | ServerMsg::Left { .. } => {}
        }
    }

    /// A new remote peer. `polite`: they were here first and will offer; else we offer.
    async fn add_peer(&mut self, info: PeerInfo, polite: bool) {
        let id = info.peer_id.clone();
        let reports = rtcglue::LinkReports::default();
        let pc = match rtcglue::build_pc(&id, &self.rtc, self.pc_tx.clone(), reports.clone()).await {
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
            health: PeerHealth::new(polite),
            reports,
            rate: RateControl::new(MIN_VIDEO_KBPS, self.wanted_kbps),
            built: Instant::now(),
            retries: 0,
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
        let sdp_kind = match &data {
            SignalData::Sdp(d) => Some(d.kind),
            SignalData::Candidate(_) => None,
        };
        if !self.peers.contains_key(&from) {
            // A peer we gave up on is offering again: it is back.
            match (sdp_kind, self.roster.get(&from).cloned()) {
                (Some(SdpType::Offer), Some(info)) => {
                    info!(peer = %from, "a peer we had given up is back");
                    self.emit(CallEvent::PeerJoined { peer: info.clone() }).await;
                    self.add_peer(info, true).await;
                }
                _ => {
                    debug!(%from, "signal from a peer we have no connection with");
                    return;
                }
            }
        }
        if let (SignalData::Sdp(d), Some(p)) = (&data, self.peers.get(&from)) {
            let current = p.pc.remote_description().await;
            let theirs = current.as_ref().and_then(|c| fingerprint(&c.sdp));
            if matches!((fingerprint(&d.sdp), theirs), (Some(new), Some(old)) if new != old) {
                // The other side built a new peer connection (it gave us up, or restarted):
                // ours can never talk to it again, so build a new one to match.
                info!(peer = %from, "the peer has a new connection; rebuilding ours");
                let polite = d.kind == SdpType::Offer;
                self.rebuild(&from, polite).await;
                if !polite {
                    return; // an answer from their new connection to our old offer: we re-offered
                }
            }
        }
        let Some(p) = self.peers.get_mut(&from) else { return };
        if sdp_kind == Some(SdpType::Offer) {
            p.health.remote_offered(Instant::now());
        }
        let pc = p.pc.clone();
        let result: Result<Option<webrtc::peer_connection::RTCSessionDescription>, webrtc::error::Error> = async {
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
                            return Ok(Some(with_host_candidates(&pc, answer).await));
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
            Ok(None)
        }
        .await;
        match result {
            Ok(Some(answer)) => self.signal(&from, SignalData::Sdp(rtcglue::from_rtc_sdp(&answer))).await,
            Ok(None) => {}
            Err(e) => self.emit(CallEvent::Error { message: format!("negotiation with {from} failed: {e}") }).await,
        }
    }

    async fn pc_event(&mut self, peer: PeerId, ev: PcEvent) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        match ev {
            PcEvent::Candidate(c) => {
                let data = SignalData::Candidate(Some(rtcglue::from_rtc_candidate(&c)));
                self.signal(&peer, data).await;
            }
            PcEvent::GatheringComplete => self.signal(&peer, SignalData::Candidate(None)).await,
            PcEvent::IceServerError { url, code, text } => {
                let message = format!("ICE server {url} failed for {}: {code} {text}", p.info.name);
                self.emit(CallEvent::Error { message }).await;
            }
            PcEvent::State(state) => {
                let now = Instant::now();
                let change = match state {
                    RTCPeerConnectionState::Connected => {
                        let _ = p.connected.send(true);
                        let change = p.health.connected(now);
                        if change.is_some() {
                            p.rate.path_changed(); // after an ICE restart it may be another path
                        }
                        change
                    }
                    // Connecting again after having been connected: the other side restarted
                    // ICE, perhaps before our own timer saw the path die. Same episode.
                    RTCPeerConnectionState::Connecting if p.health.ever_connected() => p.health.lost(now),
                    RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed => {
                        let first = !p.health.ever_connected();
                        let change = p.health.lost(now);
                        if first && state == RTCPeerConnectionState::Failed {
                            let message =
                                format!("no network path to {}{}", p.info.name, relay_hint(self.cfg.ice_policy));
                            self.emit(CallEvent::Error { message }).await;
                        }
                        change
                    }
                    _ => None,
                };
                let name = format!("{state}").to_lowercase();
                self.emit(CallEvent::Connection { peer_id: peer.clone(), state: name.clone() }).await;
                match change {
                    Some(Change::Reconnecting) => {
                        info!(%peer, state = %name, "media path lost; repairing");
                        self.emit(CallEvent::Reconnecting { peer_id: Some(peer), reason: format!("connection {name}") })
                            .await
                    }
                    Some(Change::Reconnected(d)) => {
                        info!(%peer, ms = d.as_millis() as u64, "media path back");
                        self.emit(CallEvent::Reconnected { peer_id: Some(peer), after_ms: d.as_millis() as u64 }).await
                    }
                    None => {}
                }
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
            if let Some(rtt) = s.rtt_ms {
                p.stats.rtt_ms.store(rtt as u64, Relaxed);
            }
            s.candidate_type = selected_candidate_type(&p.pc).await;
            s.path_kbps = p.rate.kbps();
            s.video_budget_kbps = self.send.video_budget_kbps.load(Relaxed);
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
    let new_viewer = send.new_viewer.clone();
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
            // A new viewer needs a keyframe to start from, now (not rate-limited).
            new_viewer.store(true, Relaxed);
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
    let mut assembler = Vp8Assembler::new(retransmission_wait(0));
    let epoch = Instant::now();
    let mut gave_up = tokio::time::interval(Duration::from_millis(50));
    let mut last_pli = Instant::now() - Duration::from_secs(1);
    let mut playout = VideoPlayout::new();
    // Complete frames waiting for their time (see `playout`), in order.
    let mut held: VecDeque<(u64, Vp8Frame)> = VecDeque::new();
    let decode = |f: Vp8Frame| {
        if decoder.tx.try_send(f).is_err() {
            // The decoder is behind: drop this frame. The decoder then waits for a
            // keyframe rather than decode garbage.
            stats.frames_dropped.fetch_add(1, Relaxed);
            decoder.mark_loss();
        }
    };
    loop {
        let now = epoch.elapsed().as_millis() as u64;
        while held.front().is_some_and(|(show, _)| *show <= now) {
            decode(held.pop_front().expect("front exists").1);
        }
        let next_show = held.front().map(|(show, _)| epoch + Duration::from_millis(*show));
        let frames = tokio::select! {
            ev = track.poll() => match ev {
                Some(TrackRemoteEvent::OnRtpPacket(pkt)) => {
                    let h = &pkt.header;
                    assembler.push(h.sequence_number, h.timestamp, h.marker, &pkt.payload, now)
                }
                Some(TrackRemoteEvent::OnEnded) | None => break,
                Some(_) => continue,
            },
            _ = gave_up.tick() => {
                assembler.set_max_wait(retransmission_wait(stats.rtt_ms.load(Relaxed)));
                assembler.poll(now)
            }
            _ = tokio::time::sleep_until(next_show.unwrap_or(epoch).into()), if next_show.is_some() => continue,
            Some(()) = kf_rx.recv() => {
                // At most one request per round trip and a half: the keyframe asked for
                // last time may still be on its way, and each one is a burst on the path.
                let gap = Duration::from_millis((stats.rtt_ms.load(Relaxed) * 3 / 2).max(250));
                if last_pli.elapsed() >= gap {
                    last_pli = Instant::now();
                    stats.keyframes_requested.fetch_add(1, Relaxed);
                    debug!(ssrc, "sending PLI");
                    let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                    let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                }
                continue;
            }
        };
        let now = epoch.elapsed().as_millis() as u64;
        for f in frames {
            let show = playout.schedule(f.rtp_ts, now);
            held.push_back((show, f));
        }
    }
    drop(decoder);
}

/// How long a frame with a hole may wait for NACK to fill it: a NACK goes out within 100 ms
/// of the hole showing, the resend takes a round trip, and one resend may be lost too. Waiting
/// costs delay only when a packet is missing; giving up costs a freeze until a keyframe.
fn retransmission_wait(rtt_ms: u64) -> u64 {
    (100 + rtt_ms * 5 / 2).clamp(150, 800)
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
