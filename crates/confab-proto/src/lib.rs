//! The confab signaling protocol, version 1.
//!
//! JSON text frames over a WebSocket at `/ws`. Clients send [`ClientMsg`], the server sends
//! [`ServerMsg`]. The `data` of a `signal` is exactly the browser's `RTCSessionDescriptionInit`
//! or `RTCIceCandidateInit` JSON, so a web page can hand it straight to its own WebRTC stack.
//! `docs/protocol.md` in the repository is the normative description; this crate is its code.
//!
//! ```
//! use confab_proto::{decode, ClientMsg};
//! let msg = decode(br#"{"type":"join","room":"standup","name":"Ada"}"#).unwrap();
//! assert!(matches!(msg, ClientMsg::Join { .. }));
//! let err = decode(b"{not json").unwrap_err();
//! assert_eq!(err.code, confab_proto::ErrorCode::BadRequest);
//! ```

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod validate;

pub use validate::validate;

/// Milliseconds since the Unix epoch: the clock of chat `ts` on the wire, and of the capture
/// stamps that peers on different machines compare.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The protocol version this crate speaks. Sent by the server in `joined`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Size and length limits. The server enforces them on everything a client sends; clients
/// should check them before sending so that a user gets a clear message instead of an error.
pub mod limits {
    /// Largest WebSocket text frame the protocol accepts (bytes). Larger frames get `too_large`.
    pub const MAX_FRAME_BYTES: usize = 64 * 1024;
    /// Room names: 1 to this many characters, no control characters.
    pub const MAX_ROOM_NAME_CHARS: usize = 64;
    /// Display names: 1 to this many characters, no control characters.
    pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
    /// Room passwords: 1 to this many characters.
    pub const MAX_PASSWORD_CHARS: usize = 128;
    /// Chat messages: 1 to this many characters.
    pub const MAX_CHAT_CHARS: usize = 2000;
    /// The `sdp` string of a session description (bytes). A four-peer audio+video offer is
    /// about 6 KiB; the headroom is for many codecs and simulcast.
    pub const MAX_SDP_BYTES: usize = 48 * 1024;
    /// The `candidate` string of an ICE candidate (bytes).
    pub const MAX_CANDIDATE_BYTES: usize = 1024;
    /// `sdpMid` and `usernameFragment` (bytes).
    pub const MAX_ICE_FIELD_BYTES: usize = 256;
    /// Peer ids as they appear in `to` (bytes). Real ids are 22 characters.
    pub const MAX_PEER_ID_BYTES: usize = 64;
    /// Resume tokens (bytes). Real ones are 22 characters.
    pub const MAX_TOKEN_BYTES: usize = 64;
}

/// A server-assigned peer id: 128 random bits, base64url without padding (22 characters).
/// Clients never choose ids; the server stamps `from` on everything it relays.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub String);

impl PeerId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for PeerId {
    fn from(s: &str) -> Self {
        PeerId(s.to_owned())
    }
}

/// Messages a client sends to the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Enter a room (created on first join). Answered by `joined` or `error`.
    Join {
        room: String,
        name: String,
        /// Set by the first joiner; everyone after must give the same one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        /// Coming back after a lost connection: take up the place this peer had. Within the
        /// server's grace period the place is kept (messages sent meanwhile included) and the
        /// room never hears that the peer was gone; after a server restart the room is rebuilt
        /// with the same ids, so calls in flight keep their peer connections.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    /// Relay `data` to one peer of the sender's room.
    Signal { to: PeerId, data: SignalData },
    /// My media state, fanned out to the room.
    State { muted: bool, camera: bool },
    /// A chat line, fanned out to the room (the sender included, with the server's time).
    Chat { text: String },
    /// Leave the room; the connection stays open and may join again.
    Leave,
}

/// Messages the server sends to a client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// You are in `room` as `peer_id`. `peers` are the others already there: each of them will
    /// send you an offer.
    Joined {
        peer_id: PeerId,
        room: String,
        max_peers: u32,
        peers: Vec<PeerInfo>,
        ice_servers: Vec<IceServer>,
        /// The protocol version the server speaks ([`PROTOCOL_VERSION`]).
        #[serde(default = "default_version")]
        version: u32,
        /// Secret for a later `join` with `resume` after the connection breaks.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        resume_token: String,
        /// True when a `resume` found the place still held: nobody saw you leave, and the
        /// messages sent to you meanwhile follow this one. False for a fresh place (also
        /// when the server had restarted and no longer knew you).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
    },
    /// You left `room` (the answer to `leave`).
    Left { room: String },
    /// Someone entered your room. You (an earlier peer) offer to them.
    PeerJoined { peer: PeerInfo },
    /// Someone left your room or their connection ended.
    PeerLeft { peer_id: PeerId },
    /// Relayed from `from`, exactly as they sent it.
    Signal { from: PeerId, data: SignalData },
    /// `from` changed their media state.
    State { from: PeerId, muted: bool, camera: bool },
    /// A chat line; `ts` is the server's time in milliseconds since the Unix epoch.
    Chat { from: PeerId, name: String, text: String, ts: u64 },
    /// Something you sent was refused. The connection stays open unless it is closed with a
    /// close frame right after.
    Error { code: ErrorCode, message: String },
}

fn default_version() -> u32 {
    PROTOCOL_VERSION
}

/// The place a reconnecting client asks for: its old id and the token `joined` gave with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub peer_id: PeerId,
    pub token: String,
}

/// What the room knows about a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    pub name: String,
    pub muted: bool,
    pub camera: bool,
}

/// One ICE server as the browser's `RTCIceServer` spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Why the server refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The room already holds `max_peers` peers.
    RoomFull,
    /// Not valid JSON, an unknown `type`, a missing or ill-typed field, a binary frame, or a
    /// value outside its limits.
    BadRequest,
    /// The frame is larger than [`limits::MAX_FRAME_BYTES`].
    TooLarge,
    /// `to` names no peer in your room.
    UnknownPeer,
    /// This message needs you to be in a room.
    NotInRoom,
    /// You send faster than the server allows; the message was dropped.
    RateLimited,
    /// Wrong or missing room password.
    Unauthorized,
    /// You are already in a room: `leave` first.
    AlreadyJoined,
}

impl ErrorCode {
    /// Every code, in a fixed order (used for metrics).
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::RoomFull,
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::UnknownPeer,
        ErrorCode::NotInRoom,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
        ErrorCode::AlreadyJoined,
    ];

    /// The wire spelling, e.g. `room_full`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::RoomFull => "room_full",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::AlreadyJoined => "already_joined",
        }
    }

    /// Position in [`ErrorCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused message: a code for programs and a sentence for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError { code, message: message.into() }
    }

    /// The `error` message that reports this to a client.
    pub fn to_msg(&self) -> ServerMsg {
        ServerMsg::Error { code: self.code, message: self.message.clone() }
    }
}

/// The payload of a `signal`: a session description or an ICE candidate, in browser shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalData {
    /// `{"sdp": {"type": "offer", "sdp": "v=0..."}}`
    Sdp(SessionDescription),
    /// `{"candidate": {...}}`, or `{"candidate": null}` for end of candidates.
    Candidate(Option<IceCandidate>),
}

/// `RTCSessionDescriptionInit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDescription {
    #[serde(rename = "type")]
    pub kind: SdpType,
    /// Empty for `rollback`.
    #[serde(default)]
    pub sdp: String,
}

/// `RTCSdpType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    Offer,
    Answer,
    Pranswer,
    Rollback,
}

/// `RTCIceCandidateInit`, as `RTCIceCandidate.toJSON()` produces it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u16>,
    #[serde(rename = "usernameFragment", default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

impl Serialize for SignalData {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            SignalData::Sdp(d) => map.serialize_entry("sdp", d)?,
            SignalData::Candidate(c) => map.serialize_entry("candidate", c)?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for SignalData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `candidate: null` (end of candidates) must differ from an absent key, hence the
        // double option.
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            sdp: Option<SessionDescription>,
            #[serde(default, deserialize_with = "present")]
            candidate: Option<Option<IceCandidate>>,
        }
        fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<IceCandidate>>, D::Error> {
            Option::<IceCandidate>::deserialize(d).map(Some)
        }
        let raw = Raw::deserialize(d)?;
        match (raw.sdp, raw.candidate) {
            (Some(sdp), None) => Ok(SignalData::Sdp(sdp)),
            (None, Some(c)) => Ok(SignalData::Candidate(c)),
            (Some(_), Some(_)) => Err(serde::de::Error::custom("data has both `sdp` and `candidate`")),
            (None, None) => Err(serde::de::Error::custom("data needs `sdp` or `candidate`")),
        }
    }
}

/// Turns any bytes a client sent into a checked [`ClientMsg`] or a [`ProtoError`] saying why
/// not. Never panics; every limit of [`limits`] is enforced here.
pub fn decode(bytes: &[u8]) -> Result<ClientMsg, ProtoError> {
    check_size(bytes)?;
    let msg: ClientMsg = serde_json::from_slice(bytes).map_err(json_error)?;
    validate(&msg)?;
    Ok(msg)
}

/// Decodes a server message (for clients). Checks the frame size and the JSON shape.
pub fn decode_server(bytes: &[u8]) -> Result<ServerMsg, ProtoError> {
    check_size(bytes)?;
    serde_json::from_slice(bytes).map_err(json_error)
}

/// Encodes any protocol message as the JSON text of one frame.
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Our types are maps of strings, numbers and bools: serialization cannot fail.
    serde_json::to_string(msg).expect("protocol messages always serialize")
}

fn check_size(bytes: &[u8]) -> Result<(), ProtoError> {
    if bytes.len() > limits::MAX_FRAME_BYTES {
        return Err(ProtoError::new(
            ErrorCode::TooLarge,
            format!("frame of {} bytes is over the limit of {} bytes", bytes.len(), limits::MAX_FRAME_BYTES),
        ));
    }
    Ok(())
}

fn json_error(e: serde_json::Error) -> ProtoError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax | Category::Eof => "not valid JSON",
        Category::Data => "not a valid message",
        Category::Io => "unreadable",
    };
    ProtoError::new(ErrorCode::BadRequest, format!("{what}: {e}"))
}

#[cfg(test)]
mod tests;
