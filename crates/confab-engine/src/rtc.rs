//! Glue to the `webrtc` crate: building a peer connection the way confab wants it (VP8 +
//! Opus only, NACK/RTCP reports/TWCC feedback, keyframe requests delivered to us), its event
//! handler, and small conversions between browser-shaped protocol JSON and webrtc types.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use confab_proto::{IceCandidate, PeerId, SdpType, SessionDescription};
use rtc::interceptor::{Attribute, Interceptor, Packet, Slot, StreamInfo, TaggedPacket};
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::sansio::Protocol;
use tokio::sync::mpsc;
use webrtc::media_stream::track_remote::TrackRemote;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry, SettingEngineBuilder,
};

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

/// Receiver-report blocks about what we send, as they arrive; the call drains them.
pub type LinkReports = Arc<std::sync::Mutex<Vec<crate::bwe::LinkReport>>>;

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
        .with(Slot::from(14_000), KeyframeRequestForwarder { reports, ..Default::default() });
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
        .with_ice_connection_attempts(Some(std::time::Duration::from_millis(25)), Some(80))
        // The answerer waits as DTLS server, so the offerer (which by then has the answer and
        // our fingerprint) starts the handshake. The other way round, the answerer's first
        // ClientHello can reach the offerer before the answer does, be dropped, and cost a
        // 1 s DTLS retransmission.
        .with_answering_dtls_role(rtc::peer_connection::transport::RTCDtlsRole::Server)
        // Notice a dead path within 2 s (keepalives every 0.5 s keep a quiet but live one,
        // e.g. muted with the camera off, from looking dead), so that the ICE restart can
        // begin early; `failed` follows 6 s later.
        .with_ice_timeouts(
            Some(std::time::Duration::from_secs(2)),
            Some(std::time::Duration::from_secs(6)),
            Some(std::time::Duration::from_millis(500)),
        )
        // An ICE restart gathers on new sockets and allocates new TURN ports: the old ones
        // may be exactly what died (a NAT binding, a relay port).
        .with_discard_local_candidates_during_ice_restart(true)
        // The ICE agent holds a working relay pair back for 2 s by default, hoping a direct
        // pair beats it. With relay-only ICE nothing can, so that is 2 s of black screen at
        // every start and every restart; otherwise 1 s is still ample for host and srflx
        // pairs, which answer within tens of milliseconds when they work at all.
        .with_relay_acceptance_min_wait(Some(match settings.policy {
            IcePolicy::Relay => std::time::Duration::ZERO,
            IcePolicy::All => std::time::Duration::from_secs(1),
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

/// Passes PLI and FIR from the remote to our track (`TrackLocal::poll`), so the encoder can
/// send a keyframe, and notes the loss and round trip of every receiver report block for the
/// rate control. Everything else stops here, after the interceptors before it acted on it.
#[derive(Default)]
struct KeyframeRequestForwarder {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
    reports: LinkReports,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestForwarder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let now = crate::bwe::compact_ntp_now();
            for p in packets {
                let a = p.as_any();
                let blocks = a
                    .downcast_ref::<ReceiverReport>()
                    .map(|r| &r.reports)
                    .or_else(|| a.downcast_ref::<SenderReport>().map(|s| &s.reports));
                for b in blocks.into_iter().flatten() {
                    let r = crate::bwe::LinkReport {
                        loss: b.fraction_lost as f64 / 256.0,
                        rtt_ms: crate::bwe::rtt_ms(now, b.last_sender_report, b.delay),
                    };
                    let mut q = self.reports.lock().expect("reports lock");
                    // Bounded: the call drains these four times a second.
                    if q.len() < 64 {
                        q.push(r);
                    }
                }
            }
            let wanted: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| {
                    let a = p.as_any();
                    a.is::<PictureLossIndication>() || a.is::<FullIntraRequest>()
                })
                .cloned()
                .collect();
            if wanted.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(wanted);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for KeyframeRequestForwarder {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
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
