//! The once-a-second [`PeerStats`] of each peer: totals from the peer connection's stats
//! report and our own counters, and rates from the difference to the last tick
//! ([`rates`], plain data).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use confab_proto::PeerId;
use webrtc::peer_connection::StatsSelector;

use super::peer_session::PeerSession;
use super::PeerStats;
use crate::peer_connection::selected_candidate_type;

/// The counters of one tick, to take rates from at the next.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StatsSample {
    pub at: Option<Instant>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_decoded: u64,
    pub frames_encoded: u64,
}

/// Fills the rates of `s` from the change since `last` (nothing at the first tick). Frames
/// sent count only while `connected`: the encoder runs for everyone, not for this peer.
pub(super) fn rates(s: &mut PeerStats, last: &StatsSample, now: &StatsSample, connected: bool) {
    let (Some(before), Some(at)) = (last.at, now.at) else { return };
    let dt = at.duration_since(before).as_secs_f64().max(1e-3);
    s.bitrate_in_kbps = now.bytes_in.saturating_sub(last.bytes_in) as f64 * 8.0 / dt / 1000.0;
    s.bitrate_out_kbps = now.bytes_out.saturating_sub(last.bytes_out) as f64 * 8.0 / dt / 1000.0;
    s.fps_received = now.frames_decoded.saturating_sub(last.frames_decoded) as f64 / dt;
    s.fps_sent = if connected { now.frames_encoded.saturating_sub(last.frames_encoded) as f64 / dt } else { 0.0 };
}

/// This tick's figures for `id`. `frames_encoded` and `budget_kbps` are the encoder's, shared
/// by all peers.
pub(super) async fn collect(
    id: &PeerId,
    p: &mut PeerSession,
    now: Instant,
    frames_encoded: u64,
    budget_kbps: u32,
) -> PeerStats {
    let report = p.pc.get_stats(now, StatsSelector::None).await;
    let mut s = PeerStats { peer_id: id.clone(), ..Default::default() };
    for inb in report.inbound_rtp_streams() {
        s.bytes_received += inb.bytes_received;
        s.packets_lost += inb.received_rtp_stream_stats.packets_lost;
    }
    for outb in report.outbound_rtp_streams() {
        s.bytes_sent += outb.sent_rtp_stream_stats.bytes_sent;
    }
    for pair in report.candidate_pairs() {
        if pair.nominated && pair.current_round_trip_time > 0.0 {
            s.rtt_ms = Some(pair.current_round_trip_time * 1000.0);
        }
    }
    if let Some(rtt) = s.rtt_ms {
        p.stats.rtt_ms.store(rtt as u64, Relaxed);
    }
    s.candidate_type = selected_candidate_type(&p.pc).await;
    s.path_kbps = p.state.rate.kbps();
    s.video_budget_kbps = budget_kbps;
    s.frames_decoded = p.stats.frames_decoded.load(Relaxed);
    s.frames_dropped = p.stats.frames_dropped.load(Relaxed);
    {
        let a = p.audio.lock().unwrap();
        s.jitter_ms = a.jitter_ms();
        s.audio_tone_hz = a.tone_hz();
        s.audio_packets_received = a.packets_received();
    }
    let sample = StatsSample {
        at: Some(now),
        bytes_in: s.bytes_received,
        bytes_out: s.bytes_sent,
        frames_decoded: s.frames_decoded,
        frames_encoded,
    };
    rates(&mut s, &p.state.last, &sample, p.state.connected);
    p.state.last = sample;
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_come_from_the_change_since_the_last_tick() {
        let t0 = Instant::now();
        let last =
            StatsSample { at: Some(t0), bytes_in: 1_000, bytes_out: 2_000, frames_decoded: 10, frames_encoded: 20 };
        let now = StatsSample {
            at: Some(t0 + Duration::from_millis(500)),
            bytes_in: 63_500,
            bytes_out: 127_000,
            frames_decoded: 25,
            frames_encoded: 35,
        };
        let mut s = PeerStats::default();
        rates(&mut s, &last, &now, true);
        assert_eq!((s.bitrate_in_kbps, s.bitrate_out_kbps), (1_000.0, 2_000.0));
        assert_eq!((s.fps_received, s.fps_sent), (30.0, 30.0));
        rates(&mut s, &last, &now, false);
        assert_eq!(s.fps_sent, 0.0, "nothing is sent to a peer that is not connected");
    }

    #[test]
    fn the_first_tick_has_no_rates() {
        let now = StatsSample { at: Some(Instant::now()), bytes_in: 5_000, ..Default::default() };
        let mut s = PeerStats::default();
        rates(&mut s, &StatsSample::default(), &now, true);
        assert_eq!(s.bitrate_in_kbps, 0.0);
    }
}
