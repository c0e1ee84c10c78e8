//! One remote peer's session: its peer connection, the tasks that send to and receive from
//! it, and [`PeerState`], the plain data the call keeps about the peer (negotiation, repair
//! state, rate control, setup attempts), which the repair rules read without any socket.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use confab_proto::{PeerId, PeerInfo};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;
use webrtc::peer_connection::{PeerConnection, RTCPeerConnectionState};

use super::local_media::LocalMedia;
use super::stats::StatsSample;
use super::tracks;
use crate::bwe::RateControl;
use crate::media::{PeerAudio, PeerMediaStats};
use crate::negotiation::Negotiation;
use crate::peer_connection::{self, PcEvent, RtcSettings};
use crate::recovery::{Change, PeerHealth};
use crate::rtcp_feedback::LinkReports;

/// The least the video encoder is asked for (kbit/s): below it a picture is mush anyway.
const MIN_VIDEO_KBPS: u32 = 60;

/// What the call knows about one peer besides its connection.
#[derive(Debug)]
pub(super) struct PeerState {
    /// Perfect-negotiation bookkeeping of this connection.
    pub neg: Negotiation,
    /// When to restart ICE or give the peer up.
    pub health: PeerHealth,
    /// The video rate the peer's receiver reports allow.
    pub rate: RateControl,
    /// This connection came up (its senders were told to start).
    pub connected: bool,
    /// When both of us were in the room: the zero of `first_frame_ms`. Kept across rebuilds.
    pub since: Instant,
    /// When this peer connection was built, and how many were built before it that never
    /// connected.
    pub built: Instant,
    pub retries: u32,
    /// Whether "could not connect" was already reported.
    pub reported_stuck: bool,
    /// The counters of the last stats tick.
    pub last: StatsSample,
}

impl PeerState {
    pub fn new(polite: bool, wanted_kbps: u32, now: Instant) -> Self {
        PeerState {
            neg: Negotiation::new(polite),
            health: PeerHealth::new(polite),
            rate: RateControl::new(MIN_VIDEO_KBPS, wanted_kbps),
            connected: false,
            since: now,
            built: now,
            retries: 0,
            reported_stuck: false,
            last: StatsSample::default(),
        }
    }

    /// This state belongs to a connection built to replace `old`'s. What the user was told
    /// carries over: when the setup began (and whether it was reported stuck), and, for a
    /// connection that had worked, that this is a reconnect in progress.
    pub fn replaces(&mut self, old: &PeerState, polite: bool, now: Instant) {
        (self.since, self.retries, self.reported_stuck) = (old.since, old.retries, old.reported_stuck);
        if old.health.ever_connected() {
            self.health = PeerHealth::replacing(polite, now);
        }
    }
}

/// What a connection state change means, for the user and for the repair rules.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct StateNews {
    /// Media stopped or came back.
    pub change: Option<Change>,
    /// The very first setup failed outright: there is no network path to the peer at all.
    pub no_path: bool,
}

impl PeerState {
    /// The connection went to `state` at `now`.
    pub fn on_connection_state(&mut self, state: RTCPeerConnectionState, now: Instant) -> StateNews {
        match state {
            RTCPeerConnectionState::Connected => {
                self.connected = true;
                let change = self.health.connected(now);
                if change.is_some() {
                    self.rate.path_changed(); // after an ICE restart it may be another path
                }
                StateNews { change, no_path: false }
            }
            // Connecting again after having been connected: the other side restarted ICE,
            // perhaps before our own timer saw the path die. Same episode.
            RTCPeerConnectionState::Connecting if self.health.ever_connected() => {
                StateNews { change: self.health.lost(now), no_path: false }
            }
            RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed => {
                let first = !self.health.ever_connected();
                let change = self.health.lost(now);
                StateNews { change, no_path: first && state == RTCPeerConnectionState::Failed }
            }
            _ => StateNews::default(),
        }
    }

    /// The server lists this peer again after it had lost the room. Whether to build our
    /// connection anew: only one that had worked and is down now (the peer may have dropped
    /// its side); one that works, or is still coming up, is kept.
    pub fn back_in_room(&mut self) -> bool {
        self.health.confirmed();
        self.health.ever_connected() && self.health.is_down()
    }
}

/// Why a session could not be opened.
pub(super) enum OpenError {
    /// The peer connection could not be built: the user should hear of it.
    Connection(webrtc::error::Error),
    /// No Opus decoder for the peer's audio.
    Audio(crate::codec::opus::OpusError),
}

pub(super) struct PeerSession {
    pub info: PeerInfo,
    pub pc: Arc<dyn PeerConnection>,
    /// Tells this peer's senders that media may flow.
    connected: watch::Sender<bool>,
    /// Senders and receivers of this connection; aborted when it closes.
    tasks: Vec<JoinHandle<()>>,
    pub stats: Arc<PeerMediaStats>,
    pub audio: Arc<Mutex<PeerAudio>>,
    /// Receiver-report blocks as the interceptor saw them, until `drain_reports`.
    reports: LinkReports,
    pub state: PeerState,
}

impl PeerSession {
    /// Builds a peer connection to `info`, with our video and audio tracks on it. Its events
    /// go to `pc_tx`. Nothing is offered yet.
    pub async fn open(
        info: PeerInfo,
        polite: bool,
        me: &PeerId,
        rtc: &RtcSettings,
        pc_tx: mpsc::Sender<(PeerId, PcEvent)>,
        media: &LocalMedia,
        wanted_kbps: u32,
    ) -> Result<PeerSession, OpenError> {
        let reports = LinkReports::default();
        let pc = peer_connection::build_pc(&info.peer_id, rtc, pc_tx, reports.clone())
            .await
            .map_err(OpenError::Connection)?;
        let (connected, _) = watch::channel(false);
        let mut tasks = Vec::new();
        for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
            match tracks::add_sender(&pc, kind, me, &media.send, connected.subscribe()).await {
                Ok(mut t) => tasks.append(&mut t),
                Err(e) => warn!(error = %e, ?kind, "cannot add a track"),
            }
        }
        let audio = Arc::new(Mutex::new(PeerAudio::new().map_err(OpenError::Audio)?));
        media.audio_map.lock().unwrap().insert(info.peer_id.clone(), audio.clone());
        Ok(PeerSession {
            info,
            pc,
            connected,
            tasks,
            stats: Arc::new(PeerMediaStats::default()),
            audio,
            reports,
            state: PeerState::new(polite, wanted_kbps, Instant::now()),
        })
    }

    /// The connection is up: its senders start.
    pub fn start_senders(&self) {
        let _ = self.connected.send(true);
    }

    /// A task that belongs to this connection (a receiver of one of its tracks).
    pub fn own(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Feeds the receiver reports that arrived since the last call to the rate control.
    pub fn drain_reports(&mut self) {
        for r in std::mem::take(&mut *self.reports.lock().expect("reports lock")) {
            let kbps = self.state.rate.on_report(r);
            tracing::debug!(loss = r.loss, rtt_ms = ?r.rtt_ms, kbps, "receiver report");
        }
    }

    /// Closes the connection and waits for its tasks to end; gives back what the call knew.
    pub async fn close(self) -> PeerState {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.pc.close().await;
        for t in self.tasks {
            let _ = t.await;
        }
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use RTCPeerConnectionState as S;

    #[test]
    fn connection_states_tell_the_user_what_happened() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = PeerState::new(false, 500, t0);
        assert_eq!(p.on_connection_state(S::Connecting, t0), StateNews::default(), "a first setup is no news");
        assert_eq!(p.on_connection_state(S::Connected, t0 + ms(80)), StateNews::default());
        assert!(p.connected);
        let lost = p.on_connection_state(S::Connecting, t0 + ms(1_000));
        assert_eq!(lost.change, Some(Change::Reconnecting), "the other side restarted ICE");
        assert_eq!(p.on_connection_state(S::Disconnected, t0 + ms(2_000)), StateNews::default(), "same episode");
        let back = p.on_connection_state(S::Connected, t0 + ms(3_000));
        assert_eq!(back.change, Some(Change::Reconnected(ms(2_000))));
    }

    #[test]
    fn only_a_first_setup_that_fails_outright_means_no_path() {
        let t0 = Instant::now();
        let mut p = PeerState::new(true, 500, t0);
        assert!(!p.on_connection_state(S::Disconnected, t0).no_path, "the setup deadline reports a slow setup");
        assert!(p.on_connection_state(S::Failed, t0).no_path);
        let mut worked = PeerState::new(true, 500, t0);
        worked.on_connection_state(S::Connected, t0);
        let failed = worked.on_connection_state(S::Failed, t0);
        assert_eq!((failed.no_path, failed.change), (false, Some(Change::Reconnecting)));
    }

    #[test]
    fn back_in_the_room_only_a_broken_connection_is_rebuilt() {
        let t0 = Instant::now();
        let mut coming_up = PeerState::new(false, 500, t0);
        coming_up.health.unconfirmed(t0);
        assert!(!coming_up.back_in_room());
        assert_eq!(coming_up.health.due(t0 + Duration::from_secs(60), true), crate::recovery::Repair::Nothing);
        let mut working = PeerState::new(false, 500, t0);
        working.on_connection_state(S::Connected, t0);
        assert!(!working.back_in_room());
        working.on_connection_state(S::Disconnected, t0);
        assert!(working.back_in_room());
    }

    #[test]
    fn a_rebuilt_connection_keeps_what_the_user_was_told() {
        let t0 = Instant::now();
        let mut old = PeerState::new(false, 500, t0);
        old.retries = 2;
        old.reported_stuck = true;
        let mut new = PeerState::new(false, 500, t0 + Duration::from_secs(9));
        new.replaces(&old, false, t0 + Duration::from_secs(9));
        assert_eq!((new.since, new.retries, new.reported_stuck), (t0, 2, true));
        assert!(!new.health.ever_connected(), "a setup that never worked is not a reconnect");
        assert_eq!(new.built, t0 + Duration::from_secs(9), "the new connection's own setup clock");
    }

    #[test]
    fn replacing_a_working_connection_is_a_reconnect() {
        let t0 = Instant::now();
        let mut old = PeerState::new(true, 500, t0);
        old.health.connected(t0);
        let mut new = PeerState::new(true, 500, t0);
        new.replaces(&old, true, t0 + Duration::from_secs(1));
        assert!(new.health.is_down());
        let back = new.health.connected(t0 + Duration::from_millis(1_400));
        assert_eq!(back, Some(Change::Reconnected(Duration::from_millis(400))));
    }
}
