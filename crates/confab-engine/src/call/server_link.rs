//! The call's link to the signaling server: the join handshake, and keeping our place in
//! the room when the connection breaks. Media never waits for it. While the link is down,
//! messages for the server wait in a bounded [`Backlog`]; the link reconnects with backoff
//! ([`Outage`]) and resumes our place, or takes a fresh one after a server restart, after
//! which only chat is replayed. `Backlog` and `Outage` are plain data; [`ServerLink`] does
//! the I/O and is driven by the call task through [`ServerLink::next`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use confab_proto::{ClientMsg, IceServer, PeerId, PeerInfo, Resume, ServerMsg};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{CallConfig, CallError};
use crate::recovery;
use crate::signaling::{self, SignalError, SignalEvent};

/// Messages kept for the server while the connection to it is down.
const MAX_BACKLOG: usize = 256;

/// How long the call keeps trying to get back to the server before it ends.
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(300);

/// How long the server may take to answer `join`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A whole reconnect attempt, TCP, TLS and WebSocket handshakes included: a server that
/// accepts and then says nothing must not stall reconnecting.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// What `joined` said.
pub(super) struct JoinedRoom {
    pub peer_id: PeerId,
    pub room: String,
    pub max_peers: u32,
    pub peers: Vec<PeerInfo>,
    pub ice_servers: Vec<IceServer>,
    pub resume_token: String,
    pub resumed: bool,
}

/// What we meant to send while the link was down.
#[derive(Debug, Default)]
pub(super) struct Backlog(VecDeque<ClientMsg>);

impl Backlog {
    /// Keeps `m` for later; past [`MAX_BACKLOG`] the oldest goes.
    pub fn push(&mut self, m: ClientMsg) {
        if self.0.len() >= MAX_BACKLOG {
            self.0.pop_front();
        }
        self.0.push_back(m);
    }

    /// Empties the backlog into what to send now that we are back. Everything, if our place
    /// was resumed. After a fresh place (the server lost the room) signals meant for the old
    /// room and our old state mean nothing there: only chat is sent.
    pub fn replay(&mut self, resumed: bool) -> Vec<ClientMsg> {
        std::mem::take(&mut self.0).into_iter().filter(|m| resumed || matches!(m, ClientMsg::Chat { .. })).collect()
    }
}

/// How long the link has been down, and how many attempts were made to bring it back.
#[derive(Debug, Default)]
pub(super) struct Outage {
    since: Option<Instant>,
    attempt: u32,
}

impl Outage {
    pub fn began(&mut self, now: Instant) {
        self.since = Some(now);
        self.attempt = 0;
    }

    /// How long to wait before the next attempt (see `recovery::reconnect_delay`).
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let d = recovery::reconnect_delay(self.attempt, jitter);
        self.attempt += 1;
        d
    }

    /// Attempts made so far in this outage.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// How long the link has been down, if that is long enough to stop trying.
    pub fn give_up(&self, now: Instant) -> Option<Duration> {
        let down = self.since.map(|t| now.saturating_duration_since(t)).unwrap_or_default();
        (down >= RECONNECT_GIVE_UP).then_some(down)
    }

    /// The link is back: how long it was down (0 if it was not).
    pub fn ended(&mut self, now: Instant) -> Duration {
        self.attempt = 0;
        self.since.take().map(|t| now.saturating_duration_since(t)).unwrap_or_default()
    }
}

/// What happened on the link.
pub(super) enum LinkEvent {
    Msg(ServerMsg),
    /// The connection broke; reconnecting has begun.
    Lost {
        reason: String,
    },
    /// We are back in the room, `after` the connection broke. Send `replay()` next.
    Back {
        joined: JoinedRoom,
        after: Duration,
    },
    /// Reconnecting is over; the call must end, for this reason.
    GaveUp {
        reason: String,
    },
}

type Link = (mpsc::Sender<ClientMsg>, mpsc::Receiver<SignalEvent>);

/// The connection to the server and our place in the room.
pub(super) struct ServerLink {
    /// Where and as whom to reconnect.
    cfg: CallConfig,
    /// Our id in the room.
    me: PeerId,
    /// Proves our place to the server when we reconnect.
    token: String,
    /// Both `None` while the connection is down.
    tx: Option<mpsc::Sender<ClientMsg>>,
    rx: Option<mpsc::Receiver<SignalEvent>>,
    /// The reconnect attempt in flight.
    retry: Option<Rejoin>,
    backlog: Backlog,
    outage: Outage,
}

impl ServerLink {
    /// Connects and joins the room the config names.
    /// Connects and joins, unless `cancel` fires first (then `CallError::Cancelled`).
    pub async fn connect(cfg: &CallConfig, cancel: &CancellationToken) -> Result<(ServerLink, JoinedRoom), CallError> {
        let ((tx, rx), joined) = handshake(cfg, None, cancel).await?;
        let link = ServerLink {
            cfg: cfg.clone(),
            me: joined.peer_id.clone(),
            token: joined.resume_token.clone(),
            tx: Some(tx),
            rx: Some(rx),
            retry: None,
            backlog: Backlog::default(),
            outage: Outage::default(),
        };
        Ok((link, joined))
    }

    pub fn me(&self) -> &PeerId {
        &self.me
    }

    pub fn is_up(&self) -> bool {
        self.tx.is_some()
    }

    /// To the server now, or once we are back with it.
    pub async fn send(&mut self, m: ClientMsg) {
        let m = match &self.tx {
            Some(tx) => match tx.send(m).await {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => m,
        };
        self.backlog.push(m);
    }

    /// Sends what waited in the backlog (see [`Backlog::replay`]).
    pub async fn replay(&mut self, resumed: bool) {
        for m in self.backlog.replay(resumed) {
            self.send(m).await;
        }
    }

    /// The next thing that happens on the link. Failed reconnect attempts are retried in
    /// here; only giving up comes out. Cancel-safe: nothing changes across an await.
    pub async fn next(&mut self) -> LinkEvent {
        loop {
            if let Some(rx) = &mut self.rx {
                match rx.recv().await.unwrap_or(SignalEvent::Closed(None)) {
                    SignalEvent::Msg(m) => return LinkEvent::Msg(m),
                    SignalEvent::Closed(r) => {
                        // Media does not need the server: keep every peer connection and
                        // get our place back.
                        self.rx = None;
                        self.tx = None;
                        self.outage.began(Instant::now());
                        let reason = format!("lost the server{}", r.map(|r| format!(": {r}")).unwrap_or_default());
                        warn!(%reason, "reconnecting");
                        self.retry = Some(self.rejoin());
                        return LinkEvent::Lost { reason };
                    }
                }
            }
            let Some(retry) = &mut self.retry else { return std::future::pending().await };
            let r = (&mut retry.0).await.unwrap_or_else(|e| Err(CallError::Closed(Some(e.to_string()))));
            self.retry = None;
            match r {
                Ok(((tx, rx), joined)) => {
                    let after = self.outage.ended(Instant::now());
                    self.tx = Some(tx);
                    self.rx = Some(rx);
                    self.token = joined.resume_token.clone();
                    if joined.peer_id != self.me {
                        // A server that does not know `resume` gave us a new id; the others
                        // will see us join afresh and rebuild their connections to us.
                        warn!(old = %self.me, new = %joined.peer_id, "the server gave us a new peer id");
                        self.me = joined.peer_id.clone();
                    }
                    return LinkEvent::Back { joined, after };
                }
                Err(
                    e @ (CallError::Refused { .. }
                    | CallError::Signal(
                        SignalError::BadUrl(_) | SignalError::Refused { .. } | SignalError::Untrusted { .. },
                    )),
                ) => {
                    return LinkEvent::GaveUp { reason: format!("could not get back into the room: {e}") };
                }
                Err(e) => {
                    if let Some(down) = self.outage.give_up(Instant::now()) {
                        return LinkEvent::GaveUp { reason: format!("lost the server for {} s: {e}", down.as_secs()) };
                    }
                    debug!(error = %e, attempt = self.outage.attempts(), "reconnect failed");
                    self.retry = Some(self.rejoin());
                }
            }
        }
    }

    /// Starts the next attempt to reconnect and take our place back.
    fn rejoin(&mut self) -> Rejoin {
        let delay = self.outage.next_delay(rand::random_range(0.75..1.25));
        let cfg = self.cfg.clone();
        let resume = Resume { peer_id: self.me.clone(), token: self.token.clone() };
        Rejoin(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            tokio::time::timeout(ATTEMPT_TIMEOUT, handshake(&cfg, Some(resume), &CancellationToken::new()))
                .await
                .unwrap_or_else(|_| Err(CallError::Closed(Some("no answer within 15 s".into()))))
        }))
    }

    /// Says `leave` and waits (briefly) for the socket task to deliver it and close: a process
    /// that exits right after leaving would otherwise drop the socket unsent, and the server
    /// would hold our place for its resume grace as if we had crashed.
    pub async fn leave(&mut self) {
        self.retry = None;
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(ClientMsg::Leave).await;
        }
        if let Some(mut rx) = self.rx.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async { while rx.recv().await.is_some() {} }).await;
        }
    }
}

/// A reconnect attempt in flight; dropping it cancels it.
struct Rejoin(JoinHandle<Result<(Link, JoinedRoom), CallError>>);

impl Drop for Rejoin {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects to the server and joins the room (taking up the place `resume` names, if any).
/// Messages the server sends after `joined` stay in the returned receiver. If `cancel`
/// fires first, the server is told we leave (it may have put us in the room already, and
/// would otherwise hold our place for its resume grace) and the socket is closed before
/// this returns `CallError::Cancelled`.
async fn handshake(
    cfg: &CallConfig,
    resume: Option<Resume>,
    cancel: &CancellationToken,
) -> Result<(Link, JoinedRoom), CallError> {
    let (tx, mut rx) = tokio::select! {
        r = signaling::connect(&cfg.server, &cfg.tls) => r?,
        _ = cancel.cancelled() => return Err(CallError::Cancelled),
    };
    let join =
        ClientMsg::Join { room: cfg.room.clone(), name: cfg.name.clone(), password: cfg.password.clone(), resume };
    let _ = tx.send(join).await;
    let outcome = {
        let joined = answer(&mut rx);
        tokio::select! {
            r = tokio::time::timeout(JOIN_TIMEOUT, joined) => Some(r),
            _ = cancel.cancelled() => None,
        }
    };
    match outcome {
        Some(Ok(j)) => Ok(((tx, rx), j?)),
        Some(Err(_)) => Err(CallError::Closed(Some("no answer to join within 10 s".into()))),
        None => {
            let _ = tx.send(ClientMsg::Leave).await;
            drop(tx);
            // The socket task sends its close frame and ends, which ends `rx`.
            let _ = tokio::time::timeout(Duration::from_secs(1), async { while rx.recv().await.is_some() {} }).await;
            Err(CallError::Cancelled)
        }
    }
}

/// The server's answer to `join`: our place, or why not.
async fn answer(rx: &mut mpsc::Receiver<SignalEvent>) -> Result<JoinedRoom, CallError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_proto::SignalData;

    fn chat(n: usize) -> ClientMsg {
        ClientMsg::Chat { text: format!("m{n}") }
    }

    fn signal() -> ClientMsg {
        ClientMsg::Signal { to: PeerId("bob".into()), data: SignalData::Candidate(None) }
    }

    #[test]
    fn a_resumed_place_gets_everything_in_order() {
        let mut b = Backlog::default();
        b.push(chat(1));
        b.push(signal());
        b.push(ClientMsg::State { muted: true, camera: false });
        let out = b.replay(true);
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[0], ClientMsg::Chat { text } if text == "m1"));
        assert!(matches!(out[1], ClientMsg::Signal { .. }));
        assert!(b.replay(true).is_empty(), "replaying empties the backlog");
    }

    #[test]
    fn a_fresh_place_gets_only_chat() {
        let mut b = Backlog::default();
        b.push(signal());
        b.push(chat(1));
        b.push(ClientMsg::State { muted: false, camera: true });
        b.push(chat(2));
        let out = b.replay(false);
        let texts: Vec<&str> = out
            .iter()
            .map(|m| match m {
                ClientMsg::Chat { text } => text.as_str(),
                other => panic!("only chat after a fresh place, got {other:?}"),
            })
            .collect();
        assert_eq!(texts, ["m1", "m2"]);
    }

    #[test]
    fn the_backlog_is_bounded_and_drops_the_oldest() {
        let mut b = Backlog::default();
        for n in 0..MAX_BACKLOG + 10 {
            b.push(chat(n));
        }
        let out = b.replay(true);
        assert_eq!(out.len(), MAX_BACKLOG);
        assert!(matches!(&out[0], ClientMsg::Chat { text } if text == "m10"));
    }

    #[test]
    fn an_outage_backs_off_and_gives_up_after_five_minutes() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        o.began(t0);
        let d: Vec<u128> = (0..3).map(|_| o.next_delay(1.0).as_millis()).collect();
        assert_eq!(d, [200, 400, 800]);
        assert_eq!(o.attempts(), 3);
        assert_eq!(o.give_up(t0 + Duration::from_secs(299)), None);
        assert_eq!(o.give_up(t0 + RECONNECT_GIVE_UP), Some(RECONNECT_GIVE_UP));
        assert_eq!(o.ended(t0 + Duration::from_millis(1_500)), Duration::from_millis(1_500));
        assert_eq!(o.next_delay(1.0).as_millis(), 200, "the next outage starts from the first step");
    }

    #[test]
    fn a_new_outage_starts_the_backoff_over() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        o.began(t0);
        o.next_delay(1.0);
        o.next_delay(1.0);
        o.began(t0 + Duration::from_secs(60));
        assert_eq!(o.next_delay(1.0).as_millis(), 200);
        assert_eq!(o.give_up(t0 + Duration::from_secs(300)), None, "counted from the new outage");
    }
}
