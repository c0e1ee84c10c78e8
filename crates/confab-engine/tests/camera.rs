//! Cameras as they really behave, with no camera on this machine: a test camera system
//! (the `CameraSystem` trait nokhwa's V4L2 cameras sit behind) plays real frames through
//! the same capture loop, conversions, crop and recovery a webcam's frames take: MJPEG made
//! by ImageMagick at test time, YUYV with padded rows, NV12 with a stride, truncated and
//! corrupt frames, a camera that stops, one unplugged, and a switch between two. Each test
//! is a real call on loopback (the real signaling server, webrtc-rs peers, VP8), and checks
//! what the other peer decodes: stamps, the shape of a circle, camera state.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_engine::devices::camera_backend::{
    CameraEntry, CameraMode, CameraStream, CameraSystem, Cameras, PixelFormat, RawFrame,
};
use confab_engine::devices::synthetic::SyntheticPicture;
use confab_engine::devices::{AudioSpec, DeviceError, VideoSpec};
use confab_engine::frame::I420Frame;
use confab_engine::stamp::FrameStamp;
use confab_engine::{Call, CallConfig, CallEvent, DecodedFrame, FrameSink};
use confab_proto::PeerId;

/// Calls share two cores: one at a time, so a test measures confab, not starvation.
static ONE_CALL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const W: u32 = 640;
const H: u32 = 360;

/// What a test camera does at its `n`th frame since it was opened.
#[derive(Clone)]
enum Play {
    Frame(Arc<Vec<u8>>),
    /// The read fails (a driver error).
    ReadError,
}

type Script = Arc<dyn Fn(u64) -> Play + Send + Sync>;

struct TestCamera {
    entry: CameraEntry,
    mode: CameraMode,
    stride: Option<usize>,
    script: Script,
}

/// Cameras a test controls: what each plays, whether it is plugged in, whether it opens.
#[derive(Default)]
struct TestCameras {
    cams: Mutex<Vec<TestCamera>>,
    /// Ids whose open fails (busy).
    busy: Mutex<Vec<String>>,
    /// Ids unplugged: not listed, open says not found, an open stream's reads fail as V4L2's
    /// do (ENODEV).
    unplugged: Arc<Mutex<Vec<String>>>,
    opens: Mutex<HashMap<String, u32>>,
}

impl TestCameras {
    fn add(&self, id: &str, mode: CameraMode, stride: Option<usize>, script: Script) {
        let entry = CameraEntry { id: id.into(), name: format!("Test camera {id}") };
        self.cams.lock().unwrap().push(TestCamera { entry, mode, stride, script });
    }
    fn set_busy(&self, id: &str, busy: bool) {
        let mut b = self.busy.lock().unwrap();
        b.retain(|x| x != id);
        if busy {
            b.push(id.into());
        }
    }
    fn set_plugged(&self, id: &str, plugged: bool) {
        let mut u = self.unplugged.lock().unwrap();
        u.retain(|x| x != id);
        if !plugged {
            u.push(id.into());
        }
    }
    fn opens(&self, id: &str) -> u32 {
        self.opens.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

impl CameraSystem for TestCameras {
    fn list(&self) -> Vec<CameraEntry> {
        let unplugged = self.unplugged.lock().unwrap();
        self.cams.lock().unwrap().iter().filter(|c| !unplugged.contains(&c.entry.id)).map(|c| c.entry.clone()).collect()
    }

    fn open(&self, id: &str) -> Result<Box<dyn CameraStream>, DeviceError> {
        let cams = self.cams.lock().unwrap();
        let not_found = || DeviceError::NotFound { kind: "camera", id: id.into() };
        let cam = cams.iter().find(|c| c.entry.id == id).ok_or_else(not_found)?;
        if self.unplugged.lock().unwrap().iter().any(|u| u == id) {
            return Err(not_found());
        }
        if self.busy.lock().unwrap().iter().any(|b| b == id) {
            let (kind, name) = ("camera", cam.entry.name.clone());
            return Err(DeviceError::Busy { kind, name, reason: "Device or resource busy".into() });
        }
        *self.opens.lock().unwrap().entry(id.into()).or_default() += 1;
        Ok(Box::new(TestStream {
            id: id.into(),
            unplugged: self.unplugged.clone(),
            mode: cam.mode,
            stride: cam.stride,
            script: cam.script.clone(),
            n: 0,
            start: None,
            buf: Arc::new(Vec::new()),
        }))
    }
}

struct TestStream {
    id: String,
    unplugged: Arc<Mutex<Vec<String>>>,
    mode: CameraMode,
    stride: Option<usize>,
    script: Script,
    n: u64,
    start: Option<Instant>,
    buf: Arc<Vec<u8>>,
}

impl CameraStream for TestStream {
    fn modes(&mut self) -> Result<Vec<CameraMode>, DeviceError> {
        // Something to choose from: the mode the test means, and a slow one to pass over.
        let slow = CameraMode { fps: 5, ..self.mode };
        Ok(vec![slow, self.mode])
    }

    fn start(&mut self, mode: CameraMode) -> Result<CameraMode, DeviceError> {
        assert_eq!(mode, self.mode, "the capture loop picks the 30 fps mode");
        Ok(mode)
    }

    fn frame(&mut self) -> Result<RawFrame<'_>, DeviceError> {
        // Paced like a sensor.
        let start = *self.start.get_or_insert_with(Instant::now);
        let due = start + Duration::from_secs(1) / self.mode.fps * self.n as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if self.unplugged.lock().unwrap().contains(&self.id) {
            return Err(DeviceError::Unavailable {
                kind: "camera",
                name: "Test camera".into(),
                reason: "No such device (os error 19)".into(),
            });
        }
        let play = (self.script)(self.n);
        self.n += 1;
        match play {
            Play::Frame(bytes) => {
                self.buf = bytes;
                let m = self.mode;
                Ok(RawFrame {
                    format: m.format,
                    width: m.width,
                    height: m.height,
                    stride: self.stride,
                    data: &self.buf,
                })
            }
            Play::ReadError => Err(DeviceError::Failed {
                kind: "camera",
                name: "Test camera".into(),
                reason: "VIDIOC_DQBUF: Input/output error".into(),
            }),
        }
    }
}

/// Stamped pictures: the synthetic moving picture with frame `i`'s stamp, `count` of them.
fn stamped_frames(count: u32, first_no: u32) -> Vec<I420Frame> {
    let mut pic = SyntheticPicture::new(W, H);
    (0..count)
        .map(|i| {
            let mut f = pic.next_frame();
            FrameStamp { frame_no: first_no + i, capture_ms: 1_000_000 + i as u64 }.draw(&mut f);
            f
        })
        .collect()
}

/// JPEGs of `frames` as a webcam makes them (4:2:2, quality 85), by ImageMagick: the
/// pictures' luma as grey RGB (a JPEG's Y is then that luma).
fn jpegs(frames: &[I420Frame], dir: &std::path::Path) -> Vec<Arc<Vec<u8>>> {
    let raw = dir.join("frames.rgb");
    let mut rgb = Vec::new();
    for f in frames {
        for &y in f.y() {
            rgb.extend_from_slice(&[y, y, y]);
        }
    }
    std::fs::write(&raw, rgb).unwrap();
    let (w, h) = (frames[0].width, frames[0].height);
    let out = dir.join("f-%03d.jpg");
    let status = Command::new("convert")
        .args(["-size", &format!("{w}x{h}"), "-depth", "8"])
        .arg(format!("rgb:{}", raw.display()))
        .args(["-quality", "85", "-sampling-factor", "2x1"])
        .arg(&out)
        .status()
        .expect("ImageMagick's convert (scripts/bootstrap installs it)");
    assert!(status.success());
    (0..frames.len()).map(|i| Arc::new(std::fs::read(dir.join(format!("f-{i:03}.jpg"))).unwrap())).collect()
}

/// YUYV with each row padded to `stride` bytes (the padding filled with junk).
fn yuyv(f: &I420Frame, stride: usize) -> Vec<u8> {
    let (w, h) = (f.width as usize, f.height as usize);
    let (y, u, v) = f.planes();
    let cw = f.chroma_width();
    let mut out = vec![0xAB; stride * h];
    for row in 0..h {
        let line = &mut out[row * stride..];
        for col in 0..w / 2 {
            let c = (row / 2) * cw + col;
            line[col * 4..col * 4 + 4].copy_from_slice(&[y[row * w + 2 * col], u[c], y[row * w + 2 * col + 1], v[c]]);
        }
    }
    out
}

/// NV12 with rows of `stride` bytes.
fn nv12(f: &I420Frame, stride: usize) -> Vec<u8> {
    let (w, h) = (f.width as usize, f.height as usize);
    let (y, u, v) = f.planes();
    let cw = f.chroma_width();
    let mut out = vec![0x55; stride * (h + h / 2)];
    for row in 0..h {
        out[row * stride..row * stride + w].copy_from_slice(&y[row * w..(row + 1) * w]);
    }
    for row in 0..h / 2 {
        let line = &mut out[(h + row) * stride..];
        for col in 0..cw {
            line[2 * col] = u[row * cw + col];
            line[2 * col + 1] = v[row * cw + col];
        }
    }
    out
}

/// What the receiving peer decoded: every stamp with when it arrived, and the last picture.
#[derive(Default)]
struct Seen {
    stamps: Mutex<Vec<(Instant, FrameStamp)>>,
    frames: Mutex<u64>,
    last: Mutex<Option<I420Frame>>,
}

impl FrameSink for Seen {
    fn on_frame(&self, _: &PeerId, f: &DecodedFrame) {
        *self.frames.lock().unwrap() += 1;
        if let Some(s) = f.stamp {
            self.stamps.lock().unwrap().push((Instant::now(), s));
        }
        *self.last.lock().unwrap() = Some(f.frame.clone());
    }
}

impl Seen {
    /// Distinct stamps decoded since `t`.
    fn stamps_since(&self, t: Instant) -> usize {
        let mut nos: Vec<u32> =
            self.stamps.lock().unwrap().iter().filter(|(at, _)| *at >= t).map(|(_, s)| s.frame_no).collect();
        nos.sort_unstable();
        nos.dedup();
        nos.len()
    }

    /// Stamped pictures decoded since `t`.
    fn stamped_since(&self, t: Instant) -> usize {
        self.stamps.lock().unwrap().iter().filter(|(at, _)| *at >= t).count()
    }
}

struct TwoPeers {
    ada: Call,
    bob: Call,
    seen: Arc<Seen>,
    _srv: confab_signal::ServerHandle,
}

/// Ada sends `video` from `cameras`; Bob sends nothing and records what he decodes. Returns
/// once Bob has decoded Ada's first picture.
async fn call(cameras: Arc<TestCameras>, video: VideoSpec) -> TwoPeers {
    let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ..Default::default() };
    let srv = confab_signal::Server::bind(cfg).await.unwrap().spawn();
    let url = srv.ws_url();
    let room = format!("cam-{}", rand_suffix());
    let mut a = CallConfig::new(url.clone(), room.clone(), "Ada");
    a.video = video;
    a.audio = AudioSpec::None;
    a.cameras = Cameras(cameras);
    a.udp_bind = vec!["127.0.0.1:0".into()];
    (a.width, a.height, a.fps) = (W, H, 30);
    let mut b = CallConfig::new(url, room, "Bob");
    b.video = VideoSpec::None;
    b.audio = AudioSpec::None;
    b.udp_bind = vec!["127.0.0.1:0".into()];
    let seen = Arc::new(Seen::default());
    let ada = Call::join(a, Arc::new(confab_engine::media::NoFrames)).await.expect("Ada joins");
    let bob = Call::join(b, seen.clone()).await.expect("Bob joins");
    let p = TwoPeers { ada, bob, seen, _srv: srv };
    wait_until(Duration::from_secs(15), || *p.seen.frames.lock().unwrap() > 0, "Bob never decoded Ada's video").await;
    p
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 % 1_000_000_007
}

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool, why: &str) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "{why} (within {limit:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Events of `call` until `limit`, or until `stop` says enough.
async fn events_until(call: &mut Call, limit: Duration, mut stop: impl FnMut(&CallEvent) -> bool) -> Vec<CallEvent> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, call.next_event()).await {
        let done = stop(&ev);
        out.push(ev);
        if done {
            break;
        }
    }
    out
}

fn device_events(evs: &[CallEvent]) -> Vec<(String, String)> {
    evs.iter()
        .filter_map(|e| match e {
            CallEvent::Device { kind, state, .. } => Some((kind.clone(), state.clone())),
            _ => None,
        })
        .collect()
}

fn mjpeg(width: u32, height: u32) -> CameraMode {
    CameraMode { format: PixelFormat::Mjpeg, width, height, fps: 30 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_truncated_mjpeg_frames_are_skipped_and_the_picture_keeps_coming() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let dir = tempdir("mjpeg");
    let jpgs = jpegs(&stamped_frames(60, 0), &dir);
    // From frame 40 on, every other frame is damaged for a while: a corrupt one (bytes
    // scrambled after the header), then a truncated one, as a USB camera sends while it
    // settles; from frame 120 on, clean again.
    let damaged = {
        let mut corrupt = (*jpgs[5]).clone();
        let mid = corrupt.len() / 3;
        for b in &mut corrupt[mid..mid + 200] {
            *b = 0xFF;
        }
        (Arc::new(corrupt), Arc::new(jpgs[6][..jpgs[6].len() / 2].to_vec()))
    };
    let bad_played = Arc::new(AtomicBool::new(false));
    let bad1 = bad_played.clone();
    let script: Script = Arc::new(move |n| match n {
        40..=119 if n % 2 == 0 => {
            bad1.store(true, Relaxed);
            Play::Frame(if n % 4 == 0 { damaged.0.clone() } else { damaged.1.clone() })
        }
        n => Play::Frame(jpgs[n as usize % 60].clone()),
    });
    let cams = Arc::new(TestCameras::default());
    cams.add("mjpeg", mjpeg(W, H), None, script);
    let mut p = call(cams.clone(), VideoSpec::Camera(Some("mjpeg".into()))).await;
    wait_until(Duration::from_secs(10), || bad_played.load(Relaxed), "the damaged frames never played").await;
    let after_bad = Instant::now();
    let evs = events_until(&mut p.ada, Duration::from_secs(5), |_| false).await;
    // 150 frames in 5 s, of which 40 damaged.
    let decoded = p.seen.stamped_since(after_bad);
    assert!(decoded > 80, "stamped pictures keep arriving after bad frames: only {decoded} in 5 s");
    assert!(device_events(&evs).is_empty(), "a few bad frames are not a stopped camera: {:?}", device_events(&evs));
    assert_eq!(cams.opens("mjpeg"), 1, "skipped, not reopened");
    // And counted: the call's stats say how many were skipped (40 damaged of the first 120).
    let bad = evs.iter().filter_map(|e| match e {
        CallEvent::Stats { stats } => Some(stats.camera_bad_frames),
        _ => None,
    });
    let bad = bad.max().expect("stats while the call ran");
    assert!((20..=40).contains(&bad), "{bad} bad frames counted");
    p.ada.leave().await;
    p.bob.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yuyv_with_padded_rows_and_nv12_with_a_stride_arrive_intact() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let frames = stamped_frames(30, 0);
    let stride = W as usize * 2 + 64;
    let packed: Vec<Arc<Vec<u8>>> = frames.iter().map(|f| Arc::new(yuyv(f, stride))).collect();
    let short = Arc::new(packed[0][..stride * (H as usize - 10)].to_vec());
    let script: Script = Arc::new(move |n| match n {
        // A short buffer now and then (a frame cut off mid-transfer).
        n if n % 25 == 24 => Play::Frame(short.clone()),
        n => Play::Frame(packed[n as usize % 30].clone()),
    });
    let nv12_frames: Vec<Arc<Vec<u8>>> =
        stamped_frames(30, 1000).iter().map(|f| Arc::new(nv12(f, W as usize + 32))).collect();
    let nv12_script: Script = Arc::new(move |n| Play::Frame(nv12_frames[n as usize % 30].clone()));
    let cams = Arc::new(TestCameras::default());
    // The YUYV camera states its stride; the NV12 one says nothing of it (as V4L2 through
    // nokhwa): it is worked out from the buffer's length.
    cams.add("yuyv", CameraMode { format: PixelFormat::Yuyv, width: W, height: H, fps: 30 }, Some(stride), script);
    cams.add("nv12", CameraMode { format: PixelFormat::Nv12, width: W, height: H, fps: 30 }, None, nv12_script);
    let mut p = call(cams, VideoSpec::Camera(Some("yuyv".into()))).await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let yuyv_seen = p.seen.stamps_since(t);
    // Skewed rows (a wrong stride) would shear the stamp beyond reading.
    assert!(yuyv_seen >= 25, "YUYV pictures decode with their stamps: {yuyv_seen} of 30 distinct in 3 s");
    p.ada.switch_video(VideoSpec::Camera(Some("nv12".into()))).await.expect("switch to the NV12 camera");
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nv12_seen: Vec<u32> =
        p.seen.stamps.lock().unwrap().iter().filter(|(at, _)| *at >= t).map(|(_, s)| s.frame_no).collect();
    assert!(nv12_seen.iter().filter(|&&n| n >= 1000).count() > 30, "NV12 pictures decode: {nv12_seen:?}");
    let _ = events_until(&mut p.bob, Duration::from_millis(10), |_| false).await;
    p.ada.leave().await;
    p.bob.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_3_camera_is_cropped_into_the_16_9_call_and_its_circle_stays_round() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let dir = tempdir("circle");
    let jpg = dir.join("circle.jpg");
    // A circle of radius 120 in the middle of a 640x480 picture, drawn by ImageMagick.
    let status = Command::new("convert")
        .args(["-size", "640x480", "xc:#203060", "-fill", "white", "-draw", "circle 320,240 320,360"])
        .args(["-quality", "90", "-sampling-factor", "2x1"])
        .arg(&jpg)
        .status()
        .expect("ImageMagick's convert");
    assert!(status.success());
    let frame = Arc::new(std::fs::read(&jpg).unwrap());
    let cams = Arc::new(TestCameras::default());
    cams.add("vga", mjpeg(640, 480), None, Arc::new(move |_| Play::Frame(frame.clone())));
    let p = call(cams, VideoSpec::Camera(Some("vga".into()))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pic = p.seen.last.lock().unwrap().clone().unwrap();
    assert_eq!((pic.width, pic.height), (W, H));
    // The circle's extent: rows and columns with bright pixels.
    let (w, h) = (pic.width as usize, pic.height as usize);
    let bright = |x: usize, y: usize| pic.y()[y * w + x] > 128;
    let cols: Vec<usize> = (0..w).filter(|&x| (0..h).any(|y| bright(x, y))).collect();
    let rows: Vec<usize> = (0..h).filter(|&y| (0..w).any(|x| bright(x, y))).collect();
    let width = (cols.last().unwrap() - cols.first().unwrap() + 1) as f64;
    let height = (rows.last().unwrap() - rows.first().unwrap() + 1) as f64;
    let aspect = width / height;
    // Cropped, the circle keeps 240 px across (the call is as wide as the camera); stretched
    // into 16:9 it would be 240 x 180, an aspect of 1.33.
    assert!((aspect - 1.0).abs() < 0.05, "the circle measures {width} x {height} (aspect {aspect:.3})");
    assert!((width - 240.0).abs() < 8.0, "cropped, not scaled down: {width} px across");
    p.ada.leave().await;
    p.bob.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_stops_is_reopened_and_one_that_cannot_be_is_reported_and_shown_off() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let frames: Vec<Arc<Vec<u8>>> = stamped_frames(30, 0).iter().map(|f| Arc::new(nv12(f, W as usize))).collect();
    // Every opening plays 60 frames (2 s), then its reads fail: the stream broke.
    let script: Script =
        Arc::new(move |n| if n < 60 { Play::Frame(frames[n as usize % 30].clone()) } else { Play::ReadError });
    let cams = Arc::new(TestCameras::default());
    cams.add("flaky", CameraMode { format: PixelFormat::Nv12, width: W, height: H, fps: 30 }, Some(W as usize), script);
    let mut p = call(cams.clone(), VideoSpec::Camera(Some("flaky".into()))).await;

    // First break: it opens again at once; the call hears nothing of it.
    wait_until(Duration::from_secs(10), || cams.opens("flaky") >= 2, "the broken camera was never reopened").await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(p.seen.stamps_since(t) > 20, "video again after the reopen");

    // Second break, and now it is busy (another app took it): stopped, said once, and Bob
    // sees the camera off.
    cams.set_busy("flaky", true);
    let evs = events_until(&mut p.ada, Duration::from_secs(8), |e| matches!(e, CallEvent::Device { .. })).await;
    assert_eq!(device_events(&evs), vec![("camera".to_string(), "stopped".to_string())]);
    let off =
        events_until(&mut p.bob, Duration::from_secs(5), |e| matches!(e, CallEvent::RemoteState { camera: false, .. }))
            .await;
    assert!(off.iter().any(|e| matches!(e, CallEvent::RemoteState { camera: false, .. })), "Bob sees the camera off");

    // Free again: back, once; Bob sees it on and decodes pictures again.
    cams.set_busy("flaky", false);
    let evs = events_until(&mut p.ada, Duration::from_secs(8), |e| matches!(e, CallEvent::Device { .. })).await;
    assert_eq!(device_events(&evs), vec![("camera".to_string(), "back".to_string())]);
    let on =
        events_until(&mut p.bob, Duration::from_secs(5), |e| matches!(e, CallEvent::RemoteState { camera: true, .. }))
            .await;
    assert!(on.iter().any(|e| matches!(e, CallEvent::RemoteState { camera: true, .. })), "Bob sees it on again");
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(p.seen.stamps_since(t) > 10, "and its pictures");
    p.ada.leave().await;
    p.bob.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_cameras_mid_call_keeps_the_connection_and_sends_a_keyframe() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let dir = tempdir("switch");
    let first = jpegs(&stamped_frames(30, 0), &dir);
    let second: Vec<Arc<Vec<u8>>> =
        stamped_frames(30, 50_000).iter().map(|f| Arc::new(yuyv(f, W as usize * 2))).collect();
    let cams = Arc::new(TestCameras::default());
    cams.add("front", mjpeg(W, H), None, Arc::new(move |n| Play::Frame(first[n as usize % 30].clone())));
    let yuyv_mode = CameraMode { format: PixelFormat::Yuyv, width: W, height: H, fps: 30 };
    cams.add("desk", yuyv_mode, None, Arc::new(move |n| Play::Frame(second[n as usize % 30].clone())));
    let mut p = call(cams.clone(), VideoSpec::Camera(Some("front".into()))).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // What Bob heard of the call's setup; from here on, nothing more should happen to it.
    let _ = events_until(&mut p.bob, Duration::from_millis(20), |_| false).await;
    let asked = Instant::now();
    p.ada.switch_video(VideoSpec::Camera(Some("desk".into()))).await.expect("switch");
    // The new camera's picture promptly: a keyframe at once, not the 10 s periodic one. The
    // bound is 2 s, not 1: closing one camera and opening the other took up to 1.6 s on this
    // 2-core machine (1.07 and 1.64 s in 2 runs of 9, one of them a full CI run).
    wait_until(
        Duration::from_secs(3),
        || p.seen.stamps.lock().unwrap().iter().any(|(at, s)| *at >= asked && s.frame_no >= 50_000),
        "the desk camera's picture never arrived",
    )
    .await;
    let first_new = p.seen.stamps.lock().unwrap().iter().find(|(_, s)| s.frame_no >= 50_000).unwrap().0;
    let took = first_new.duration_since(asked);
    assert!(took < Duration::from_secs(2), "the new picture took {took:?}");
    // The front camera was let go; the same peer connection carries on.
    let evs = events_until(&mut p.bob, Duration::from_secs(2), |_| false).await;
    let churn: Vec<_> = evs
        .iter()
        .filter(|e| {
            matches!(e, CallEvent::PeerLeft { .. } | CallEvent::PeerJoined { .. } | CallEvent::Connection { .. })
        })
        .collect();
    assert!(churn.is_empty(), "no new connection for a new camera: {churn:?}");
    // Switching to a camera that is not there keeps the one we have.
    let e = p.ada.switch_video(VideoSpec::Camera(Some("gone".into()))).await.unwrap_err();
    assert!(e.to_string().contains("gone"), "{e}");
    let t = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after: Vec<u32> =
        p.seen.stamps.lock().unwrap().iter().filter(|(at, _)| *at >= t).map(|(_, s)| s.frame_no).collect();
    assert!(after.iter().filter(|&&n| n >= 50_000).count() > 10, "still the desk camera: {after:?}");
    assert_eq!(cams.opens("desk"), 2, "the desk camera, opened again after the failed switch");
    p.ada.leave().await;
    p.bob.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplugged_camera_is_reported_shown_off_and_back_when_plugged_in_again() {
    let _turn = ONE_CALL_AT_A_TIME.lock().await;
    let frames: Vec<Arc<Vec<u8>>> = stamped_frames(30, 0).iter().map(|f| Arc::new(nv12(f, W as usize))).collect();
    let cams = Arc::new(TestCameras::default());
    let mode = CameraMode { format: PixelFormat::Nv12, width: W, height: H, fps: 30 };
    cams.add("usb", mode, None, Arc::new(move |n| Play::Frame(frames[n as usize % 30].clone())));
    let mut p = call(cams.clone(), VideoSpec::Camera(Some("usb".into()))).await;
    let _ = events_until(&mut p.bob, Duration::from_millis(20), |_| false).await;
    cams.set_plugged("usb", false);
    let evs = events_until(&mut p.ada, Duration::from_secs(5), |e| matches!(e, CallEvent::Device { .. })).await;
    let stopped = evs.iter().find_map(|e| match e {
        CallEvent::Device { kind, state, reason, .. } if kind == "camera" => Some((state.clone(), reason.clone())),
        _ => None,
    });
    let (state, reason) = stopped.expect("the unplugged camera is reported");
    assert_eq!(state, "stopped");
    assert!(reason.unwrap_or_default().contains("not available"), "the reason says it is gone");
    let off =
        events_until(&mut p.bob, Duration::from_secs(5), |e| matches!(e, CallEvent::RemoteState { camera: false, .. }))
            .await;
    assert!(off.iter().any(|e| matches!(e, CallEvent::RemoteState { camera: false, .. })), "Bob sees the camera off");
    // The call goes on without it; plugged in again, the same camera is back by itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cams.set_plugged("usb", true);
    let evs = events_until(&mut p.ada, Duration::from_secs(5), |e| matches!(e, CallEvent::Device { .. })).await;
    assert_eq!(device_events(&evs), vec![("camera".to_string(), "back".to_string())]);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(p.seen.stamped_since(t) > 10, "its pictures again");
    p.ada.leave().await;
    p.bob.leave().await;
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("confab-camera-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
