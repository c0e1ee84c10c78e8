//! A call: one room, one peer connection per remote peer (a mesh), local capture sent to
//! all of them, and their media decoded and played. [`Call`] is the handle: commands in,
//! [`CallEvent`]s out. One task owns all the call's state; dropping the handle (or `leave`)
//! ends it, which closes every peer connection and stops every thread.
//!
//! ```text
//!  Call / CallController ─Command─> CallTask (task.rs): routes every input to the part that
//!  (handle.rs)                       owns it and performs the I/O that part asks for
//!                                    │
//!   server ⇄ ServerLink ─LinkEvent──>├─ server_link.rs  handshake, resume, reconnect backoff,
//!                                    │                  backlog and what to replay
//!   webrtc ─PcEvent─────────────────>├─ peer_session.rs one peer: its connection, tasks and
//!                                    │                  PeerState (Negotiation, PeerHealth,
//!                                    │                  RateControl, setup attempts)
//!                                    ├─ remote_sdp.rs   a description or candidate arrives:
//!                                    │                  drop, revive, rebuild or apply it
//!   250 ms tick ────────────────────>├─ repair.rs       ICE restarts, give-ups, stuck setups,
//!                                    │                  the video budget
//!                                    ├─ local_media.rs  capture, encoders, mute, camera,
//!                                    │                  audio playout
//!                                    ├─ tracks.rs       per peer: senders, video and audio
//!                                    │                  receivers
//!   1 s tick ───────────────────────>└─ stats.rs        PeerStats
//!  CallEvent <── events.rs
//! ```
//!
//! Where to look: a peer's ICE fails -> `task.rs` `pc_event` -> `PeerState::on_connection_state`
//! feeds `recovery::PeerHealth`; `repair::plan` says when to restart or give up; `task.rs`
//! `restart_ice` sends the offer (`peer_connection::make_offer`). The server goes away ->
//! `server_link.rs`. A peer comes back with a new connection -> `remote_sdp.rs`.
//!
//! The parts marked plain data (`Backlog`, `Outage`, `PeerState`, `remote_sdp`, `repair`,
//! `stats::rates`) hold no sockets or clocks and are unit-tested with made-up instants.

mod events;
mod handle;
mod local_media;
mod peer_session;
mod remote_sdp;
mod repair;
mod server_link;
mod stats;
mod task;
mod tracks;

pub use events::{CallEvent, PeerStats, VoiceLevel};
pub use handle::{Call, CallController};

use confab_proto::{ErrorCode, IceServer};

use crate::devices::{self, AudioSpec, SinkSpec, VideoSpec};
pub use crate::media::SELF_TILE;
use crate::peer_connection::IcePolicy;
use crate::signaling::{self, TlsOptions};

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
    /// Echo cancellation, noise suppression and gain control of a microphone.
    pub processing: crate::audio_processing::ProcessingSettings,
    /// Where cameras come from: the machine's, unless a test brings its own.
    pub cameras: devices::Cameras,
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
            processing: Default::default(),
            cameras: devices::Cameras::system(),
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
    /// [`Call::join_until`]'s token fired before the join completed.
    #[error("the join was cancelled")]
    Cancelled,
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
