//! confab-engine: the call engine behind the desktop app and the headless peer. UI-agnostic:
//! it takes a server URL, a room and device choices, and gives back events and decoded
//! frames.
//!
//! ```text
//!  VideoSource (camera | synthetic) -> encode thread (VP8, once) -> track per peer ---> network
//!  AudioSource (mic | synthetic) -> Opus 20 ms ------------------> track per peer --->
//!  network -> per peer: depacketize -> decode thread -> FrameSink (UI | test)
//!                                \-> jitter buffer -> Opus decode -> mixer -> AudioSink
//!  SignalingClient (WebSocket task) <-> Call (owns PeerSessions, emits CallEvents)
//! ```
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use confab_engine::{Call, CallConfig, CallEvent, NoFrames};
//! let cfg = CallConfig::new("ws://127.0.0.1:8787/ws", "standup", "Ada");
//! let mut call = Call::join(cfg, std::sync::Arc::new(NoFrames)).await?;
//! while let Some(ev) = call.next_event().await {
//!     if let CallEvent::PeerJoined { peer } = ev { println!("{} joined", peer.name); }
//! }
//! # Ok(()) }
//! ```

pub mod audio_processing;
pub mod bwe;
pub mod call;
pub mod clock_drift;
pub mod codec;
pub mod device_recovery;
pub mod devices;
pub mod frame;
pub mod jitter;
pub mod levels;
pub mod media;
pub mod mixer;
pub mod negotiation;
pub mod peer_connection;
pub mod playout;
pub mod recovery;
pub mod rtcp_feedback;
pub mod rtp_unwrap;
pub mod signaling;
pub mod stamp;
pub mod tone;
pub mod vp8_rtp;
pub mod worker;

/// Default log filter for programs built on the engine. webrtc-rs warns about harmless
/// things (unknown DTLS extensions, early ICE checks); keep that out of a user's terminal.
/// The PulseAudio client logs its own socket closing at every stream's end; a real failure
/// reaches us through cpal's stream error callback, which is logged.
pub const DEFAULT_LOG_FILTER: &str = "warn,rtc_ice=error,rtc_dtls=error,webrtc=error,rtc=error,pulseaudio=off";

/// Logs to stderr, one line per event, for programs built on the engine: the filter is
/// `CONFAB_LOG` (`EnvFilter` syntax, e.g. `info,confab_engine=debug`) or [`DEFAULT_LOG_FILTER`].
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONFAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

pub use call::{Call, CallConfig, CallController, CallError, CallEvent, PeerStats};
pub use media::{DecodedFrame, FrameSink, NoFrames, SELF_TILE};
pub use peer_connection::IcePolicy;
pub use signaling::TlsOptions;
