//! The media tasks of one peer connection: a sender per local track (waits for the
//! connection, then puts every encoded frame on it, and passes keyframe requests to the
//! encoder), and a receiver per remote track (video: RTP -> VP8 frames -> playout clock ->
//! decode thread; audio: RTP -> the peer's jitter buffer).

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_proto::PeerId;
use rtc::media::Sample;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::debug;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::peer_connection::PeerConnection;
use webrtc::rtp_transceiver::RtpSender;

use crate::media::{FrameSink, MediaPacket, PeerAudio, PeerMediaStats, SendSide, VideoDecodeThread};
use crate::peer_connection;
use crate::playout::VideoPlayout;
use crate::vp8_rtp::{Vp8Assembler, Vp8Frame};

/// Adds our track of `kind` to `pc` and starts its writer and (for video) keyframe-request
/// tasks. They wait for the connection, then forward every encoded frame.
pub(super) async fn add_sender(
    pc: &Arc<dyn PeerConnection>,
    kind: RtpCodecKind,
    me: &PeerId,
    send: &SendSide,
    mut connected: watch::Receiver<bool>,
) -> Result<Vec<JoinHandle<()>>, webrtc::error::Error> {
    let ssrc: u32 = rand::random();
    let codec = if kind == RtpCodecKind::Video { peer_connection::vp8_codec() } else { peer_connection::opus_codec() };
    let mime = codec.mime_type.clone();
    let label = if kind == RtpCodecKind::Video { "video" } else { "audio" };
    let track = Arc::new(TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            format!("confab-{me}"),
            format!("{label}-{me}"),
            label.into(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters { ssrc: Some(ssrc), ..Default::default() },
                codec,
                ..Default::default()
            }],
        ),
    )?);
    let sender: Arc<dyn RtpSender> = pc.add_track(track.clone() as Arc<dyn TrackLocal>).await?;
    let media = if kind == RtpCodecKind::Video { send.video.clone() } else { send.audio.clone() };
    let keyframe = send.keyframe.clone();
    let new_viewer = send.new_viewer.clone();
    let is_video = kind == RtpCodecKind::Video;
    let writer_track = track.clone();
    let writer = tokio::spawn(async move {
        while !*connected.borrow_and_update() {
            if connected.changed().await.is_err() {
                return;
            }
        }
        let pt = match sender.get_parameters().await {
            Ok(p) => p
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime))
                .map(|c| c.payload_type),
            Err(_) => None,
        }
        .unwrap_or(if is_video { peer_connection::VP8_PT } else { peer_connection::OPUS_PT });
        let mut rx = media.subscribe();
        if is_video {
            // A new viewer needs a keyframe to start from, now (not rate-limited).
            new_viewer.store(true, Relaxed);
        }
        loop {
            match rx.recv().await {
                Ok(MediaPacket { data, duration }) => {
                    let sample = Sample { data, duration, ..Sample::new(Instant::now()) };
                    if writer_track.sample_writer(ssrc, pt).write_sample(&sample).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    debug!(n, "peer writer lagged; frames skipped");
                    if is_video {
                        keyframe.store(true, Relaxed);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let mut tasks = vec![writer];
    if is_video {
        let keyframe = send.keyframe.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(_) = ev {
                    debug!("keyframe requested by a peer");
                    keyframe.store(true, Relaxed);
                }
            }
        }));
    }
    Ok(tasks)
}

/// Reads a remote video track: RTP -> VP8 frames -> the decode thread. Sends PLI when the
/// decoder asks (at most every 250 ms).
pub(super) async fn receive_video(
    track: Arc<dyn TrackRemote>,
    peer: PeerId,
    sink: Arc<dyn FrameSink>,
    stats: Arc<PeerMediaStats>,
    on_first: Box<dyn FnOnce() + Send>,
) {
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let (kf_tx, mut kf_rx) = mpsc::channel::<()>(4);
    let decoder = VideoDecodeThread::start(peer, sink, stats.clone(), kf_tx.clone(), on_first);
    let mut assembler = Vp8Assembler::new(retransmission_wait(0));
    let epoch = Instant::now();
    let mut gave_up = tokio::time::interval(Duration::from_millis(50));
    let mut last_pli = Instant::now() - Duration::from_secs(1);
    let mut playout = VideoPlayout::new();
    // Complete frames waiting for their time (see `playout`), in order.
    let mut held: VecDeque<(u64, Vp8Frame)> = VecDeque::new();
    let decode = |f: Vp8Frame| {
        if decoder.tx.try_send(f).is_err() {
            // The decoder is behind: drop this frame. The decoder then waits for a
            // keyframe rather than decode garbage.
            stats.frames_dropped.fetch_add(1, Relaxed);
            decoder.mark_loss();
        }
    };
    loop {
        let now = epoch.elapsed().as_millis() as u64;
        while held.front().is_some_and(|(show, _)| *show <= now) {
            decode(held.pop_front().expect("front exists").1);
        }
        let next_show = held.front().map(|(show, _)| epoch + Duration::from_millis(*show));
        let frames = tokio::select! {
            ev = track.poll() => match ev {
                Some(TrackRemoteEvent::OnRtpPacket(pkt)) => {
                    let h = &pkt.header;
                    assembler.push(h.sequence_number, h.timestamp, h.marker, &pkt.payload, now)
                }
                Some(TrackRemoteEvent::OnEnded) | None => break,
                Some(_) => continue,
            },
            _ = gave_up.tick() => {
                assembler.set_max_wait(retransmission_wait(stats.rtt_ms.load(Relaxed)));
                assembler.poll(now)
            }
            _ = tokio::time::sleep_until(next_show.unwrap_or(epoch).into()), if next_show.is_some() => continue,
            Some(()) = kf_rx.recv() => {
                // At most one request per round trip and a half: the keyframe asked for
                // last time may still be on its way, and each one is a burst on the path.
                let gap = Duration::from_millis((stats.rtt_ms.load(Relaxed) * 3 / 2).max(250));
                if last_pli.elapsed() >= gap {
                    last_pli = Instant::now();
                    stats.keyframes_requested.fetch_add(1, Relaxed);
                    debug!(ssrc, "sending PLI");
                    let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc: ssrc };
                    let _ = track.write_rtcp(vec![Box::new(pli)]).await;
                }
                continue;
            }
        };
        let now = epoch.elapsed().as_millis() as u64;
        for f in frames {
            let show = playout.schedule(f.rtp_ts, now);
            held.push_back((show, f));
        }
    }
    drop(decoder);
}

/// How long a frame with a hole may wait for NACK to fill it: a NACK goes out within 100 ms
/// of the hole showing, the resend takes a round trip, and one resend may be lost too. Waiting
/// costs delay only when a packet is missing; giving up costs a freeze until a keyframe.
fn retransmission_wait(rtt_ms: u64) -> u64 {
    (100 + rtt_ms * 5 / 2).clamp(150, 800)
}

/// Reads a remote audio track into that peer's jitter buffer.
pub(super) async fn receive_audio(track: Arc<dyn TrackRemote>, audio: Arc<Mutex<PeerAudio>>) {
    while let Some(ev) = track.poll().await {
        match ev {
            TrackRemoteEvent::OnRtpPacket(pkt) => {
                audio.lock().unwrap().push(pkt.header.sequence_number, pkt.header.timestamp, pkt.payload.to_vec());
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
}
