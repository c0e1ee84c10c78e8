//! When to repair a call, as plain data: the backoff of the signaling reconnect, and for
//! each remote peer when to restart ICE and when to give the peer up. The call task feeds in
//! connection states and the time and carries out what comes back; nothing here touches a
//! socket or reads a clock, so every rule is tested below with made-up instants.

use std::time::{Duration, Instant};

/// A peer whose media has been down this long (while our own server link is up, so it is
/// not us who is offline) is taken out of the call.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// The impolite side (the one that offered first) restarts ICE at once; the polite side
/// waits this long so that the two restarts rarely cross.
pub const POLITE_RESTART_DELAY: Duration = Duration::from_millis(1500);

/// Delay before reconnect attempt `attempt` (0-based) to the signaling server: 0.2 s, 0.4 s,
/// 0.8 s ... capped at 4 s, each scaled by `jitter` (pass a random number in 0.75..1.25) so that
/// a room full of clients does not hammer a restarted server in step.
pub fn reconnect_delay(attempt: u32, jitter: f64) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(5)).min(4_000);
    Duration::from_millis((base as f64 * jitter.clamp(0.5, 1.5)) as u64)
}

/// Delay between ICE restarts that did not bring the connection back: 3 s, then 4, 6, 8 s.
/// A restart through TURN needs new allocations, permissions and checks (over a second on a
/// slow path); starting another one before it could finish only throws that work away. Each
/// restart also costs the remote an answer, so a path that stays dead is not hammered.
fn restart_interval(restarts: u32) -> Duration {
    Duration::from_secs(match restarts {
        0 | 1 => 3,
        n => (2 * n as u64).min(8),
    })
}

/// What the call should do about one peer now.
#[derive(Debug, PartialEq, Eq)]
pub enum Repair {
    Nothing,
    /// Send an ICE-restart offer.
    RestartIce,
    /// The peer is gone: close its connection and tell the user it left.
    GiveUp,
}

/// What changed that the user should hear about.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Media from this peer stopped after having flowed.
    Reconnecting,
    /// Media flows again, after this long.
    Reconnected(Duration),
}

/// The repair state of the connection to one remote peer.
#[derive(Debug)]
pub struct PeerHealth {
    polite: bool,
    ever_connected: bool,
    /// Since when media has been down (after having flowed).
    down_since: Option<Instant>,
    next_restart: Option<Instant>,
    restarts: u32,
    /// After a rejoin with a server that had lost our room, since when this peer has not
    /// been seen back in the room.
    unconfirmed_since: Option<Instant>,
}

impl PeerHealth {
    pub fn new(polite: bool) -> Self {
        PeerHealth {
            polite,
            ever_connected: false,
            down_since: None,
            next_restart: None,
            restarts: 0,
            unconfirmed_since: None,
        }
    }

    /// A connection that replaces a broken one (the peer rebuilt its side): it counts as a
    /// reconnect in progress since `since`, so its coming up reads as "reconnected".
    pub fn replacing(polite: bool, since: Instant) -> Self {
        PeerHealth { ever_connected: true, down_since: Some(since), ..PeerHealth::new(polite) }
    }

    pub fn ever_connected(&self) -> bool {
        self.ever_connected
    }

    /// The connection came up.
    pub fn connected(&mut self, now: Instant) -> Option<Change> {
        self.ever_connected = true;
        self.next_restart = None;
        self.restarts = 0;
        self.down_since.take().map(|t| Change::Reconnected(now.saturating_duration_since(t)))
    }

    /// The connection went `disconnected` or `failed`. Before it ever connected this is the
    /// setup failing, which the call reports as an error instead.
    pub fn lost(&mut self, now: Instant) -> Option<Change> {
        if !self.ever_connected {
            return None;
        }
        if self.next_restart.is_none() {
            let wait = if self.polite { POLITE_RESTART_DELAY } else { Duration::ZERO };
            self.next_restart = Some(now + wait);
        }
        match self.down_since {
            Some(_) => None,
            None => {
                self.down_since = Some(now);
                Some(Change::Reconnecting)
            }
        }
    }

    /// The peer sent an offer: it is repairing the connection itself, so ours can wait.
    pub fn remote_offered(&mut self, now: Instant) {
        if let Some(t) = &mut self.next_restart {
            *t = (*t).max(now + restart_interval(self.restarts.max(1)));
        }
    }

    /// We sent an ICE-restart offer.
    pub fn restarted(&mut self, now: Instant) {
        self.restarts += 1;
        self.next_restart = Some(now + restart_interval(self.restarts));
    }

    /// A rejoined server did not list this peer: it has `GIVE_UP_AFTER` to come back.
    pub fn unconfirmed(&mut self, now: Instant) {
        self.unconfirmed_since.get_or_insert(now);
    }

    /// The server says the peer is in the room.
    pub fn confirmed(&mut self) {
        self.unconfirmed_since = None;
    }

    /// Whether media is down now (after having flowed).
    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// What to do now. `link_up`: our own signaling connection is up, so an offer can be
    /// sent and a silent peer is not just a sign that we are offline ourselves.
    pub fn due(&self, now: Instant, link_up: bool) -> Repair {
        if !link_up {
            return Repair::Nothing;
        }
        let long = |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) >= GIVE_UP_AFTER);
        if long(self.down_since) || long(self.unconfirmed_since) {
            return Repair::GiveUp;
        }
        match self.next_restart {
            Some(t) if self.down_since.is_some() && now >= t => Repair::RestartIce,
            _ => Repair::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn reconnect_backoff_grows_and_caps() {
        let d: Vec<u64> = (0..8).map(|a| reconnect_delay(a, 1.0).as_millis() as u64).collect();
        assert_eq!(d, [200, 400, 800, 1600, 3200, 4000, 4000, 4000]);
        assert_eq!(reconnect_delay(0, 1.25), ms(250));
        assert_eq!(reconnect_delay(40, 0.75), ms(3000), "no overflow on long outages");
    }

    #[test]
    fn setup_failures_are_not_reconnects() {
        let t0 = Instant::now();
        let mut h = PeerHealth::new(false);
        assert_eq!(h.lost(t0), None);
        assert_eq!(h.due(t0 + ms(60_000), true), Repair::Nothing, "never connected: the setup deadline reports it");
    }

    #[test]
    fn the_impolite_side_restarts_at_once_and_retries_with_backoff() {
        let t0 = Instant::now();
        let mut h = PeerHealth::new(false);
        assert_eq!(h.connected(t0), None);
        assert_eq!(h.lost(t0 + ms(100)), Some(Change::Reconnecting));
        assert_eq!(h.lost(t0 + ms(200)), None, "disconnected then failed is one episode");
        assert_eq!(h.due(t0 + ms(100), true), Repair::RestartIce);
        h.restarted(t0 + ms(100));
        assert_eq!(h.due(t0 + ms(3_000), true), Repair::Nothing);
        assert_eq!(h.due(t0 + ms(3_100), true), Repair::RestartIce);
        h.restarted(t0 + ms(3_100));
        assert_eq!(h.due(t0 + ms(7_000), true), Repair::Nothing, "second wait is 4 s");
        assert_eq!(h.connected(t0 + ms(7_000)), Some(Change::Reconnected(ms(6_900))));
        assert_eq!(h.due(t0 + ms(60_000), true), Repair::Nothing);
    }

    #[test]
    fn the_polite_side_waits_and_yields_to_a_remote_restart() {
        let t0 = Instant::now();
        let mut h = PeerHealth::new(true);
        h.connected(t0);
        h.lost(t0);
        assert_eq!(h.due(t0 + ms(1_000), true), Repair::Nothing);
        h.remote_offered(t0 + ms(1_000));
        assert_eq!(h.due(t0 + ms(3_000), true), Repair::Nothing, "the other side is on it");
        assert_eq!(h.due(t0 + ms(4_000), true), Repair::RestartIce, "but not forever");
    }

    #[test]
    fn nothing_happens_while_our_own_link_is_down() {
        let t0 = Instant::now();
        let mut h = PeerHealth::new(false);
        h.connected(t0);
        h.lost(t0);
        assert_eq!(h.due(t0 + ms(30_000), false), Repair::Nothing);
        assert_eq!(h.due(t0 + ms(30_000), true), Repair::GiveUp);
    }

    #[test]
    fn a_peer_down_for_ten_seconds_is_given_up() {
        let t0 = Instant::now();
        let mut h = PeerHealth::new(false);
        h.connected(t0);
        h.lost(t0);
        h.restarted(t0);
        assert_ne!(h.due(t0 + GIVE_UP_AFTER - ms(1), true), Repair::GiveUp);
        assert_eq!(h.due(t0 + GIVE_UP_AFTER, true), Repair::GiveUp);
    }

    #[test]
    fn a_peer_missing_after_a_rejoin_is_given_up_unless_it_comes_back() {
        let t0 = Instant::now();
        let mut h = PeerHealth::new(true);
        h.connected(t0);
        h.unconfirmed(t0);
        h.unconfirmed(t0 + ms(5_000));
        assert_eq!(h.due(t0 + GIVE_UP_AFTER, true), Repair::GiveUp, "the first mark counts");
        h.confirmed();
        assert_eq!(h.due(t0 + GIVE_UP_AFTER, true), Repair::Nothing);
    }

    #[test]
    fn a_replacement_connection_reports_reconnected() {
        let t0 = Instant::now();
        let mut h = PeerHealth::replacing(true, t0);
        assert!(h.is_down());
        assert_eq!(h.connected(t0 + ms(300)), Some(Change::Reconnected(ms(300))));
    }
}
