//! Opus at 48 kHz mono in 20 ms frames, the shape WebRTC audio takes, over Debian's libopus.

/// Sample rate of everything audio in the engine.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame.
pub const FRAME_SAMPLES: usize = 960;
/// Duration of one frame.
pub const FRAME_MS: u64 = 20;

#[derive(Debug, thiserror::Error)]
#[error("opus {op} failed: {source}")]
pub struct OpusError {
    op: &'static str,
    #[source]
    source: opus::Error,
}

fn op(op: &'static str) -> impl FnOnce(opus::Error) -> OpusError {
    move |source| OpusError { op, source }
}

pub struct OpusEncoder {
    inner: opus::Encoder,
    buf: Vec<u8>,
}

impl OpusEncoder {
    pub fn new(bitrate_bps: i32) -> Result<Self, OpusError> {
        let mut inner = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
            .map_err(op("encoder init"))?;
        inner.set_bitrate(opus::Bitrate::Bits(bitrate_bps)).map_err(op("set bitrate"))?;
        // In-band FEC lets a receiver rebuild a lost frame from the next one.
        inner.set_inband_fec(true).map_err(op("set fec"))?;
        inner.set_packet_loss_perc(5).map_err(op("set loss"))?;
        Ok(OpusEncoder { inner, buf: vec![0; 1500] })
    }

    /// Encodes exactly one 20 ms frame.
    pub fn encode(&mut self, pcm: &[i16; FRAME_SAMPLES]) -> Result<Vec<u8>, OpusError> {
        let n = self.inner.encode(pcm, &mut self.buf).map_err(op("encode"))?;
        Ok(self.buf[..n].to_vec())
    }
}

pub struct OpusDecoder {
    inner: opus::Decoder,
}

impl OpusDecoder {
    pub fn new() -> Result<Self, OpusError> {
        Ok(OpusDecoder { inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).map_err(op("decoder init"))? })
    }

    /// Decodes one packet into 20 ms of PCM.
    pub fn decode(&mut self, packet: &[u8]) -> Result<[i16; FRAME_SAMPLES], OpusError> {
        let mut out = [0i16; FRAME_SAMPLES];
        self.inner.decode(packet, &mut out, false).map_err(op("decode"))?;
        Ok(out)
    }

    /// 20 ms of concealment for a lost packet: from FEC in `next` when we have it, else
    /// Opus's own loss concealment.
    pub fn conceal(&mut self, next: Option<&[u8]>) -> Result<[i16; FRAME_SAMPLES], OpusError> {
        let mut out = [0i16; FRAME_SAMPLES];
        match next {
            Some(p) => self.inner.decode(p, &mut out, true).map_err(op("fec decode"))?,
            None => self.inner.decode(&[], &mut out, false).map_err(op("plc"))?,
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tone::dominant_frequency;

    #[test]
    fn a_tone_survives_encode_decode() {
        let mut enc = OpusEncoder::new(32_000).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut src = crate::devices::synthetic::ToneGenerator::new(440.0);
        let mut heard = Vec::new();
        for i in 0..100 {
            let pcm = src.next_frame();
            let pkt = enc.encode(&pcm).unwrap();
            assert!(!pkt.is_empty() && pkt.len() < 400);
            // Lose every tenth packet: concealment must keep the tone going.
            let out = if i % 10 == 5 { dec.conceal(None).unwrap() } else { dec.decode(&pkt).unwrap() };
            heard.extend_from_slice(&out);
        }
        let f = dominant_frequency(&heard[heard.len() - 65536..], SAMPLE_RATE).unwrap();
        assert!((f - 440.0).abs() < 2.0, "heard {f} Hz");
        assert!(dec.decode(&[0xff; 3]).is_err() || dec.decode(&[0xff; 3]).is_ok(), "garbage never panics");
    }
}
