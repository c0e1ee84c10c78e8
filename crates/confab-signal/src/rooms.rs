//! The room logic: a pure state machine. It owns no socket, task or clock; the server feeds
//! it decoded messages with the current time and delivers what it returns. Everything a
//! client can do to a room is decided here, so it is tested exhaustively without I/O.
//!
//! ```
//! use confab_signal::rooms::{ConnId, Rooms, RoomsConfig};
//! use confab_proto::{ClientMsg, ServerMsg};
//! let mut rooms = Rooms::new(RoomsConfig::default());
//! let out = rooms.handle(ConnId(1), ClientMsg::Join { room: "r".into(), name: "Ada".into(), password: None }, 0);
//! assert!(matches!(out[0].msg, ServerMsg::Joined { .. }));
//! ```

use std::collections::HashMap;

use confab_proto::{ClientMsg, ErrorCode, PeerId, PeerInfo, ProtoError, ServerMsg};

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
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig { max_peers: 4, ice: IceConfig::default(), new_peer_id: Box::new(random_peer_id) }
    }
}

/// 128 random bits, base64url (22 characters): unguessable, so holding another peer's id
/// grants nothing, and it is never chosen by a client.
pub fn random_peer_id() -> PeerId {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    PeerId(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

struct Member {
    conn: ConnId,
    info: PeerInfo,
}

struct Room {
    /// Set by whoever created the room; checked on every later join.
    password: Option<String>,
    /// In join order. Rooms are small (`max_peers`), so a scan beats a map.
    members: Vec<Member>,
}

impl Room {
    fn others(&self, except: ConnId) -> Vec<ConnId> {
        self.members.iter().map(|m| m.conn).filter(|c| *c != except).collect()
    }
    fn everyone(&self) -> Vec<ConnId> {
        self.members.iter().map(|m| m.conn).collect()
    }
    fn member(&self, conn: ConnId) -> Option<&Member> {
        self.members.iter().find(|m| m.conn == conn)
    }
}

/// All rooms of one server.
pub struct Rooms {
    cfg: RoomsConfig,
    rooms: HashMap<String, Room>,
    /// Which room each joined connection is in. A connection is in at most one room, and is
    /// in this map exactly when it is in that room's members: the invariant that rules out
    /// ghost peers.
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

    /// Number of peers in all rooms.
    pub fn peer_count(&self) -> usize {
        self.joined.len()
    }

    /// The room a connection is in, if any.
    pub fn room_of(&self, conn: ConnId) -> Option<&str> {
        self.joined.get(&conn).map(String::as_str)
    }

    /// Applies one message from `conn`. `now_ms` is wall-clock time in milliseconds since
    /// the Unix epoch (chat timestamps, TURN credential expiry).
    pub fn handle(&mut self, conn: ConnId, msg: ClientMsg, now_ms: u64) -> Vec<Outbound> {
        let result = match msg {
            ClientMsg::Join { room, name, password } => self.join(conn, room, name, password, now_ms),
            ClientMsg::Signal { to, data } => self.in_room(conn, |room, me| {
                let target =
                    room.members.iter().find(|m| m.info.peer_id == to && m.conn != conn).ok_or_else(|| {
                        ProtoError::new(ErrorCode::UnknownPeer, format!("no peer '{to}' in your room"))
                    })?;
                Ok(vec![Outbound::one(target.conn, ServerMsg::Signal { from: me.info.peer_id.clone(), data })])
            }),
            ClientMsg::State { muted, camera } => {
                let room_name = self.joined.get(&conn).cloned();
                match room_name.and_then(|r| self.rooms.get_mut(&r)) {
                    None => Err(not_in_room()),
                    Some(room) => {
                        let others = room.others(conn);
                        let me = room.members.iter_mut().find(|m| m.conn == conn).expect("joined implies member");
                        me.info.muted = muted;
                        me.info.camera = camera;
                        let msg = ServerMsg::State { from: me.info.peer_id.clone(), muted, camera };
                        Ok(vec![Outbound { to: others, msg }])
                    }
                }
            }
            ClientMsg::Chat { text } => self.in_room(conn, |room, me| {
                let msg =
                    ServerMsg::Chat { from: me.info.peer_id.clone(), name: me.info.name.clone(), text, ts: now_ms };
                Ok(vec![Outbound { to: room.everyone(), msg }])
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

    /// The connection is gone (closed, timed out or cut off): take it out of its room.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Outbound> {
        self.remove(conn).map(|(_, out)| out).unwrap_or_default()
    }

    fn in_room(
        &self,
        conn: ConnId,
        f: impl FnOnce(&Room, &Member) -> Result<Vec<Outbound>, ProtoError>,
    ) -> Result<Vec<Outbound>, ProtoError> {
        let room = self.joined.get(&conn).and_then(|r| self.rooms.get(r)).ok_or_else(not_in_room)?;
        let me = room.member(conn).expect("joined implies member");
        f(room, me)
    }

    fn join(
        &mut self,
        conn: ConnId,
        room_name: String,
        name: String,
        password: Option<String>,
        now_ms: u64,
    ) -> Result<Vec<Outbound>, ProtoError> {
        if let Some(current) = self.joined.get(&conn) {
            return Err(ProtoError::new(
                ErrorCode::AlreadyJoined,
                format!("you are already in room '{current}'; send leave first"),
            ));
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
        let peer_id = (self.cfg.new_peer_id)();
        let info = PeerInfo { peer_id: peer_id.clone(), name, muted: false, camera: true };
        let room = self.rooms.entry(room_name.clone()).or_insert_with(|| Room { password, members: Vec::new() });
        let peers: Vec<PeerInfo> = room.members.iter().map(|m| m.info.clone()).collect();
        let others = room.everyone();
        room.members.push(Member { conn, info: info.clone() });
        self.joined.insert(conn, room_name.clone());

        let joined = ServerMsg::Joined {
            peer_id: peer_id.clone(),
            room: room_name,
            max_peers: max as u32,
            peers,
            ice_servers: self.cfg.ice.servers_for(&peer_id, now_ms / 1000),
            version: confab_proto::PROTOCOL_VERSION,
        };
        let mut out = vec![Outbound::one(conn, joined)];
        if !others.is_empty() {
            out.push(Outbound { to: others, msg: ServerMsg::PeerJoined { peer: info } });
        }
        Ok(out)
    }

    /// Removes `conn` from its room, freeing the room when it empties. Returns the room's
    /// name and the `peer_left` for those who stay.
    fn remove(&mut self, conn: ConnId) -> Option<(String, Vec<Outbound>)> {
        let room_name = self.joined.remove(&conn)?;
        let room = self.rooms.get_mut(&room_name).expect("joined implies room");
        let pos = room.members.iter().position(|m| m.conn == conn).expect("joined implies member");
        let gone = room.members.remove(pos);
        let mut out = Vec::new();
        if room.members.is_empty() {
            self.rooms.remove(&room_name);
        } else {
            out.push(Outbound { to: room.everyone(), msg: ServerMsg::PeerLeft { peer_id: gone.info.peer_id } });
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
