//! What a call reports: [`CallEvent`]s for the UI, and the once-a-second [`PeerStats`].

use confab_proto::{PeerId, PeerInfo};
use serde::Serialize;

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
    /// Frames our camera sent that could not be read and were skipped, so far in the call
    /// (for all peers).
    pub camera_bad_frames: u64,
}

/// How loud one voice in the call is: ours (`peer_id` "self") or a peer's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VoiceLevel {
    pub peer_id: PeerId,
    /// The loudest 20 ms since the last report, dBFS (-100 is silence).
    pub dbfs: f32,
    pub speaking: bool,
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
    /// Five times a second: how loud each voice is and who is speaking.
    Levels {
        levels: Vec<VoiceLevel>,
    },
    Error {
        message: String,
    },
    /// One of our devices stopped delivering (`state` "stopped", with `reason`; confab keeps
    /// opening it again), is back ("back"), or is gone, and the system default, `device`,
    /// took its place ("moved").
    Device {
        kind: String,
        state: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// The call is over; no more events follow.
    Ended {
        reason: String,
    },
}

impl From<crate::device_recovery::DeviceNotice> for CallEvent {
    fn from(n: crate::device_recovery::DeviceNotice) -> Self {
        use crate::device_recovery::DeviceNotice as N;
        let (kind, state, reason, device) = match n {
            N::Stopped { kind, reason } => (kind, "stopped", Some(reason), None),
            N::Back { kind } => (kind, "back", None, None),
            N::Moved { kind, to } => (kind, "moved", None, Some(to)),
        };
        CallEvent::Device { kind: kind.into(), state: state.into(), reason, device }
    }
}
