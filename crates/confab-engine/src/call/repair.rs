//! What the call repairs, four times a second, as plain data: which peers get an ICE
//! restart, which are given up, which stuck setups start over, and the video budget that
//! the slowest working path allows. Once a second: which setups to report as stuck. The
//! per-peer rules live in `recovery::PeerHealth`; this module applies them across peers.

use std::time::{Duration, Instant};

use confab_proto::PeerId;

use super::peer_session::PeerState;
use crate::recovery::Repair;

/// A peer connection that has not come up this long is built anew by the offering side.
/// webrtc-rs's DTLS handshake can wedge when a packet of a flight is lost (seen at 5 % loss:
/// the server retransmits flight 4 eight times and gives up); a new connection starts the
/// handshake afresh. ICE through a relay plus DTLS normally takes well under 2 s.
pub(super) const SETUP_RETRY: Duration = Duration::from_secs(4);
pub(super) const MAX_SETUP_RETRIES: u32 = 4;

/// How long a new peer connection may take before the user is told it is not coming up.
pub(super) const CONNECT_DEADLINE: Duration = Duration::from_secs(8);

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct RepairPlan {
    /// What the one video encoding may use (kbit/s).
    pub budget_kbps: u32,
    /// Close their connections and tell the user they left.
    pub give_up: Vec<PeerId>,
    pub restart_ice: Vec<PeerId>,
    /// Setups that wedged: build the connection anew and offer again.
    pub start_over: Vec<PeerId>,
}

/// The plan for `now`. `link_up`: our own server link is up (offers can be sent, and a
/// silent peer is not just a sign that we are offline ourselves).
pub(super) fn plan<'a>(
    peers: impl IntoIterator<Item = (&'a PeerId, &'a PeerState)>,
    wanted_kbps: u32,
    now: Instant,
    link_up: bool,
) -> RepairPlan {
    let mut plan = RepairPlan { budget_kbps: wanted_kbps, ..Default::default() };
    for (id, p) in peers {
        // One encoding feeds every peer, so the slowest working path sets the rate.
        if p.health.ever_connected() && !p.health.is_down() {
            plan.budget_kbps = plan.budget_kbps.min(p.rate.kbps());
        }
        match p.health.due(now, link_up) {
            Repair::RestartIce => plan.restart_ice.push(id.clone()),
            Repair::GiveUp => {
                plan.give_up.push(id.clone());
                continue;
            }
            Repair::Nothing => {}
        }
        // The offering side starts a wedged setup over; the other side follows when it sees
        // the new DTLS fingerprint.
        let wedged = link_up
            && !p.neg.polite
            && !p.health.ever_connected()
            && p.retries < MAX_SETUP_RETRIES
            && now.duration_since(p.built) >= SETUP_RETRY;
        if wedged {
            plan.start_over.push(id.clone());
        }
    }
    plan
}

/// Whether the setup of this connection should now be reported as not coming up (once).
pub(super) fn newly_stuck(p: &mut PeerState, now: Instant) -> bool {
    if p.connected || p.reported_stuck || now.duration_since(p.since) < CONNECT_DEADLINE {
        return false;
    }
    p.reported_stuck = true;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bwe::LinkReport;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn id(s: &str) -> PeerId {
        PeerId(s.into())
    }

    #[test]
    fn the_slowest_working_path_sets_the_budget() {
        let t0 = Instant::now();
        let mut fast = PeerState::new(false, 1_000, t0);
        fast.health.connected(t0);
        let mut slow = PeerState::new(false, 1_000, t0);
        slow.health.connected(t0);
        slow.rate.on_report(LinkReport { loss: 0.2, rtt_ms: Some(50.0) });
        let slow_kbps = slow.rate.kbps();
        assert_eq!(slow_kbps, 900);
        // A path that is down, or never came up, does not hold everyone back.
        let awful = LinkReport { loss: 0.9, rtt_ms: None };
        let mut down = PeerState::new(false, 1_000, t0);
        down.health.connected(t0);
        down.health.lost(t0);
        let mut setting_up = PeerState::new(true, 1_000, t0);
        for _ in 0..5 {
            down.rate.on_report(awful);
            setting_up.rate.on_report(awful);
        }
        assert!(down.rate.kbps() < slow_kbps && setting_up.rate.kbps() < slow_kbps);
        let (a, b, c, d) = (id("fast"), id("slow"), id("down"), id("new"));
        let p = plan([(&a, &fast), (&b, &slow), (&c, &down), (&d, &setting_up)], 1_000, t0, true);
        assert_eq!(p.budget_kbps, slow_kbps);
        assert_eq!(plan([(&a, &fast)], 1_000, t0, true).budget_kbps, 1_000);
    }

    #[test]
    fn lost_paths_are_restarted_then_given_up() {
        let t0 = Instant::now();
        let mut p = PeerState::new(false, 500, t0);
        p.health.connected(t0);
        p.health.lost(t0 + ms(100));
        let a = id("a");
        let now = t0 + ms(100);
        assert_eq!(plan([(&a, &p)], 500, now, true).restart_ice, std::slice::from_ref(&a));
        assert_eq!(plan([(&a, &p)], 500, now, false), RepairPlan { budget_kbps: 500, ..Default::default() });
        let later = t0 + ms(10_100);
        let given_up = plan([(&a, &p)], 500, later, true);
        assert_eq!((given_up.give_up, given_up.restart_ice), (vec![a], vec![]));
    }

    #[test]
    fn only_the_offering_side_starts_a_wedged_setup_over_and_not_forever() {
        let t0 = Instant::now();
        let offerer = PeerState::new(false, 500, t0);
        let answerer = PeerState::new(true, 500, t0);
        let (a, b) = (id("a"), id("b"));
        assert!(plan([(&a, &offerer)], 500, t0 + SETUP_RETRY - ms(1), true).start_over.is_empty());
        let p = plan([(&a, &offerer), (&b, &answerer)], 500, t0 + SETUP_RETRY, true);
        assert_eq!(p.start_over, std::slice::from_ref(&a));
        assert!(plan([(&a, &offerer)], 500, t0 + SETUP_RETRY, false).start_over.is_empty(), "not while offline");
        let mut tried = PeerState::new(false, 500, t0);
        tried.retries = MAX_SETUP_RETRIES;
        assert!(plan([(&a, &tried)], 500, t0 + SETUP_RETRY, true).start_over.is_empty());
        let mut worked = PeerState::new(false, 500, t0);
        worked.health.connected(t0);
        assert!(plan([(&a, &worked)], 500, t0 + SETUP_RETRY, true).start_over.is_empty());
    }

    #[test]
    fn a_peer_given_up_is_not_also_started_over() {
        let t0 = Instant::now();
        let mut p = PeerState::new(false, 500, t0);
        p.health.unconfirmed(t0);
        let a = id("a");
        let plan = plan([(&a, &p)], 500, t0 + Duration::from_secs(10), true);
        assert_eq!(plan.give_up, [a]);
        assert!(plan.start_over.is_empty());
    }

    #[test]
    fn a_setup_is_reported_stuck_once_after_the_deadline() {
        let t0 = Instant::now();
        let mut p = PeerState::new(false, 500, t0);
        assert!(!newly_stuck(&mut p, t0 + CONNECT_DEADLINE - ms(1)));
        assert!(newly_stuck(&mut p, t0 + CONNECT_DEADLINE));
        assert!(!newly_stuck(&mut p, t0 + CONNECT_DEADLINE + ms(1_000)), "once");
        let mut up = PeerState::new(false, 500, t0);
        up.connected = true;
        assert!(!newly_stuck(&mut up, t0 + CONNECT_DEADLINE));
    }
}
