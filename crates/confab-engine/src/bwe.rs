//! How fast to send video to one peer, from what its receiver reports say (RFC 3550: the
//! fraction of our packets it lost, and the round trip). Plain data: the call feeds reports
//! in and reads the rate out.
//!
//! It is the loss half of Google Congestion Control plus a queueing guard. Loss over 10 %
//! means the path is overfull: cut in proportion. A round trip growing 100 ms above the best
//! seen recently means a queue is filling on the path (a router buffer, bufferbloat): back off
//! before it overflows and the picture freezes. Otherwise, with little loss and no queue,
//! probe upwards. Between 2 and 10 % loss, hold: random loss is not congestion, and NACK
//! repairs it.
//!
//! Why not webrtc-rs's own GCC: wired in (TWCC feedback, estimate read out), its delay-based
//! part read the ±20 ms jitter of the 5 % loss test as overuse and drove 360p from 483 to
//! 60 kbit/s, freezing a call that NACK alone kept fluid; its pacer sends at exactly the
//! estimate, spreading every keyframe over hundreds of milliseconds.

use std::collections::VecDeque;

/// One receiver report block about our video.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkReport {
    /// 0..1, since the previous report.
    pub loss: f64,
    /// From the report's LSR and DLSR; `None` before the peer has seen a sender report.
    pub rtt_ms: Option<f64>,
}

/// The video send rate towards one peer.
#[derive(Debug)]
pub struct RateControl {
    kbps: f64,
    min_kbps: f64,
    max_kbps: f64,
    /// Recent round trips: their minimum is the path without a queue.
    rtts: VecDeque<f64>,
}

/// Round trips remembered for the queue-free baseline (reports come about once a second).
const RTT_WINDOW: usize = 30;
/// Queueing delay taken as a filling queue.
const QUEUE_MS: f64 = 100.0;

impl RateControl {
    /// Starts at `max_kbps`: a call begins at the quality asked for, and backs off if the
    /// path says so (probing up from little would make every call start blurry).
    pub fn new(min_kbps: u32, max_kbps: u32) -> Self {
        let max = max_kbps.max(min_kbps) as f64;
        RateControl { kbps: max, min_kbps: min_kbps as f64, max_kbps: max, rtts: VecDeque::new() }
    }

    pub fn kbps(&self) -> u32 {
        self.kbps.round() as u32
    }

    /// The path changed (ICE restart): its old round trips say nothing about the new one.
    pub fn path_changed(&mut self) {
        self.rtts.clear();
    }

    /// Applies one report; returns the new rate.
    pub fn on_report(&mut self, r: LinkReport) -> u32 {
        let queueing = r.rtt_ms.map(|rtt| {
            if self.rtts.len() == RTT_WINDOW {
                self.rtts.pop_front();
            }
            self.rtts.push_back(rtt);
            rtt - self.rtts.iter().copied().fold(f64::INFINITY, f64::min)
        });
        let queueing = queueing.unwrap_or(0.0);
        let loss = r.loss.clamp(0.0, 1.0);
        self.kbps *= if loss > 0.10 {
            1.0 - 0.5 * loss
        } else if queueing > QUEUE_MS {
            0.85
        } else if loss < 0.02 && queueing < QUEUE_MS / 3.0 {
            1.08
        } else {
            1.0
        };
        self.kbps = self.kbps.clamp(self.min_kbps, self.max_kbps);
        self.kbps()
    }
}

/// The round trip from a report block, in ms: now minus when the peer got our last sender
/// report (LSR) minus how long it held it before reporting (DLSR), all in compact NTP
/// (1/65536 s). `None` when the peer has had no sender report yet.
pub fn rtt_ms(now_compact_ntp: u32, lsr: u32, dlsr: u32) -> Option<f64> {
    if lsr == 0 {
        return None;
    }
    let rtt = now_compact_ntp.wrapping_sub(lsr).wrapping_sub(dlsr);
    // A negative result (clock steps) wraps to a huge one: not a round trip.
    (rtt < 65536 * 10).then(|| rtt as f64 * 1000.0 / 65536.0)
}

/// Now in compact NTP: the middle 32 bits of the 64-bit NTP timestamp.
pub fn compact_ntp_now() -> u32 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + 2_208_988_800;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (((secs & 0xFFFF) << 16) | (frac >> 16)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(loss: f64, rtt: f64) -> LinkReport {
        LinkReport { loss, rtt_ms: Some(rtt) }
    }

    #[test]
    fn a_clean_path_keeps_the_quality_asked_for() {
        let mut c = RateControl::new(60, 500);
        for _ in 0..20 {
            assert_eq!(c.on_report(report(0.0, 40.0)), 500);
        }
    }

    #[test]
    fn heavy_loss_cuts_in_proportion_and_random_loss_holds() {
        let mut c = RateControl::new(60, 500);
        assert_eq!(c.on_report(report(0.2, 40.0)), 450);
        assert_eq!(c.on_report(report(0.05, 40.0)), 450, "5 % loss is not congestion");
        assert_eq!(c.on_report(report(0.0, 40.0)), 486, "and it climbs back when loss stops");
    }

    #[test]
    fn a_growing_queue_backs_off_before_loss() {
        let mut c = RateControl::new(60, 1000);
        c.on_report(report(0.0, 50.0));
        assert_eq!(c.on_report(report(0.0, 120.0)), 1000, "70 ms of queue: hold");
        assert_eq!(c.on_report(report(0.0, 170.0)), 850);
        assert_eq!(c.on_report(report(0.0, 200.0)), 723);
    }

    #[test]
    fn the_baseline_is_recent_and_resets_with_the_path() {
        let mut c = RateControl::new(60, 1000);
        c.on_report(report(0.0, 20.0));
        for _ in 0..RTT_WINDOW {
            c.on_report(report(0.0, 200.0));
        }
        // The 20 ms sample has aged out: 200 ms is the path now, not a queue.
        let before = c.kbps();
        assert!(c.on_report(report(0.0, 200.0)) > before);
        c.path_changed();
        let before = c.kbps();
        assert!(c.on_report(report(0.0, 400.0)) > before, "a new path starts a new baseline");
    }

    #[test]
    fn stays_within_bounds() {
        let mut c = RateControl::new(60, 500);
        for _ in 0..50 {
            c.on_report(report(0.5, 40.0));
        }
        assert_eq!(c.kbps(), 60);
        assert_eq!(c.on_report(LinkReport { loss: 0.0, rtt_ms: None }), 65, "no round trip yet: loss decides");
    }

    #[test]
    fn round_trip_from_lsr_and_dlsr() {
        // Sent at t, held 0.5 s by the peer, back at t + 0.6 s: 100 ms on the wire.
        let t = 0x1234_0000u32;
        assert_eq!(rtt_ms(t + 65536 * 6 / 10, t, 65536 / 2).map(|r| r.round()), Some(100.0));
        assert_eq!(rtt_ms(t, 0, 0), None, "no sender report seen yet");
        assert_eq!(rtt_ms(t, t + 10, 0), None, "negative is not a round trip");
        assert_eq!(rtt_ms(5, u32::MAX - 65535, 0).map(|r| r.round()), Some(1000.0), "wraps");
    }
}
