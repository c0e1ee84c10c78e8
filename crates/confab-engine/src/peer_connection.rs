//! Peer connections the way confab wants them, over the `webrtc` crate: VP8 + Opus only,
//! NACK, RTCP reports and keyframe requests delivered to us (see `rtcp_feedback`), ICE
//! timings tuned for fast setup and repair; the connection's event handler; and the
//! conversions between the protocol's browser-shaped JSON and webrtc types.

use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_proto::{IceCandidate, PeerId, SdpType, SessionDescription};
use rtc::interceptor::Slot;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

use crate::rtcp_feedback::{KeyframeRequestForwarder, LinkReports};

/// Payload types we register (Chromium's offers may use others; we read the negotiated ones).
pub const VP8_PT: u8 = 96;
pub const OPUS_PT: u8 = 111;

/// VP8 with the feedback we act on. The feedback must be on the codec our tracks are built
/// with, not only on the media engine's: the NACK responder keeps a send history only for
/// streams whose own codec says `nack`, so without it every resend request went unanswered
/// and each lost packet cost a keyframe round trip.
pub fn vp8_codec() -> RTCRtpCodec {
    let fb = |typ: &str, parameter: &str| RTCPFeedback { typ: typ.into(), parameter: parameter.into() };
    RTCRtpCodec {
        mime_type: MIME_TYPE_VP8.into(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: String::new(),
        rtcp_feedback: vec![fb("nack", ""), fb("nack", "pli"), fb("ccm", "fir")],
    }
}

pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

/// Which ICE candidates may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IcePolicy {
    #[default]
    All,
    /// Only TURN relays (hides our addresses; tests the TURN path).
    Relay,
}

impl std::str::FromStr for IcePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(IcePolicy::All),
            "relay" => Ok(IcePolicy::Relay),
            _ => Err(format!("ICE policy '{s}' is not 'all' or 'relay'")),
        }
    }
}

/// What a peer connection tells the call.
pub enum PcEvent {
    Candidate(RTCIceCandidateInit),
    GatheringComplete,
    State(RTCPeerConnectionState),
    Track(Arc<dyn TrackRemote>),
    /// A STUN or TURN server refused or failed us.
    IceServerError {
        url: String,
        code: u16,
        text: String,
    },
}

struct Handler {
    peer: PeerId,
    tx: mpsc::Sender<(PeerId, PcEvent)>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, ev: RTCPeerConnectionIceEvent) {
        if let Ok(mut init) = ev.candidate.to_json() {
            // Everything is bundled on the first m-section.
            if init.sdp_mid.as_deref().unwrap_or("").is_empty() {
                init.sdp_mid = Some("0".into());
            }
            let _ = self.tx.send((self.peer.clone(), PcEvent::Candidate(init))).await;
        }
    }
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.tx.send((self.peer.clone(), PcEvent::GatheringComplete)).await;
        }
    }
    async fn on_ice_candidate_error(&self, ev: webrtc::peer_connection::RTCPeerConnectionIceErrorEvent) {
        let e = PcEvent::IceServerError { url: ev.url, code: ev.error_code, text: ev.error_text };
        let _ = self.tx.send((self.peer.clone(), e)).await;
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send((self.peer.clone(), PcEvent::State(state))).await;
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tx.send((self.peer.clone(), PcEvent::Track(track))).await;
    }
}

/// Settings shared by every peer connection of a call.
#[derive(Clone, Debug)]
pub struct RtcSettings {
    pub ice_servers: Vec<confab_proto::IceServer>,
    pub policy: IcePolicy,
    /// Local UDP addresses to gather host candidates on, e.g. `0.0.0.0:0` (every interface but
    /// loopback) or `127.0.0.1:0` (loopback only, for tests on one machine).
    pub udp_bind: Vec<String>,
}

/// Builds a peer connection for `peer`. Its events go to `tx`.
pub async fn build_pc(
    peer: &PeerId,
    settings: &RtcSettings,
    tx: mpsc::Sender<(PeerId, PcEvent)>,
    reports: LinkReports,
) -> Result<Arc<dyn PeerConnection>, webrtc::error::Error> {
    let mut me = MediaEngine::default();
    me.register_codec(RTCRtpCodecParameters { rtp_codec: vp8_codec(), payload_type: VP8_PT }, RtpCodecKind::Video)?;
    me.register_codec(RTCRtpCodecParameters { rtp_codec: opus_codec(), payload_type: OPUS_PT }, RtpCodecKind::Audio)?;
    // After the codecs: the interceptors add their RTCP feedback to codecs already there.
    let registry = register_default_interceptors(Registry::new(), &mut me)?
        // Ask for a missing packet at most 3 times (every 100 ms): unlimited requests on a
        // congested path, where the round trip grows past the interval, multiply the very
        // traffic that congests it.
        .with(Slot::NackGenerator, rtc::interceptor::NackGeneratorBuilder::new().with_max_nacks_per_packet(3).build())
        .with(Slot::from(14_000), KeyframeRequestForwarder::new(reports));
    let ice_servers = settings
        .ice_servers
        .iter()
        // webrtc-rs relays through TURN over UDP only; skip what it cannot use rather than fail.
        .filter(|s| !s.urls.is_empty())
        .map(|s| RTCIceServer {
            urls: s
                .urls
                .iter()
                .filter(|u| !u.starts_with("turns:") && !u.starts_with("stuns:") && !u.contains("transport=tcp"))
                .cloned()
                .collect(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .filter(|s| !s.urls.is_empty())
        .collect();
    let cfg = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers)
        .with_ice_transport_policy(match settings.policy {
            IcePolicy::All => RTCIceTransportPolicy::All,
            IcePolicy::Relay => RTCIceTransportPolicy::Relay,
        })
        .build();
    let setting = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        // Check candidate pairs every 25 ms instead of 200: the first checks decide how soon
        // the first picture shows, and on a LAN the first pair usually works. 80 tries keep
        // a pair alive for 2 s, enough for far-away relays to answer.
        .with_ice_connection_attempts(Some(Duration::from_millis(25)), Some(80))
        // The answerer waits as DTLS server, so the offerer (which by then has the answer and
        // our fingerprint) starts the handshake. The other way round, the answerer's first
        // ClientHello can reach the offerer before the answer does, be dropped, and cost a
        // 1 s DTLS retransmission.
        .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Server)
        // Notice a dead path within 2 s (keepalives every 0.5 s keep a quiet but live one,
        // e.g. muted with the camera off, from looking dead), so that the ICE restart can
        // begin early; `failed` follows 6 s later.
        .with_ice_timeouts(Some(Duration::from_secs(2)), Some(Duration::from_secs(6)), Some(Duration::from_millis(500)))
        // An ICE restart gathers on new sockets and allocates new TURN ports: the old ones
        // may be exactly what died (a NAT binding, a relay port).
        .with_discard_local_candidates_during_ice_restart(true)
        // The ICE agent holds a working relay pair back for 2 s by default, hoping a direct
        // pair beats it. With relay-only ICE nothing can, so that is 2 s of black screen at
        // every start and every restart; otherwise 1 s is still ample for host and srflx
        // pairs, which answer within tens of milliseconds when they work at all.
        .with_relay_acceptance_min_wait(Some(match settings.policy {
            IcePolicy::Relay => Duration::ZERO,
            IcePolicy::All => Duration::from_secs(1),
        }))
        .build();
    let pc = PeerConnectionBuilder::<String>::new()
        .with_configuration(cfg)
        .with_media_engine(me)
        .with_setting_engine(setting)
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Handler { peer: peer.clone(), tx }))
        .with_udp_addrs(settings.udp_bind.clone())
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// An offer, applied locally and sent with the host candidates gathered so far. With
/// `ice_restart`, new ICE credentials: both sides gather afresh and check pairs again while
/// DTLS, SRTP and the tracks carry on. An offer of ours still unanswered (a restart that got
/// no answer) is taken back first.
pub async fn make_offer(
    pc: &Arc<dyn PeerConnection>,
    ice_restart: bool,
) -> Result<RTCSessionDescription, webrtc::error::Error> {
    let opts = || ice_restart.then_some(rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true });
    let offer = match pc.create_offer(opts()).await {
        Ok(o) => o,
        Err(first) => {
            // Nothing to take back means the offer failed for another reason: report that one.
            let rollback = RTCSessionDescription::rollback(None)?;
            pc.set_local_description(rollback).await.map_err(|_| first)?;
            pc.create_offer(opts()).await?
        }
    };
    pc.set_local_description(offer.clone()).await?;
    Ok(with_host_candidates(pc, offer).await)
}

/// The answer to the remote offer just applied, applied locally, with host candidates.
pub async fn make_answer(pc: &Arc<dyn PeerConnection>) -> Result<RTCSessionDescription, webrtc::error::Error> {
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer.clone()).await?;
    Ok(with_host_candidates(pc, answer).await)
}

/// The local description once it holds the first gathered candidates (host candidates take
/// a millisecond; waits at most 100 ms). Sending them inside the SDP, not only trickled after
/// it, means the remote's ICE agent has pairs to check the moment it starts: with trickle
/// alone, webrtc-rs found a peer-reflexive pair first and then idled a whole second before
/// nominating in about one call of five.
async fn with_host_candidates(pc: &Arc<dyn PeerConnection>, fallback: RTCSessionDescription) -> RTCSessionDescription {
    let deadline = Instant::now() + Duration::from_millis(100);
    loop {
        if let Some(d) = pc.local_description().await {
            if d.sdp.contains("a=candidate:") || Instant::now() >= deadline {
                return d;
            }
        } else if Instant::now() >= deadline {
            return fallback;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How the selected ICE pair reaches the peer: host, srflx, prflx or relay.
pub async fn selected_candidate_type(pc: &Arc<dyn PeerConnection>) -> Option<String> {
    for sender in pc.get_senders().await {
        if let Ok(Some(dtls)) = sender.transport().await {
            if let Ok(Some(pair)) = dtls.ice_transport().get_selected_candidate_pair().await {
                return Some(format!("{}", pair.local().typ).to_lowercase());
            }
        }
    }
    None
}

/// The DTLS fingerprint line of an SDP: it changes only when the other side built a new
/// peer connection (it restarted, or gave us up and came back).
pub fn fingerprint(sdp: &str) -> Option<&str> {
    sdp.lines().find_map(|l| l.strip_prefix("a=fingerprint:")).map(str::trim)
}

/// Protocol session description -> webrtc.
pub fn to_rtc_sdp(d: &SessionDescription) -> Result<RTCSessionDescription, webrtc::error::Error> {
    match d.kind {
        SdpType::Offer => RTCSessionDescription::offer(d.sdp.clone()),
        SdpType::Answer => RTCSessionDescription::answer(d.sdp.clone()),
        SdpType::Pranswer => RTCSessionDescription::pranswer(d.sdp.clone()),
        SdpType::Rollback => RTCSessionDescription::rollback(None),
    }
}

/// webrtc session description -> protocol.
pub fn from_rtc_sdp(d: &RTCSessionDescription) -> SessionDescription {
    use webrtc::peer_connection::RTCSdpType as T;
    let kind = match d.sdp_type {
        T::Answer => SdpType::Answer,
        T::Pranswer => SdpType::Pranswer,
        T::Rollback => SdpType::Rollback,
        _ => SdpType::Offer,
    };
    SessionDescription { kind, sdp: d.sdp.clone() }
}

pub fn to_rtc_candidate(c: &IceCandidate) -> RTCIceCandidateInit {
    RTCIceCandidateInit {
        candidate: c.candidate.clone(),
        sdp_mid: c.sdp_mid.clone(),
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: c.username_fragment.clone(),
        url: None,
    }
}

pub fn from_rtc_candidate(c: &RTCIceCandidateInit) -> IceCandidate {
    IceCandidate {
        candidate: c.candidate.clone(),
        sdp_mid: c.sdp_mid.clone(),
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: c.username_fragment.clone(),
    }
}
