//! The call task: it owns every part of the call, routes each input (a command, a server
//! message, a peer connection event, a tick) to the part it concerns, and performs the I/O
//! that part asks for. The decisions live in the parts: `server_link` (reconnecting and
//! replay), `remote_sdp` (what a description means), `repair` (restarts, give-ups, the
//! video budget), `recovery::PeerHealth` (one peer's repair state).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use confab_proto::{ClientMsg, ErrorCode, IceServer, PeerId, PeerInfo, SdpType, ServerMsg, SignalData};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use webrtc::peer_connection::{RTCPeerConnectionState, RTCSessionDescription};

use super::handle::Command;
use super::local_media::LocalMedia;
use super::peer_session::{OpenError, PeerSession, PeerState};
use super::remote_sdp::{self, Arrival, Sender, Step};
use super::server_link::{JoinedRoom, LinkEvent, ServerLink};
use super::{relay_hint, repair, stats, tracks, CallConfig, CallEvent};
use crate::peer_connection::{self, PcEvent, RtcSettings};
use crate::recovery::Change;

pub(super) struct CallTask {
    link: ServerLink,
    /// Everyone the server says is in the room (a peer we gave up on stays here, so that it
    /// can come back).
    roster: HashMap<PeerId, PeerInfo>,
    peers: HashMap<PeerId, PeerSession>,
    media: LocalMedia,
    /// The video bitrate asked for (kbit/s): the ceiling of every peer's rate control.
    wanted_kbps: u32,
    /// How peer connections are built; the ICE servers are renewed at every rejoin.
    rtc: RtcSettings,
    /// ICE servers of our own, added to those the server hands out.
    extra_ice: Vec<IceServer>,
    ev_tx: mpsc::Sender<CallEvent>,
    /// Cloned into every peer connection's event handler.
    pc_tx: mpsc::Sender<(PeerId, PcEvent)>,
}

impl CallTask {
    pub fn new(
        cfg: &CallConfig,
        link: ServerLink,
        ice_servers: Vec<IceServer>,
        peers: &[PeerInfo],
        media: LocalMedia,
        ev_tx: mpsc::Sender<CallEvent>,
        pc_tx: mpsc::Sender<(PeerId, PcEvent)>,
    ) -> Self {
        let mut ice = ice_servers;
        ice.extend(cfg.extra_ice_servers.iter().cloned());
        CallTask {
            link,
            roster: peers.iter().map(|p| (p.peer_id.clone(), p.clone())).collect(),
            peers: HashMap::new(),
            wanted_kbps: media.wanted_kbps(),
            media,
            rtc: RtcSettings { ice_servers: ice, policy: cfg.ice_policy, udp_bind: cfg.udp_bind.clone() },
            extra_ice: cfg.extra_ice_servers.clone(),
            ev_tx,
            pc_tx,
        }
    }

    pub async fn run(mut self, mut cmd_rx: mpsc::Receiver<Command>, mut pc_rx: mpsc::Receiver<(PeerId, PcEvent)>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        let mut watchdog = tokio::time::interval(Duration::from_millis(250));
        let mut levels = tokio::time::interval(Duration::from_millis(200));
        let started = tokio::time::Instant::now();
        let mut leave_ack = None;
        let reason = loop {
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Leave(ack)) => { leave_ack = Some(ack); break "left".to_string(); }
                    Some(c) => self.command(c).await,
                    None => break "the call handle was dropped".into(),
                },
                ev = self.link.next() => match ev {
                    LinkEvent::Msg(m) => self.server_msg(m).await,
                    LinkEvent::Lost { reason } => self.emit(CallEvent::Reconnecting { peer_id: None, reason }).await,
                    LinkEvent::Back { joined, after } => self.back(joined, after).await,
                    LinkEvent::GaveUp { reason } => break reason,
                },
                Some((peer, ev)) = pc_rx.recv() => self.pc_event(peer, ev).await,
                _ = tick.tick() => self.stats().await,
                _ = watchdog.tick() => self.repair().await,
                _ = levels.tick() => {
                    let levels = self.media.levels(started.elapsed().as_millis() as u64);
                    // Levels are stale in 200 ms: one the UI has not taken yet is dropped, and
                    // never holds up the call.
                    let _ = self.ev_tx.try_send(CallEvent::Levels { levels });
                }
            }
        };
        self.end(reason, leave_ack).await;
    }

    async fn end(mut self, reason: String, leave_ack: Option<oneshot::Sender<()>>) {
        info!(%reason, "call ending");
        self.link.leave().await;
        // Stop capture first: the camera light goes out before anything else.
        self.media.stop_capture();
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        for p in peers {
            self.remove_peer(&p).await;
        }
        let _ = self.ev_tx.send(CallEvent::Ended { reason }).await;
        drop(self);
        if let Some(ack) = leave_ack {
            let _ = ack.send(());
        }
    }

    async fn emit(&self, ev: CallEvent) {
        let _ = self.ev_tx.send(ev).await;
    }

    async fn signal(&mut self, to: &PeerId, data: SignalData) {
        self.link.send(ClientMsg::Signal { to: to.clone(), data }).await;
    }

    async fn send_state(&mut self) {
        let state = self.media.state_msg();
        self.link.send(state).await;
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Mute(m) => {
                self.media.set_muted(m);
                self.send_state().await;
            }
            Command::Camera(on) => {
                let Some(result) = self.media.set_camera(on) else { return };
                if let Err(e) = result {
                    self.emit(CallEvent::Error { message: format!("cannot turn the camera on: {e}") }).await;
                }
                self.send_state().await;
            }
            Command::SwitchVideo(spec, ack) => {
                let _ = ack.send(self.media.switch_video(spec));
                // A new camera in place of a stopped one (or none) is camera on again.
                self.send_state().await;
            }
            Command::SwitchAudio(spec, ack) => {
                let _ = ack.send(self.media.switch_audio(spec));
            }
            Command::SwitchSink(spec, ack) => {
                let _ = ack.send(self.media.switch_sink(spec));
            }
            Command::Processing(s) => self.media.set_processing(s),
            Command::CameraDevice(n) => {
                let changed = self.media.camera_notice(&n);
                self.emit(CallEvent::from(n)).await;
                if changed {
                    self.send_state().await;
                }
            }
            Command::Chat(text) => self.link.send(ClientMsg::Chat { text }).await,
            Command::Leave(_) => unreachable!("handled by run"),
        }
    }

    /// We are back in the room after the server link broke.
    async fn back(&mut self, joined: JoinedRoom, after: Duration) {
        let after_ms = after.as_millis() as u64;
        info!(after_ms, resumed = joined.resumed, peers = joined.peers.len(), "back with the server");
        // Fresh TURN credentials for connections made from now on.
        self.rtc.ice_servers = joined.ice_servers;
        self.rtc.ice_servers.extend(self.extra_ice.iter().cloned());
        self.link.replay(joined.resumed).await;
        if !joined.resumed {
            // The server had lost the room (it restarted, or our grace ran out). Whoever it
            // lists is back; connections to them that still work carry on untouched.
            self.send_state().await;
            let listed: HashSet<PeerId> = joined.peers.iter().map(|p| p.peer_id.clone()).collect();
            let now = Instant::now();
            for (id, p) in self.peers.iter_mut() {
                if !listed.contains(id) {
                    p.state.health.unconfirmed(now);
                }
            }
            for p in joined.peers {
                self.roster.insert(p.peer_id.clone(), p.clone());
                match self.peers.get_mut(&p.peer_id) {
                    Some(s) => s.state.health.confirmed(),
                    None => {
                        // New to us: it will offer, as to any newcomer.
                        self.emit(CallEvent::PeerJoined { peer: p.clone() }).await;
                        self.add_peer(p, true).await;
                    }
                }
            }
        }
        self.emit(CallEvent::Reconnected { peer_id: None, after_ms }).await;
    }

    async fn server_msg(&mut self, m: ServerMsg) {
        match m {
            ServerMsg::PeerJoined { peer } => {
                self.roster.insert(peer.peer_id.clone(), peer.clone());
                if let Some(s) = self.peers.get_mut(&peer.peer_id) {
                    // Someone we are in a call with is back after the server lost the room.
                    if s.state.back_in_room() {
                        self.rebuild(&peer.peer_id, false).await;
                    }
                    return;
                }
                self.emit(CallEvent::PeerJoined { peer: peer.clone() }).await;
                self.add_peer(peer, false).await;
            }
            ServerMsg::PeerLeft { peer_id } => {
                self.roster.remove(&peer_id);
                if self.peers.contains_key(&peer_id) {
                    self.remove_peer(&peer_id).await;
                    self.emit(CallEvent::PeerLeft { peer_id }).await;
                }
            }
            ServerMsg::Signal { from, data } => self.remote_signal(from, data).await,
            ServerMsg::State { from, muted, camera } => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.info.muted = muted;
                    p.info.camera = camera;
                }
                self.emit(CallEvent::RemoteState { peer_id: from, muted, camera }).await;
            }
            ServerMsg::Chat { from, name, text, ts } => self.emit(CallEvent::Chat { from, name, text, ts }).await,
            // During repairs a signal can race a peer's departure; that is not the user's business.
            ServerMsg::Error { code: ErrorCode::UnknownPeer, message } => debug!(%message, "signal not delivered"),
            ServerMsg::Error { code, message } => {
                self.emit(CallEvent::Error { message: format!("server: {message} ({code})") }).await
            }
            ServerMsg::Joined { .. } | ServerMsg::Left { .. } => {}
        }
    }

    /// A new remote peer. `polite`: they were here first and will offer; else we offer.
    pub async fn add_peer(&mut self, info: PeerInfo, polite: bool) {
        let id = info.peer_id.clone();
        let name = info.name.clone();
        let opened = PeerSession::open(
            info,
            polite,
            self.link.me(),
            &self.rtc,
            self.pc_tx.clone(),
            &self.media,
            self.wanted_kbps,
        )
        .await;
        let mut session = match opened {
            Ok(s) => s,
            Err(OpenError::Connection(e)) => {
                self.emit(CallEvent::Error { message: format!("cannot set up a connection to {name}: {e}") }).await;
                return;
            }
            Err(OpenError::Audio(e)) => {
                warn!(error = %e, "opus decoder");
                return;
            }
        };
        if !polite {
            session.state.neg.offer_sent();
            match peer_connection::make_offer(&session.pc, false).await {
                Ok(offer) => self.signal(&id, SignalData::Sdp(peer_connection::from_rtc_sdp(&offer))).await,
                Err(e) => self.emit(CallEvent::Error { message: format!("cannot make an offer: {e}") }).await,
            }
        }
        self.peers.insert(id, session);
    }

    /// Closes the connection to `id`; returns what the call knew about it.
    async fn remove_peer(&mut self, id: &PeerId) -> Option<PeerState> {
        self.media.audio_map.lock().unwrap().remove(id);
        let session = self.peers.remove(id)?;
        Some(session.close().await)
    }

    /// Replaces the peer connection to `id` with a new one (we offer unless `polite`),
    /// keeping what the user was told (see `PeerState::replaces`).
    async fn rebuild(&mut self, id: &PeerId, polite: bool) {
        let Some(info) = self.peers.get(id).map(|p| p.info.clone()) else { return };
        let Some(old) = self.remove_peer(id).await else { return };
        self.add_peer(info, polite).await;
        if let Some(p) = self.peers.get_mut(id) {
            p.state.replaces(&old, polite, Instant::now());
        }
    }

    /// Offers new ICE credentials to `id`: both sides gather on fresh sockets (new TURN
    /// allocations too) and check pairs again, while DTLS, SRTP and the tracks carry on.
    async fn restart_ice(&mut self, id: &PeerId) {
        let Some(p) = self.peers.get_mut(id) else { return };
        p.state.health.restarted(Instant::now());
        p.state.neg.offer_sent();
        let pc = p.pc.clone();
        info!(peer = %id, "restarting ICE");
        match peer_connection::make_offer(&pc, true).await {
            Ok(offer) => self.signal(id, SignalData::Sdp(peer_connection::from_rtc_sdp(&offer))).await,
            Err(e) => warn!(peer = %id, error = %e, "ICE restart offer failed"),
        }
    }

    /// Restarts ICE where media stopped, gives up peers that stay unreachable, starts stuck
    /// setups over, and keeps the encoder within what the paths carry.
    async fn repair(&mut self) {
        for p in self.peers.values_mut() {
            p.drain_reports();
        }
        let peers = self.peers.iter().map(|(id, p)| (id, &p.state));
        let plan = repair::plan(peers, self.wanted_kbps, Instant::now(), self.link.is_up());
        if self.media.send.video_budget_kbps.swap(plan.budget_kbps, Relaxed) != plan.budget_kbps {
            debug!(kbps = plan.budget_kbps, "video budget");
        }
        for id in plan.give_up {
            info!(peer = %id, "peer unreachable; giving it up");
            self.remove_peer(&id).await;
            self.emit(CallEvent::PeerLeft { peer_id: id }).await;
        }
        for id in plan.restart_ice {
            self.restart_ice(&id).await;
        }
        for id in plan.start_over {
            info!(peer = %id, "connection setup stuck; starting it over");
            self.rebuild(&id, false).await;
            if let Some(p) = self.peers.get_mut(&id) {
                p.state.retries += 1;
            }
        }
    }

    async fn remote_signal(&mut self, from: PeerId, data: SignalData) {
        let is_offer = matches!(&data, SignalData::Sdp(d) if d.kind == SdpType::Offer);
        // The description our connection has from them: a new fingerprint means a new
        // connection on their side.
        let current = match (self.peers.get(&from), &data) {
            (Some(p), SignalData::Sdp(_)) => p.pc.remote_description().await.map(|d| d.sdp),
            _ => None,
        };
        let sender = if self.peers.contains_key(&from) {
            Sender::Connected { remote_sdp: current.as_deref() }
        } else if self.roster.contains_key(&from) {
            Sender::InRoom
        } else {
            Sender::Unknown
        };
        match remote_sdp::on_arrival(&data, sender) {
            Arrival::Drop => {
                debug!(%from, "signal from a peer we have no connection with");
                return;
            }
            Arrival::Revive => {
                let info = self.roster[&from].clone();
                info!(peer = %from, "a peer we had given up is back");
                self.emit(CallEvent::PeerJoined { peer: info.clone() }).await;
                self.add_peer(info, true).await;
            }
            Arrival::Rebuild { polite } => {
                info!(peer = %from, "the peer has a new connection; rebuilding ours");
                self.rebuild(&from, polite).await;
                if !polite {
                    return; // an answer from their new connection to our old offer: we re-offered
                }
            }
            Arrival::Apply => {}
        }
        let Some(p) = self.peers.get_mut(&from) else { return };
        if is_offer {
            p.state.health.remote_offered(Instant::now());
        }
        let pc = p.pc.clone();
        let step = remote_sdp::step(&mut p.state.neg, data);
        let result: Result<Option<RTCSessionDescription>, webrtc::error::Error> = async {
            match step {
                Step::Nothing => {}
                Step::Answer { offer, rollback } => {
                    if rollback {
                        pc.set_local_description(RTCSessionDescription::rollback(None)?).await?;
                    }
                    pc.set_remote_description(peer_connection::to_rtc_sdp(&offer)?).await?;
                    for c in p.state.neg.remote_set() {
                        let _ = pc.add_ice_candidate(peer_connection::to_rtc_candidate(&c)).await;
                    }
                    return Ok(Some(peer_connection::make_answer(&pc).await?));
                }
                Step::TakeAnswer(answer) => {
                    pc.set_remote_description(peer_connection::to_rtc_sdp(&answer)?).await?;
                    for c in p.state.neg.remote_set() {
                        let _ = pc.add_ice_candidate(peer_connection::to_rtc_candidate(&c)).await;
                    }
                }
                Step::AddCandidate(c) => {
                    if let Err(e) = pc.add_ice_candidate(peer_connection::to_rtc_candidate(&c)).await {
                        debug!(error = %e, "remote candidate refused");
                    }
                }
            }
            Ok(None)
        }
        .await;
        match result {
            Ok(Some(answer)) => self.signal(&from, SignalData::Sdp(peer_connection::from_rtc_sdp(&answer))).await,
            Ok(None) => {}
            Err(e) => self.emit(CallEvent::Error { message: format!("negotiation with {from} failed: {e}") }).await,
        }
    }

    async fn pc_event(&mut self, peer: PeerId, ev: PcEvent) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        match ev {
            PcEvent::Candidate(c) => {
                let data = SignalData::Candidate(Some(peer_connection::from_rtc_candidate(&c)));
                self.signal(&peer, data).await;
            }
            PcEvent::GatheringComplete => self.signal(&peer, SignalData::Candidate(None)).await,
            PcEvent::IceServerError { url, code, text } => {
                let message = format!("ICE server {url} failed for {}: {code} {text}", p.info.name);
                self.emit(CallEvent::Error { message }).await;
            }
            PcEvent::State(state) => {
                if state == RTCPeerConnectionState::Connected {
                    p.start_senders();
                }
                let news = p.state.on_connection_state(state, Instant::now());
                if news.no_path {
                    let message = format!("no network path to {}{}", p.info.name, relay_hint(self.rtc.policy));
                    self.emit(CallEvent::Error { message }).await;
                }
                let change = news.change;
                let name = format!("{state}").to_lowercase();
                self.emit(CallEvent::Connection { peer_id: peer.clone(), state: name.clone() }).await;
                match change {
                    Some(Change::Reconnecting) => {
                        info!(%peer, state = %name, "media path lost; repairing");
                        self.emit(CallEvent::Reconnecting { peer_id: Some(peer), reason: format!("connection {name}") })
                            .await
                    }
                    Some(Change::Reconnected(d)) => {
                        info!(%peer, ms = d.as_millis() as u64, "media path back");
                        self.emit(CallEvent::Reconnected { peer_id: Some(peer), after_ms: d.as_millis() as u64 }).await
                    }
                    None => {}
                }
            }
            PcEvent::Track(track) => {
                let kind = track.kind().await;
                let task = if kind == RtpCodecKind::Video {
                    let ev_tx = self.ev_tx.clone();
                    let since = p.state.since;
                    let who = peer.clone();
                    let on_first: Box<dyn FnOnce() + Send> = Box::new(move || {
                        let ms = since.elapsed().as_millis() as u64;
                        let _ = ev_tx.try_send(CallEvent::FirstFrame { peer_id: who, ms });
                    });
                    let frames = self.media.frames.clone();
                    tokio::spawn(tracks::receive_video(track, peer.clone(), frames, p.stats.clone(), on_first))
                } else {
                    tokio::spawn(tracks::receive_audio(track, p.audio.clone()))
                };
                p.own(task);
            }
        }
    }

    /// Once a second: setups that are not coming up are reported, and every peer's figures.
    async fn stats(&mut self) {
        let now = Instant::now();
        let mut stuck = Vec::new();
        for p in self.peers.values_mut() {
            if repair::newly_stuck(&mut p.state, now) {
                stuck.push(p.info.name.clone());
            }
        }
        for name in stuck {
            let how = relay_hint(self.rtc.policy);
            let deadline = repair::CONNECT_DEADLINE.as_secs();
            self.emit(CallEvent::Error { message: format!("could not connect to {name}{how} within {deadline} s") })
                .await;
        }
        let frames_encoded = self.media.send.frames_encoded.load(Relaxed);
        let budget = self.media.send.video_budget_kbps.load(Relaxed);
        let mut out = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            out.push(stats::collect(id, p, now, frames_encoded, budget).await);
        }
        let bad = self.media.send.frames_bad.load(Relaxed);
        for mut s in out {
            s.camera_bad_frames = bad;
            let _ = self.ev_tx.try_send(CallEvent::Stats { stats: s });
        }
    }
}
