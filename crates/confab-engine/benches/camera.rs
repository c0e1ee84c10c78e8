//! What a camera's frames cost on their way to the encoder, and what the app's tile scaling
//! costs, now against before. Prints figures; asserts nothing.
//!
//! ```text
//! cargo bench -p confab-engine --bench camera
//! ```
//!
//! - MJPEG decode to I420 at 720p and 1080p, per frame: zune-jpeg to YCbCr (the capture
//!   path now) against nokhwa's decoder to RGB plus the per-pixel RGB to I420 loop confab
//!   used before. The JPEGs are the synthetic picture in colour, 4:2:2 at quality 85, made by
//!   ImageMagick as a webcam would make them.
//! - YUYV 720p to I420 (the `yuv` crate's SIMD kernel against the old loop).
//! - Capture to encoder at 720p30: the whole camera thread (pacing, conversion, hand-over)
//!   plus fitting to the call size, as CPU time over wall time, for a test camera playing
//!   MJPEG and one playing YUYV.
//! - The app's tile scaling, 1280x720 to 640x360 and to 320x180: the old box filter
//!   against `I420Frame::scaled` (fast_image_resize, SIMD).

use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_engine::devices::camera::Camera;
use confab_engine::devices::camera_backend::{
    CameraEntry, CameraMode, CameraStream, CameraSystem, Cameras, PixelFormat, RawFrame,
};
use confab_engine::devices::pixels::{mjpeg_to_i420, to_i420};
use confab_engine::devices::synthetic::SyntheticPicture;
use confab_engine::devices::{DeviceError, VideoSource};
use confab_engine::frame::I420Frame;

/// Microseconds per call of `f`, the median of 5 runs of `n`.
fn per_call_us(n: u32, mut f: impl FnMut()) -> f64 {
    f();
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

/// The synthetic picture as packed RGB (BT.601 limited range back to RGB).
fn rgb_picture(w: u32, h: u32) -> Vec<u8> {
    let f = SyntheticPicture::new(w, h).next_frame();
    let (y, u, v) = f.planes();
    let cw = f.chroma_width();
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    for row in 0..h as usize {
        for col in 0..w as usize {
            let c = (row / 2) * cw + col / 2;
            let (y, u, v) = (y[row * w as usize + col] as f64 - 16.0, u[c] as f64 - 128.0, v[c] as f64 - 128.0);
            let px = |x: f64| x.round().clamp(0.0, 255.0) as u8;
            out.extend_from_slice(&[
                px(1.164 * y + 1.596 * v),
                px(1.164 * y - 0.392 * u - 0.813 * v),
                px(1.164 * y + 2.017 * u),
            ]);
        }
    }
    out
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("confab-bench-camera-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (raw, out) = (dir.join(format!("{w}.rgb")), dir.join(format!("{w}.jpg")));
    std::fs::write(&raw, rgb_picture(w, h)).unwrap();
    let ok = Command::new("convert")
        .args(["-size", &format!("{w}x{h}"), "-depth", "8"])
        .arg(format!("rgb:{}", raw.display()))
        .args(["-quality", "85", "-sampling-factor", "2x1"])
        .arg(&out)
        .status()
        .expect("ImageMagick's convert");
    assert!(ok.success());
    std::fs::read(out).unwrap()
}

/// Before: packed RGB24 to I420, one pixel at a time (what confab used after nokhwa's RGB).
fn rgb_to_i420_before(src: &[u8], width: u32, height: u32) -> I420Frame {
    let (w, h) = (width as usize, height as usize);
    let mut out = I420Frame::new(width, height);
    let cw = out.chroma_width();
    let (y, u, v) = out.planes_mut();
    for row in 0..h {
        for col in 0..w {
            let p = &src[(row * w + col) * 3..];
            let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
            y[row * w + col] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16).clamp(0, 255) as u8;
            if row % 2 == 0 && col % 2 == 0 {
                u[(row / 2) * cw + col / 2] = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
                v[(row / 2) * cw + col / 2] = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
            }
        }
    }
    out
}

/// Before: packed YUYV to I420, one pixel at a time.
fn yuyv_to_i420_before(src: &[u8], width: u32, height: u32) -> I420Frame {
    let (w, h) = (width as usize, height as usize);
    let mut out = I420Frame::new(width, height);
    let cw = out.chroma_width();
    let (y, u, v) = out.planes_mut();
    for row in 0..h {
        let line = &src[row * w * 2..(row + 1) * w * 2];
        for col in 0..w {
            y[row * w + col] = line[col * 2];
        }
        if row % 2 == 0 {
            let next = if row + 1 < h { &src[(row + 1) * w * 2..(row + 2) * w * 2] } else { line };
            for c in 0..w / 2 {
                u[(row / 2) * cw + c] = ((line[c * 4 + 1] as u16 + next[c * 4 + 1] as u16) / 2) as u8;
                v[(row / 2) * cw + c] = ((line[c * 4 + 3] as u16 + next[c * 4 + 3] as u16) / 2) as u8;
            }
        }
    }
    out
}

/// Before: the app's area-average scaler, one output pixel at a time.
fn scaled_before(f: &I420Frame, width: u32, height: u32) -> I420Frame {
    fn plane(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize) {
        for oy in 0..dh {
            let y0 = oy * sh / dh;
            let y1 = ((oy + 1) * sh / dh).max(y0 + 1).min(sh);
            for ox in 0..dw {
                let x0 = ox * sw / dw;
                let x1 = ((ox + 1) * sw / dw).max(x0 + 1).min(sw);
                let mut sum = 0u32;
                for y in y0..y1 {
                    for &p in &src[y * sw + x0..y * sw + x1] {
                        sum += p as u32;
                    }
                }
                let n = ((y1 - y0) * (x1 - x0)) as u32;
                dst[oy * dw + ox] = ((sum + n / 2) / n) as u8;
            }
        }
    }
    let mut out = I420Frame::new(width, height);
    let (sy, su, sv) = f.planes();
    let (ow, oh, ocw, och) = (out.width as usize, out.height as usize, out.chroma_width(), out.chroma_height());
    let (scw, sch) = (f.chroma_width(), f.chroma_height());
    let (dy, du, dv) = out.planes_mut();
    plane(sy, f.width as usize, f.height as usize, dy, ow, oh);
    plane(su, scw, sch, du, ocw, och);
    plane(sv, scw, sch, dv, ocw, och);
    out
}

/// A camera that plays one frame, paced at its mode's rate.
struct OneFrame {
    mode: CameraMode,
    data: Arc<Vec<u8>>,
}

impl CameraSystem for OneFrame {
    fn list(&self) -> Vec<CameraEntry> {
        vec![CameraEntry { id: "bench".into(), name: "Bench camera".into() }]
    }
    fn open(&self, _: &str) -> Result<Box<dyn CameraStream>, DeviceError> {
        Ok(Box::new(Stream { mode: self.mode, data: self.data.clone(), n: 0, start: Instant::now() }))
    }
}

struct Stream {
    mode: CameraMode,
    data: Arc<Vec<u8>>,
    n: u32,
    start: Instant,
}

impl CameraStream for Stream {
    fn modes(&mut self) -> Result<Vec<CameraMode>, DeviceError> {
        Ok(vec![self.mode])
    }
    fn start(&mut self, mode: CameraMode) -> Result<CameraMode, DeviceError> {
        Ok(mode)
    }
    fn frame(&mut self) -> Result<RawFrame<'_>, DeviceError> {
        let due = self.start + Duration::from_secs(1) / self.mode.fps * self.n;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        self.n += 1;
        let m = self.mode;
        Ok(RawFrame { format: m.format, width: m.width, height: m.height, stride: None, data: &self.data })
    }
}

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// CPU (% of one core) of capturing `secs` seconds at 720p30 from a camera playing `data`,
/// each frame fitted to the call's 1280x720 as the video pipeline does.
fn capture_cpu(format: PixelFormat, data: Vec<u8>, secs: f64) -> (f64, u32) {
    let mode = CameraMode { format, width: 1280, height: 720, fps: 30 };
    let cams = Cameras(Arc::new(OneFrame { mode, data: Arc::new(data) }));
    let mut cam = Camera::open(&cams, Some("bench"), 1280, 720, 30).unwrap();
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let mut frames = 0;
    while t.elapsed().as_secs_f64() < secs {
        let f = cam.next_frame().unwrap().unwrap();
        black_box(f.frame.fitted(1280, 720));
        frames += 1;
    }
    let used = cpu_seconds() - cpu;
    (100.0 * used / t.elapsed().as_secs_f64(), frames)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("MJPEG to I420, per frame (4:2:2 JPEG of the synthetic picture, quality 85):");
    for (w, h) in [(1280u32, 720u32), (1920, 1080)] {
        let jpg = jpeg(w, h);
        let ours = per_call_us(20, || {
            black_box(mjpeg_to_i420(&jpg).unwrap());
        });
        let decode_only = per_call_us(20, || {
            let o = zune_jpeg::zune_core::options::DecoderOptions::default()
                .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::YCbCr);
            black_box(zune_jpeg::JpegDecoder::new_with_options(&jpg[..], o).decode().unwrap());
        });
        println!("  {w}x{h}: decoding alone (zune-jpeg) {decode_only:.0} us");
        let res = nokhwa::utils::Resolution::new(w, h);
        let before = per_call_us(10, || {
            let buf = nokhwa::Buffer::new(res, &jpg, nokhwa::utils::FrameFormat::MJPEG);
            let rgb = buf.decode_image::<nokhwa::pixel_format::RgbFormat>().unwrap();
            black_box(rgb_to_i420_before(rgb.as_raw(), w, h));
        });
        println!(
            "  {w}x{h} ({} kB): zune-jpeg to YCbCr {ours:>7.0} us   nokhwa RGB + RGB->I420 loop {before:>7.0} us   ({:.1}x)",
            jpg.len() / 1024,
            before / ours
        );
    }

    let pic = SyntheticPicture::new(1280, 720).next_frame();
    let yuyv: Vec<u8> = {
        let (y, u, v) = pic.planes();
        let mut out = Vec::with_capacity(1280 * 720 * 2);
        for row in 0..720 {
            for col in 0..640 {
                let c = (row / 2) * 640 + col;
                out.extend_from_slice(&[y[row * 1280 + 2 * col], u[c], y[row * 1280 + 2 * col + 1], v[c]]);
            }
        }
        out
    };
    let raw = RawFrame { format: PixelFormat::Yuyv, width: 1280, height: 720, stride: None, data: &yuyv };
    let ours = per_call_us(100, || {
        black_box(to_i420(&raw).unwrap());
    });
    let before = per_call_us(100, || {
        black_box(yuyv_to_i420_before(&yuyv, 1280, 720));
    });
    println!("YUYV 1280x720 to I420: yuv crate {ours:.0} us, old loop {before:.0} us ({:.1}x)", before / ours);

    println!("Capture to encoder at 720p30 (camera thread + fit), CPU of one core:");
    for (name, format, data) in
        [("MJPEG", PixelFormat::Mjpeg, jpeg(1280, 720)), ("YUYV", PixelFormat::Yuyv, yuyv.clone())]
    {
        let (cpu, frames) = capture_cpu(format, data, 5.0);
        println!("  {name:<5} {cpu:5.1} %  ({frames} frames in 5 s)");
    }

    println!("App tile scaling from 1280x720, per frame:");
    for (w, h) in [(640u32, 360u32), (320, 180)] {
        let now = per_call_us(100, || {
            black_box(pic.scaled(w, h));
        });
        let before = per_call_us(20, || {
            black_box(scaled_before(&pic, w, h));
        });
        println!(
            "  to {w}x{h}: fast_image_resize {now:>6.0} us   old box filter {before:>6.0} us   ({:.1}x)",
            before / now
        );
    }
}
