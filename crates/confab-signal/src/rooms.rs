//! The room logic: a pure state machine. It owns no socket, task or clock; the server feeds
//! it decoded messages with the current time and delivers what it returns. Everything a
//! client can do to a room is decided here, so it is tested exhaustively without I/O.
//!
//! ```
//! use confab_signal::rooms::{ConnId, Rooms, RoomsConfig};
//! use confab_proto::{ClientMsg, ServerMsg};
//! let mut rooms = Rooms::new(RoomsConfig::default());
//! let out = rooms.handle(ConnId(1), ClientMsg::Join { room: "r".into(), name: "Ada".into(), password: None, resume: None }, 0);
//! assert!(matches!(out[0].msg, ServerMsg::Joined { .. }));
//! ```

use std::collections::{HashMap, VecDeque};

use confab_proto::{ClientMsg, ErrorCode, PeerId, PeerInfo, ProtoError, Resume, ServerMsg};

use crate::turn::IceConfig;

/// The server's handle on one connection. Assigned by the I/O layer, never seen by clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A message to deliver: one serialization, any number of recipients.
#[derive(Clone, Debug, PartialEq)]
pub struct Outbound {
    pub to: Vec<ConnId>,
    pub msg: ServerMsg,
}

impl Outbound {
    fn one(to: ConnId, msg: ServerMsg) -> Self {
        Outbound { to: vec![to], msg }
    }
}

/// Settings of the room logic.
pub struct RoomsConfig {
    /// Most peers one room holds.
    pub max_peers: usize,
    /// STUN/TURN servers handed out in `joined`.
    pub ice: IceConfig,
    /// Makes the id of a newly joined peer. Random in production, a counter in tests.
    pub new_peer_id: Box<dyn FnMut() -> PeerId + Send>,
    /// How long the place of a peer whose connection broke (no close frame, no `leave`) is
    /// held for a `resume`. Zero removes it at once.
    pub resume_grace_ms: u64,
    /// Key of the resume tokens: a token is a MAC of room and peer id, so a server started
    /// again with the same key still recognises the clients it had (and nobody else can
    /// claim their ids). Random by default: then a restart gives everyone new ids.
    pub resume_key: Vec<u8>,
}

/// A place held for an away peer stops queueing beyond this many messages and is given up
/// at the next [`Rooms::expire`]: a resume could no longer replay everything it missed.
pub const MAX_PENDING: usize = 256;

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            max_peers: 4,
            ice: IceConfig::default(),
            new_peer_id: Box::new(random_peer_id),
            resume_grace_ms: 8_000,
            resume_key: rand::random::<[u8; 32]>().to_vec(),
        }
    }
}

/// 128 random bits, base64url (22 characters): unguessable, so holding another peer's id
/// grants nothing, and it is never chosen by a client (a resume can only reclaim an id with
/// its token).
pub fn random_peer_id() -> PeerId {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    PeerId(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The resume token of `peer` in `room`: HMAC-SHA256 under the server's resume key, first
/// 128 bits, base64url. The same for every join of that id in that room, so a client whose
/// `joined` got lost can still use the token it had.
pub fn resume_token(key: &[u8], room: &str, peer: &PeerId) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(room.as_bytes());
    mac.update(b"\n");
    mac.update(peer.as_str().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16])
}

struct Member {
    /// `None` while the peer is away: its connection broke and its place is held.
    conn: Option<ConnId>,
    info: PeerInfo,
    /// Proves a `resume` comes from whoever held this place.
    token: String,
    /// While away: when the place is given up (same clock as `now_ms`).
    away_until_ms: u64,
    /// While away: what the room sent, replayed in order on resume.
    pending: VecDeque<ServerMsg>,
}

impl Member {
    /// Sends to this member: the connection if attached, the replay queue if away.
    fn reach(&mut self, msg: &ServerMsg, to: &mut Vec<ConnId>) {
        match self.conn {
            Some(c) => to.push(c),
            None if self.pending.len() < MAX_PENDING => self.pending.push_back(msg.clone()),
            // Overflow: the replay would have a hole, so give the place up at the next expiry.
            None => self.away_until_ms = 0,
        }
    }
}

struct Room {
    /// Set by whoever created the room; checked on every later join.
    password: Option<String>,
    /// In join order. Rooms are small (`max_peers`), so a scan beats a map.
    members: Vec<Member>,
}

impl Room {
    /// `msg` to every member except `except` (attached ones get an [`Outbound`], away ones a
    /// queued copy).
    fn fanout(&mut self, except: Option<&PeerId>, msg: ServerMsg) -> Vec<Outbound> {
        let mut to = Vec::with_capacity(self.members.len());
        for m in self.members.iter_mut().filter(|m| Some(&m.info.peer_id) != except) {
            m.reach(&msg, &mut to);
        }
        if to.is_empty() {
            Vec::new()
        } else {
            vec![Outbound { to, msg }]
        }
    }
    fn member(&self, conn: ConnId) -> Option<&Member> {
        self.members.iter().find(|m| m.conn == Some(conn))
    }
    fn member_mut(&mut self, conn: ConnId) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.conn == Some(conn))
    }
}

/// All rooms of one server.
pub struct Rooms {
    cfg: RoomsConfig,
    rooms: HashMap<String, Room>,
    /// Which room each attached connection is in. A connection is in at most one room, and is
    /// in this map exactly when it is the `conn` of a member of that room: the invariant that
    /// rules out ghost peers. Away members have no connection and are not here.
    joined: HashMap<ConnId, String>,
}

impl Rooms {
    pub fn new(cfg: RoomsConfig) -> Self {
        Rooms { cfg, rooms: HashMap::new(), joined: HashMap::new() }
    }

    /// Number of rooms with at least one peer.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Number of peers in all rooms, away ones included.
    pub fn peer_count(&self) -> usize {
        self.rooms.values().map(|r| r.members.len()).sum()
    }

    /// The room a connection is in, if any.
    pub fn room_of(&self, conn: ConnId) -> Option<&str> {
        self.joined.get(&conn).map(String::as_str)
    }

    /// Applies one message from `conn`. `now_ms` is wall-clock time in milliseconds since
    /// the Unix epoch (chat timestamps, TURN credential expiry, grace periods).
    pub fn handle(&mut self, conn: ConnId, msg: ClientMsg, now_ms: u64) -> Vec<Outbound> {
        let result = match msg {
            ClientMsg::Join { room, name, password, resume } => self.join(conn, room, name, password, resume, now_ms),
            ClientMsg::Signal { to, data } => self.in_room(conn, |room, me| {
                let from = me.clone();
                let target =
                    room.members.iter_mut().find(|m| m.info.peer_id == to && m.info.peer_id != from).ok_or_else(
                        || ProtoError::new(ErrorCode::UnknownPeer, format!("no peer '{to}' in your room")),
                    )?;
                let mut dest = Vec::with_capacity(1);
                let msg = ServerMsg::Signal { from, data };
                target.reach(&msg, &mut dest);
                Ok(if dest.is_empty() { Vec::new() } else { vec![Outbound { to: dest, msg }] })
            }),
            ClientMsg::State { muted, camera } => self.in_room(conn, |room, me| {
                let m = room.member_mut(conn).expect("joined implies member");
                m.info.muted = muted;
                m.info.camera = camera;
                Ok(room.fanout(Some(&me), ServerMsg::State { from: me.clone(), muted, camera }))
            }),
            ClientMsg::Chat { text } => self.in_room(conn, |room, me| {
                let name = room.member(conn).expect("joined implies member").info.name.clone();
                Ok(room.fanout(None, ServerMsg::Chat { from: me, name, text, ts: now_ms }))
            }),
            ClientMsg::Leave => match self.remove(conn) {
                Some((room, mut out)) => {
                    out.push(Outbound::one(conn, ServerMsg::Left { room }));
                    Ok(out)
                }
                None => Err(not_in_room()),
            },
        };
        result.unwrap_or_else(|e| vec![Outbound::one(conn, e.to_msg())])
    }

    /// The client closed its connection (or must be cut off): take it out of its room now.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Outbound> {
        self.remove(conn).map(|(_, out)| out).unwrap_or_default()
    }

    /// The connection broke without a goodbye (reset, silence, end of stream): hold the
    /// peer's place for `resume_grace_ms` so that it can come back as if nothing happened.
    /// The room hears nothing now; [`Rooms::expire`] tells it if the peer does not return.
    pub fn connection_lost(&mut self, conn: ConnId, now_ms: u64) -> Vec<Outbound> {
        if self.cfg.resume_grace_ms == 0 {
            return self.disconnect(conn);
        }
        let Some(room_name) = self.joined.remove(&conn) else { return Vec::new() };
        let room = self.rooms.get_mut(&room_name).expect("joined implies room");
        let m = room.member_mut(conn).expect("joined implies member");
        m.conn = None;
        m.away_until_ms = now_ms + self.cfg.resume_grace_ms;
        Vec::new()
    }

    /// Gives up the places of away peers whose grace ran out, telling their rooms.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Outbound> {
        let mut out = Vec::new();
        self.rooms.retain(|_, room| {
            while let Some(pos) = room.members.iter().position(|m| m.conn.is_none() && m.away_until_ms <= now_ms) {
                let gone = room.members.remove(pos);
                out.extend(room.fanout(None, ServerMsg::PeerLeft { peer_id: gone.info.peer_id }));
            }
            !room.members.is_empty()
        });
        out
    }

    /// The members of `conn`'s room and `conn`'s own peer id.
    fn in_room(
        &mut self,
        conn: ConnId,
        f: impl FnOnce(&mut Room, PeerId) -> Result<Vec<Outbound>, ProtoError>,
    ) -> Result<Vec<Outbound>, ProtoError> {
        let room = self.joined.get(&conn).and_then(|r| self.rooms.get_mut(r)).ok_or_else(not_in_room)?;
        let me = room.member(conn).expect("joined implies member").info.peer_id.clone();
        f(room, me)
    }

    fn join(
        &mut self,
        conn: ConnId,
        room_name: String,
        name: String,
        password: Option<String>,
        resume: Option<Resume>,
        now_ms: u64,
    ) -> Result<Vec<Outbound>, ProtoError> {
        if let Some(current) = self.joined.get(&conn) {
            return Err(ProtoError::new(
                ErrorCode::AlreadyJoined,
                format!("you are already in room '{current}'; send leave first"),
            ));
        }
        if let Some(r) = &resume {
            if let Some(out) = self.resume(conn, &room_name, r, now_ms)? {
                return Ok(out);
            }
        }
        let max = self.cfg.max_peers;
        if let Some(room) = self.rooms.get(&room_name) {
            match (&room.password, &password) {
                (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.as_bytes()) => {}
                (Some(_), Some(_)) => {
                    return Err(ProtoError::new(
                        ErrorCode::Unauthorized,
                        format!("wrong password for room '{room_name}'"),
                    ))
                }
                (Some(_), None) => {
                    return Err(ProtoError::new(
                        ErrorCode::Unauthorized,
                        format!("room '{room_name}' needs a password"),
                    ))
                }
                // Someone meaning to make a private room must not silently land in a public one.
                (None, Some(_)) => {
                    return Err(ProtoError::new(
                        ErrorCode::Unauthorized,
                        format!(
                        "room '{room_name}' already exists without a password; join without one or pick another name"
                    ),
                    ))
                }
                (None, None) => {}
            }
            if room.members.len() >= max {
                return Err(ProtoError::new(
                    ErrorCode::RoomFull,
                    format!("room '{room_name}' is full ({} of {max})", room.members.len()),
                ));
            }
        }
        // A resume the room cannot honour (the server restarted, or the grace ran out) keeps
        // the old id if its token proves it: peers that still hold a call with it then carry
        // on. `resume` found no member with this id in the room, so it cannot collide. A
        // token that proves nothing gets a new id, like a plain join.
        let taken =
            |id: &PeerId| self.rooms.get(&room_name).is_some_and(|r| r.members.iter().any(|m| &m.info.peer_id == id));
        let proven = resume.filter(|r| {
            let want = resume_token(&self.cfg.resume_key, &room_name, &r.peer_id);
            constant_time_eq(want.as_bytes(), r.token.as_bytes())
        });
        let peer_id = match proven {
            Some(r) => r.peer_id,
            // A claimed id may be anything, so a new one must be checked against them too.
            None => loop {
                let id = (self.cfg.new_peer_id)();
                if !taken(&id) {
                    break id;
                }
            },
        };
        let info = PeerInfo { peer_id: peer_id.clone(), name, muted: false, camera: true };
        let token = resume_token(&self.cfg.resume_key, &room_name, &peer_id);
        let room = self.rooms.entry(room_name.clone()).or_insert_with(|| Room { password, members: Vec::new() });
        let peers: Vec<PeerInfo> = room.members.iter().map(|m| m.info.clone()).collect();
        let mut out = room.fanout(None, ServerMsg::PeerJoined { peer: info.clone() });
        room.members.push(Member {
            conn: Some(conn),
            info,
            token: token.clone(),
            away_until_ms: 0,
            pending: VecDeque::new(),
        });
        self.joined.insert(conn, room_name.clone());

        let joined = ServerMsg::Joined {
            peer_id: peer_id.clone(),
            room: room_name,
            max_peers: max as u32,
            peers,
            ice_servers: self.cfg.ice.servers_for(&peer_id, now_ms / 1000),
            version: confab_proto::PROTOCOL_VERSION,
            resume_token: token,
            resumed: false,
        };
        out.insert(0, Outbound::one(conn, joined));
        Ok(out)
    }

    /// Re-attaches `conn` to the place `r` names if the room still holds it: `Ok(None)` when
    /// it does not (the caller makes a fresh place), an error when the token is wrong.
    fn resume(
        &mut self,
        conn: ConnId,
        room_name: &str,
        r: &Resume,
        now_ms: u64,
    ) -> Result<Option<Vec<Outbound>>, ProtoError> {
        let Some(room) = self.rooms.get_mut(room_name) else { return Ok(None) };
        let Some(m) = room.members.iter_mut().find(|m| m.info.peer_id == r.peer_id) else { return Ok(None) };
        if !constant_time_eq(m.token.as_bytes(), r.token.as_bytes()) {
            return Err(ProtoError::new(
                ErrorCode::Unauthorized,
                format!("cannot resume as '{}' in room '{room_name}': wrong token", r.peer_id),
            ));
        }
        // The old connection may not have been noticed dead yet (a half-open TCP): the
        // newer one wins, and the old one is left in no room.
        if let Some(old) = m.conn.replace(conn) {
            self.joined.remove(&old);
        }
        let pending = std::mem::take(&mut m.pending);
        let token = m.token.clone();
        let peers = room.members.iter().filter(|o| o.info.peer_id != r.peer_id).map(|o| o.info.clone()).collect();
        self.joined.insert(conn, room_name.to_owned());
        let joined = ServerMsg::Joined {
            peer_id: r.peer_id.clone(),
            room: room_name.to_owned(),
            max_peers: self.cfg.max_peers as u32,
            peers,
            ice_servers: self.cfg.ice.servers_for(&r.peer_id, now_ms / 1000),
            version: confab_proto::PROTOCOL_VERSION,
            resume_token: token,
            resumed: true,
        };
        let mut out = vec![Outbound::one(conn, joined)];
        out.extend(pending.into_iter().map(|msg| Outbound::one(conn, msg)));
        Ok(Some(out))
    }

    /// Removes `conn` from its room, freeing the room when it empties. Returns the room's
    /// name and the `peer_left` for those who stay.
    fn remove(&mut self, conn: ConnId) -> Option<(String, Vec<Outbound>)> {
        let room_name = self.joined.remove(&conn)?;
        let room = self.rooms.get_mut(&room_name).expect("joined implies room");
        let pos = room.members.iter().position(|m| m.conn == Some(conn)).expect("joined implies member");
        let gone = room.members.remove(pos);
        let out = room.fanout(None, ServerMsg::PeerLeft { peer_id: gone.info.peer_id });
        if room.members.is_empty() {
            self.rooms.remove(&room_name);
        }
        Some((room_name, out))
    }
}

fn not_in_room() -> ProtoError {
    ProtoError::new(ErrorCode::NotInRoom, "join a room first")
}

/// Compares secrets without leaking through timing where they first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[path = "rooms_tests.rs"]
mod tests;
