//! The RTCP that confab acts on, taken out of the interceptor chain of each peer
//! connection: keyframe requests (PLI, FIR) go on to our local track, and every receiver
//! report block about our video is noted for the rate control (`bwe`).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;

/// Receiver-report blocks about what we send, as they arrive; the call drains them.
pub type LinkReports = Arc<std::sync::Mutex<Vec<crate::bwe::LinkReport>>>;

/// Passes PLI and FIR from the remote to our track (`TrackLocal::poll`), so the encoder can
/// send a keyframe, and notes the loss and round trip of every receiver report block about
/// our video for the rate control. Everything else stops here, after the interceptors before
/// it acted on it.
#[derive(Default)]
pub struct KeyframeRequestForwarder {
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
    reports: LinkReports,
    /// The SSRCs we send video on. Only their report blocks steer the video rate: an audio
    /// block in the same RTCP packet tells of small packets that a full router queue still
    /// takes, so it says "no loss" while the video loses a third, and fed to the video rate
    /// it undid every back-off half a second later.
    video_ssrcs: HashSet<u32>,
}

impl KeyframeRequestForwarder {
    pub fn new(reports: LinkReports) -> Self {
        KeyframeRequestForwarder { reports, ..Default::default() }
    }
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
                for b in blocks.into_iter().flatten().filter(|b| self.video_ssrcs.contains(&b.ssrc)) {
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
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if is_video(info) {
            self.video_ssrcs.insert(info.ssrc);
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.video_ssrcs.remove(&info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

fn is_video(info: &StreamInfo) -> bool {
    info.mime_type.get(..6).is_some_and(|kind| kind.eq_ignore_ascii_case("video/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;
    use rtc::rtcp::reception_report::ReceptionReport;

    fn stream(ssrc: u32, mime_type: &str) -> StreamInfo {
        StreamInfo { ssrc, mime_type: mime_type.into(), ..Default::default() }
    }

    fn block(ssrc: u32, fraction_lost: u8) -> ReceptionReport {
        ReceptionReport { ssrc, fraction_lost, ..Default::default() }
    }

    fn receive(f: &mut KeyframeRequestForwarder, reports: Vec<ReceptionReport>) {
        let rr: Box<dyn rtc::rtcp::Packet> = Box::new(ReceiverReport { ssrc: 9, reports, ..Default::default() });
        let msg = TaggedPacket {
            now: Instant::now(),
            transport: Default::default(),
            message: AttributedPacket::new(Packet::Rtcp(vec![rr])),
        };
        f.handle_read(msg).unwrap();
    }

    #[test]
    fn only_report_blocks_about_our_video_reach_the_rate_control() {
        let reports = LinkReports::default();
        let mut f = KeyframeRequestForwarder::new(reports.clone());
        f.bind_local_stream(&stream(1, "video/VP8"));
        f.bind_local_stream(&stream(2, "audio/opus"));
        receive(&mut f, vec![block(1, 64), block(2, 0), block(3, 0)]);
        let got = std::mem::take(&mut *reports.lock().unwrap());
        assert_eq!(
            got.iter().map(|r| r.loss).collect::<Vec<_>>(),
            vec![0.25],
            "the video's block, not audio's or a stranger's"
        );

        f.unbind_local_stream(&stream(1, "video/VP8"));
        receive(&mut f, vec![block(1, 64)]);
        assert!(reports.lock().unwrap().is_empty(), "a stream we stopped sending steers nothing");
    }
}
