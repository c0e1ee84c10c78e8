//! A small safe wrapper over libvpx's VP8 encoder and decoder (through `env-libvpx-sys`),
//! set up for real-time calls: one pass, CBR, no lag, error resilient, keyframes on demand.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::raw::c_int;
use std::ptr;

use vpx_sys as vpx;

use crate::frame::I420Frame;

#[derive(Debug, thiserror::Error)]
pub enum Vp8Error {
    #[error("libvpx {op} failed: {message}")]
    Codec { op: &'static str, message: String },
    #[error("frame is {got_w}x{got_h} but the encoder was set up for {want_w}x{want_h}")]
    WrongSize { got_w: u32, got_h: u32, want_w: u32, want_h: u32 },
    #[error("invalid encoder settings: {0}")]
    Settings(String),
}

/// Encoder settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vp8Config {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Encoder threads.
    pub threads: u32,
    /// libvpx speed, -16 (fastest) to 16; real-time calls use -6 to -10.
    pub cpu_used: i32,
    /// Screen content (text, flat areas, still for long stretches), tuned as libwebrtc tunes
    /// a screen share.
    pub screen: bool,
}

impl Vp8Config {
    /// Sensible real-time defaults for a picture size: about 0.07 bits per pixel per frame.
    pub fn realtime(width: u32, height: u32, fps: u32) -> Self {
        let pixels_per_s = width as u64 * height as u64 * fps as u64;
        let bitrate_kbps = ((pixels_per_s * 7 / 100) / 1000).clamp(150, 4000) as u32;
        // libvpx's VP8 row-sync threads busy-wait for each other: on a machine with few cores
        // (and a decoder per peer beside the encoder) a second thread burns more than it saves.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = if width * height >= 1280 * 720 && cores >= 4 { 2 } else { 1 };
        Vp8Config { width, height, fps, bitrate_kbps, threads, cpu_used: -8, screen: false }
    }

    /// A screen share: the resolution kept (text must stay readable) at a low frame rate,
    /// about 0.1 bits per pixel per frame: 1080p at 15 fps is 3.1 Mbit/s at most, and a
    /// still screen costs little whatever the target, since unchanged frames are skipped.
    pub fn screen(width: u32, height: u32, fps: u32) -> Self {
        let pixels_per_s = width as u64 * height as u64 * fps as u64;
        let bitrate_kbps = ((pixels_per_s / 10) / 1000).clamp(300, 3000) as u32;
        Vp8Config { bitrate_kbps, screen: true, ..Vp8Config::realtime(width, height, fps) }
    }
}

fn check(ctx: *mut vpx::vpx_codec_ctx_t, err: vpx::vpx_codec_err_t, op: &'static str) -> Result<(), Vp8Error> {
    if err == vpx::VPX_CODEC_OK {
        return Ok(());
    }
    // SAFETY: libvpx returns static strings; `ctx` is a valid context when given.
    let message = unsafe {
        let base = CStr::from_ptr(vpx::vpx_codec_err_to_string(err)).to_string_lossy().into_owned();
        let detail = if ctx.is_null() { ptr::null() } else { vpx::vpx_codec_error_detail(ctx) };
        if detail.is_null() {
            base
        } else {
            format!("{base} ({})", CStr::from_ptr(detail).to_string_lossy())
        }
    };
    Err(Vp8Error::Codec { op, message })
}

/// One encoded frame.
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    pub data: Vec<u8>,
    pub keyframe: bool,
}

pub struct Vp8Encoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
    cfg: Box<vpx::vpx_codec_enc_cfg_t>,
    settings: Vp8Config,
    pts: i64,
}

// SAFETY: the libvpx context is used from one thread at a time (`&mut self`).
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    pub fn new(settings: Vp8Config) -> Result<Self, Vp8Error> {
        if settings.width < 16 || settings.height < 16 || settings.width % 2 == 1 || settings.height % 2 == 1 {
            return Err(Vp8Error::Settings(format!(
                "size {}x{} must be even and at least 16x16",
                settings.width, settings.height
            )));
        }
        if settings.fps == 0 || settings.bitrate_kbps == 0 {
            return Err(Vp8Error::Settings("fps and bitrate must be positive".into()));
        }
        // SAFETY: plain C structs filled by libvpx before use.
        unsafe {
            let iface = vpx::vpx_codec_vp8_cx();
            let mut cfg: Box<vpx::vpx_codec_enc_cfg_t> = Box::new(MaybeUninit::zeroed().assume_init());
            check(ptr::null_mut(), vpx::vpx_codec_enc_config_default(iface, &mut *cfg, 0), "config_default")?;
            cfg.g_w = settings.width;
            cfg.g_h = settings.height;
            cfg.g_threads = settings.threads.max(1);
            // Timestamps in milliseconds.
            cfg.g_timebase = vpx::vpx_rational { num: 1, den: 1000 };
            cfg.g_lag_in_frames = 0;
            cfg.g_error_resilient = vpx::VPX_ERROR_RESILIENT_DEFAULT;
            cfg.g_pass = vpx::vpx_enc_pass::VPX_RC_ONE_PASS;
            cfg.rc_end_usage = vpx::vpx_rc_mode::VPX_CBR;
            cfg.rc_target_bitrate = settings.bitrate_kbps;
            // A screen's flat areas and text gain nothing from the finest quantizers but their
            // bits (libwebrtc's screen share starts higher too).
            cfg.rc_min_quantizer = if settings.screen { 6 } else { 2 };
            // The whole range, and frame dropping when the buffer runs low: without them the
            // encoder cannot get down to what a congested path carries (at 360p, q56 without
            // drops never went under about 220 kbit/s whatever the target).
            cfg.rc_max_quantizer = 63;
            cfg.rc_undershoot_pct = 100;
            cfg.rc_overshoot_pct = 15;
            cfg.rc_buf_initial_sz = 500;
            cfg.rc_buf_optimal_sz = 600;
            cfg.rc_buf_sz = 1000;
            cfg.rc_dropframe_thresh = 30;
            cfg.rc_resize_allowed = 0;
            // Keyframes come when a receiver asks (PLI), plus one every 10 s as a safety net.
            cfg.kf_mode = vpx::vpx_kf_mode::VPX_KF_AUTO;
            cfg.kf_min_dist = 0;
            cfg.kf_max_dist = settings.fps * 10;

            let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(MaybeUninit::zeroed().assume_init());
            check(
                ptr::null_mut(),
                vpx::vpx_codec_enc_init_ver(&mut *ctx, iface, &*cfg, 0, vpx::VPX_ENCODER_ABI_VERSION as c_int),
                "encoder init",
            )?;
            let mut enc = Vp8Encoder { ctx, cfg, settings, pts: 0 };
            enc.control(vpx::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int, settings.cpu_used)?;
            enc.control(vpx::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY as c_int, 0)?;
            // Screen content mode (2: its rate control may drop frames rather than blur text);
            // a static threshold that leaves unchanged blocks alone.
            let (content_mode, static_threshold) = if settings.screen { (2, 100) } else { (0, 1) };
            enc.control(vpx::vp8e_enc_control_id::VP8E_SET_SCREEN_CONTENT_MODE as c_int, content_mode)?;
            enc.control(vpx::vp8e_enc_control_id::VP8E_SET_STATIC_THRESHOLD as c_int, static_threshold)?;
            enc.control(vpx::vp8e_enc_control_id::VP8E_SET_MAX_INTRA_BITRATE_PCT as c_int, 300)?;
            enc.control(
                vpx::vp8e_enc_control_id::VP8E_SET_TOKEN_PARTITIONS as c_int,
                if settings.threads > 1 { 1 } else { 0 },
            )?;
            Ok(enc)
        }
    }

    fn control(&mut self, id: c_int, value: i32) -> Result<(), Vp8Error> {
        // SAFETY: the context is initialised; these controls take one int.
        let err = unsafe { vpx::vpx_codec_control_(&mut *self.ctx, id, value as c_int) };
        check(&mut *self.ctx, err, "control")
    }

    pub fn settings(&self) -> Vp8Config {
        self.settings
    }

    /// Changes the target bitrate (for congestion control), effective from the next frame.
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<(), Vp8Error> {
        self.cfg.rc_target_bitrate = kbps.max(30);
        self.settings.bitrate_kbps = self.cfg.rc_target_bitrate;
        // SAFETY: context and config are valid and owned by self.
        let err = unsafe { vpx::vpx_codec_enc_config_set(&mut *self.ctx, &*self.cfg) };
        check(&mut *self.ctx, err, "config_set")
    }

    /// Encodes one frame; `keyframe` forces an intra frame (a receiver asked with PLI).
    /// Returns the frame's packets joined, or `None` if the encoder produced nothing.
    pub fn encode(&mut self, frame: &I420Frame, keyframe: bool) -> Result<Option<EncodedFrame>, Vp8Error> {
        if frame.width != self.settings.width || frame.height != self.settings.height {
            return Err(Vp8Error::WrongSize {
                got_w: frame.width,
                got_h: frame.height,
                want_w: self.settings.width,
                want_h: self.settings.height,
            });
        }
        let duration = (1000 / self.settings.fps.max(1)) as u64;
        // SAFETY: the image wraps `frame.data`, which outlives the encode call; libvpx only
        // reads it. Packets are copied out before the next libvpx call.
        unsafe {
            let mut img: vpx::vpx_image_t = MaybeUninit::zeroed().assume_init();
            let wrapped = vpx::vpx_img_wrap(
                &mut img,
                vpx::vpx_img_fmt::VPX_IMG_FMT_I420,
                frame.width,
                frame.height,
                1,
                frame.data.as_ptr() as *mut u8,
            );
            if wrapped.is_null() {
                return Err(Vp8Error::Codec { op: "img_wrap", message: "could not wrap the frame".into() });
            }
            let flags = if keyframe { vpx::VPX_EFLAG_FORCE_KF as i64 } else { 0 };
            let err = vpx::vpx_codec_encode(
                &mut *self.ctx,
                &img,
                self.pts,
                duration as _,
                flags as _,
                vpx::VPX_DL_REALTIME as _,
            );
            check(&mut *self.ctx, err, "encode")?;
            self.pts += duration as i64;
            let mut out: Option<EncodedFrame> = None;
            let mut iter: vpx::vpx_codec_iter_t = ptr::null();
            loop {
                let pkt = vpx::vpx_codec_get_cx_data(&mut *self.ctx, &mut iter);
                if pkt.is_null() {
                    break;
                }
                if (*pkt).kind != vpx::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let f = (*pkt).data.frame;
                let bytes = std::slice::from_raw_parts(f.buf as *const u8, f.sz as usize);
                let key = f.flags & vpx::VPX_FRAME_IS_KEY != 0;
                match &mut out {
                    Some(o) => {
                        o.data.extend_from_slice(bytes);
                        o.keyframe |= key;
                    }
                    None => out = Some(EncodedFrame { data: bytes.to_vec(), keyframe: key }),
                }
            }
            Ok(out)
        }
    }
}

impl Drop for Vp8Encoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe {
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

pub struct Vp8Decoder {
    ctx: Box<vpx::vpx_codec_ctx_t>,
}

// SAFETY: used from one thread at a time (`&mut self`).
unsafe impl Send for Vp8Decoder {}

impl Vp8Decoder {
    pub fn new(threads: u32) -> Result<Self, Vp8Error> {
        // SAFETY: plain C structs; the context is initialised by libvpx.
        unsafe {
            let cfg = vpx::vpx_codec_dec_cfg_t { threads: threads.max(1), w: 0, h: 0 };
            let mut ctx: Box<vpx::vpx_codec_ctx_t> = Box::new(MaybeUninit::zeroed().assume_init());
            check(
                ptr::null_mut(),
                vpx::vpx_codec_dec_init_ver(
                    &mut *ctx,
                    vpx::vpx_codec_vp8_dx(),
                    &cfg,
                    0,
                    vpx::VPX_DECODER_ABI_VERSION as c_int,
                ),
                "decoder init",
            )?;
            Ok(Vp8Decoder { ctx })
        }
    }

    /// Decodes one frame. `Ok(None)` means the data decoded to no picture; an error means
    /// the frame is corrupt or references a frame we lost (the caller asks for a keyframe).
    pub fn decode(&mut self, data: &[u8]) -> Result<Option<I420Frame>, Vp8Error> {
        // SAFETY: `data` is valid for the call; the image returned by get_frame is valid
        // until the next decode call and is copied out before that.
        unsafe {
            let err = vpx::vpx_codec_decode(&mut *self.ctx, data.as_ptr(), data.len() as _, ptr::null_mut(), 0);
            check(&mut *self.ctx, err, "decode")?;
            let mut iter: vpx::vpx_codec_iter_t = ptr::null();
            let mut last = None;
            loop {
                let img = vpx::vpx_codec_get_frame(&mut *self.ctx, &mut iter);
                if img.is_null() {
                    break;
                }
                last = Some(copy_image(&*img));
            }
            Ok(last)
        }
    }
}

/// Copies a libvpx I420 image (strided planes) into a packed frame.
unsafe fn copy_image(img: &vpx::vpx_image_t) -> I420Frame {
    let (w, h) = (img.d_w, img.d_h);
    let mut out = I420Frame::new(w, h);
    let (cw, ch) = (out.chroma_width(), out.chroma_height());
    let (y, u, v) = out.planes_mut();
    for (plane, dst, pw, ph) in [(0usize, y, w as usize, h as usize), (1, u, cw, ch), (2, v, cw, ch)] {
        let stride = img.stride[plane] as usize;
        let src = img.planes[plane];
        for row in 0..ph {
            let s = std::slice::from_raw_parts(src.add(row * stride), pw);
            dst[row * pw..(row + 1) * pw].copy_from_slice(s);
        }
    }
    out
}

impl Drop for Vp8Decoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe {
            vpx::vpx_codec_destroy(&mut *self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::synthetic::SyntheticPicture;
    use crate::stamp::FrameStamp;

    #[test]
    fn encode_decode_round_trip_keeps_the_stamp() {
        for (w, h) in [(320, 180), (640, 360), (1280, 720)] {
            let mut enc = Vp8Encoder::new(Vp8Config::realtime(w, h, 30)).unwrap();
            let mut dec = Vp8Decoder::new(1).unwrap();
            let mut pic = SyntheticPicture::new(w, h);
            let mut read = 0;
            let mut bytes = 0;
            for n in 0..30u32 {
                let mut f = pic.next_frame();
                let stamp = FrameStamp { frame_no: n, capture_ms: 1_764_000_000_000 + n as u64 * 33 };
                stamp.draw(&mut f);
                let e = enc.encode(&f, n == 15).unwrap().expect("a frame per input");
                assert_eq!(e.keyframe, n == 0 || n == 15, "frame {n}");
                bytes += e.data.len();
                let d = dec.decode(&e.data).unwrap().expect("a picture per frame");
                assert_eq!((d.width, d.height), (w, h));
                if FrameStamp::read(&d) == Some(stamp) {
                    read += 1;
                }
            }
            assert_eq!(read, 30, "{w}x{h}: every stamp survives VP8");
            assert!(bytes > 1000, "{w}x{h}: it really encoded ({bytes} bytes)");
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_crash() {
        assert!(Vp8Encoder::new(Vp8Config::realtime(15, 15, 30)).is_err());
        let mut enc = Vp8Encoder::new(Vp8Config::realtime(320, 180, 30)).unwrap();
        assert!(matches!(enc.encode(&I420Frame::new(640, 360), false), Err(Vp8Error::WrongSize { .. })));
        let mut dec = Vp8Decoder::new(1).unwrap();
        assert!(dec.decode(&[0x00, 0x01, 0x02, 0x03, 0x04]).is_err());
        enc.set_bitrate(100).unwrap();
    }
}
