//! Microphones and speakers through cpal (the sound server, or ALSA). Each cpal stream lives
//! on its own thread (streams may not move between threads) and trades samples with the
//! engine through a bounded buffer: capture drops the oldest audio rather than grow,
//! playback blocks the engine while the device has enough queued, which paces it by the
//! sound card's clock. Devices run at their own rate, channel count and sample format;
//! the engine always sees 48 kHz mono.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

use super::resample::{mix_down, RateConverter};
use super::{AudioSink, AudioSource, DeviceError, DeviceInfo, DeviceKind};
use crate::audio_processing::EchoReference;
use crate::codec::opus::{FRAME_SAMPLES, SAMPLE_RATE};
use crate::worker::{StopFlag, Worker};

/// Microphones and speakers present now, as people know them: with a sound server running
/// (PulseAudio, or PipeWire through its PulseAudio protocol) its devices under the names the
/// desktop shows; ALSA's own otherwise. The system default of each kind comes first and
/// says so. Ids are cpal's ("pulseaudio:alsa_input.usb-...", "alsa:sysdefault:CARD=PCH").
pub fn list() -> Vec<DeviceInfo> {
    // With the `pulseaudio` feature, cpal's default host is the sound server when one runs.
    let host = cpal::default_host();
    let name = |d: &cpal::Device| d.description().map(|x| x.name().to_string()).unwrap_or_else(|_| "unknown".into());
    let id_of = |d: Option<cpal::Device>| d.and_then(|d| d.id().ok());
    let mut out = Vec::new();
    let kinds = [
        (DeviceKind::Microphone, host.input_devices(), id_of(host.default_input_device()), true),
        (DeviceKind::Speaker, host.output_devices(), id_of(host.default_output_device()), false),
    ];
    for (kind, devices, default, input) in kinds {
        let Ok(devices) = devices else { continue };
        let mut found = Vec::new();
        for d in devices {
            let Ok(id) = d.id() else { continue };
            if !people_use(&id) || (id.host() == cpal::HostId::Alsa && !opens(&d, input)) {
                continue;
            }
            let default = default.as_ref() == Some(&id);
            found.push(DeviceInfo { kind, id: id.to_string(), name: name(&d), default });
        }
        // Stable: the default first, the rest in the server's order.
        found.sort_by_key(|d| !d.default);
        out.extend(found);
    }
    out
}

/// Whether a device is one a person would pick. A sound server's monitor sources record what
/// a speaker plays: not microphones. Of ALSA's PCMs only the default and each card's own
/// default are devices; the rest are plugins (rate converters, up- and downmixers, JACK, OSS)
/// or `null`, which discards everything and makes up silence as fast as it is read.
fn people_use(id: &cpal::DeviceId) -> bool {
    let pcm = id.id();
    match id.host() {
        cpal::HostId::Alsa => pcm == "default" || pcm.starts_with("sysdefault:"),
        _ => !pcm.ends_with(".monitor"),
    }
}

/// Whether an ALSA PCM can be opened at all: with no card and no sound server, `default`
/// leads nowhere, and listing it would offer a microphone that cannot work.
fn opens(d: &cpal::Device, input: bool) -> bool {
    stream_config(d, input).is_ok()
}

fn find(kind: &'static str, id: Option<&str>, input: bool) -> Result<cpal::Device, DeviceError> {
    let host = cpal::default_host();
    let not_found = || DeviceError::NotFound { kind, id: id.unwrap_or_default().into() };
    match id {
        None => if input { host.default_input_device() } else { host.default_output_device() }.ok_or_else(not_found),
        Some(id) => find_on(&host, id, input).ok_or_else(not_found),
    }
}

/// The device `id` names (cpal's id, or the name people see) among those `host` has now.
fn find_on(host: &cpal::Host, id: &str, input: bool) -> Option<cpal::Device> {
    present(host, id, input).ok().flatten()
}

/// Like [`find_on`], but says when the host could not list its devices at all (a sound
/// server busy or restarting), which is no news about the device.
fn present(host: &cpal::Host, id: &str, input: bool) -> Result<Option<cpal::Device>, cpal::Error> {
    let devs = if input { host.input_devices() } else { host.output_devices() }?;
    Ok(devs.into_iter().find(|d| {
        d.id().map(|x| x.to_string() == id).unwrap_or(false) || d.description().map(|x| x.name() == id).unwrap_or(false)
    }))
}

/// How often a chosen device is looked for among those present.
const PRESENCE_EVERY: Duration = Duration::from_secs(1);

/// Watches that the device the user chose by `id` is still there. A sound server moves the
/// streams of a device that disappears to its default by itself, so sound goes on; but the
/// user must hear of it, and the call must know it plays elsewhere now. When the device is
/// gone, the stream counts as broken: its owner opens the default instead, and says so.
fn watch_presence<T: Send + 'static>(
    kind: &'static str,
    id: &str,
    input: bool,
    shared: Arc<Shared<T>>,
) -> Result<Worker, DeviceError> {
    let (id, name) = (id.to_string(), id.to_string());
    Worker::spawn(format!("{kind}-watch"), move |stop| {
        // One host for the whole watch: with a sound server, one client connection.
        let host = cpal::default_host();
        // Gone means missing from two listings in a row that both worked.
        let mut missing = 0;
        while !stop.is_set() {
            thread::park_timeout(PRESENCE_EVERY);
            match present(&host, &id, input) {
                _ if stop.is_set() => break,
                Ok(Some(_)) => missing = 0,
                Ok(None) => missing += 1,
                Err(e) => tracing::debug!(kind, error = %e, "cannot list the devices now"),
            }
            if missing == 2 {
                tracing::info!(kind, %id, "the chosen device is gone");
                shared.break_off();
                break;
            }
        }
    })
    .map_err(|e| DeviceError::Failed { kind, name, reason: e.to_string() })
}

/// Samples shared between a cpal callback and the engine, and whether the stream broke.
struct Shared<T> {
    buf: Mutex<VecDeque<T>>,
    ready: Condvar,
    /// Set by the stream's error callback when the device went away: waiting for it is over.
    broken: AtomicBool,
    opened: Instant,
    /// When the device last took samples, ms after `opened` (`NEVER` before its first time).
    last_taken_ms: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl<T> Shared<T> {
    fn new() -> Arc<Self> {
        Arc::new(Shared {
            buf: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            broken: AtomicBool::new(false),
            opened: Instant::now(),
            last_taken_ms: AtomicU64::new(NEVER),
        })
    }

    fn taken(&self) {
        self.last_taken_ms.store(self.opened.elapsed().as_millis() as u64, Relaxed);
    }

    /// How long the device has taken nothing, and how long it may: a stream takes a while
    /// to start (a sound server wakes a suspended device first), then keeps a steady pace.
    fn idle(&self) -> (Duration, Duration) {
        match self.last_taken_ms.load(Relaxed) {
            NEVER => (self.opened.elapsed(), DEVICE_STARTUP),
            ms => (self.opened.elapsed().saturating_sub(Duration::from_millis(ms)), DEVICE_SILENCE),
        }
    }

    fn break_off(&self) {
        self.broken.store(true, Relaxed);
        self.ready.notify_all();
    }
}

/// Runs `build` on a thread that keeps the stream alive until the returned worker drops;
/// reports whether the stream started.
fn stream_thread(
    kind: &'static str,
    name: String,
    build: impl FnOnce(StopFlag) -> Result<cpal::Stream, cpal::Error> + Send + 'static,
) -> Result<Worker, DeviceError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let worker = Worker::spawn(kind, move |stop| {
        let stream = match build(stop.clone()).and_then(|s| s.play().map(|_| s)) {
            Ok(s) => {
                let _ = ready_tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while !stop.is_set() {
            thread::park_timeout(Duration::from_millis(100));
        }
        drop(stream);
    })
    .map_err(|e| DeviceError::Failed { kind, name: name.clone(), reason: e.to_string() })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(worker),
        Ok(Err(e)) => Err(open_error(kind, name, &e)),
        Err(_) => Err(DeviceError::Failed { kind, name, reason: "stream thread died".into() }),
    }
}

/// cpal's error callback for one stream: one log line per burst, since a failing stream can
/// report hundreds of errors within milliseconds; errors while we close the stream are our
/// own doing and not logged. An error that means the device is gone calls `gone`.
fn stream_errors(
    kind: &'static str,
    stop: StopFlag,
    gone: impl Fn() + Send + 'static,
) -> impl FnMut(cpal::Error) + Send + 'static {
    let mut bursts = ErrorBursts::default();
    move |e| {
        if stop.is_set() {
            return;
        }
        if matches!(e.kind(), cpal::ErrorKind::DeviceNotAvailable | cpal::ErrorKind::StreamInvalidated) {
            gone();
        }
        if let Some(held_back) = bursts.log(Instant::now()) {
            tracing::warn!(error = %e, held_back, "{kind} stream error");
        }
    }
}

/// At most one line per [`ERROR_LOG_INTERVAL`]; the next line says how many were held back.
#[derive(Debug, Default)]
struct ErrorBursts {
    last: Option<Instant>,
    held_back: u64,
}

const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl ErrorBursts {
    /// Whether an error at `now` is logged; if so, how many were held back before it.
    fn log(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < ERROR_LOG_INTERVAL) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// What failed when a stream would not open, as the user should hear it: "busy" only when
/// the device says so (an unsupported format used to be reported as busy).
fn open_error(kind: &'static str, name: String, e: &cpal::Error) -> DeviceError {
    use cpal::ErrorKind as K;
    let reason = e.to_string();
    match e.kind() {
        K::DeviceBusy => DeviceError::Busy { kind, name, reason },
        K::DeviceNotAvailable | K::HostUnavailable => DeviceError::Unavailable { kind, name, reason },
        K::UnsupportedConfig | K::UnsupportedOperation | K::InvalidInput => {
            DeviceError::Unsupported { kind, name, reason }
        }
        K::PermissionDenied => DeviceError::Denied { kind, name, reason },
        _ => DeviceError::Failed { kind, name, reason },
    }
}

/// The device's own rate, channels and sample format (we convert, once), in periods of one
/// 20 ms frame where it takes them. A server's default buffers are far longer (PulseAudio
/// asks for 2 s of playback): that much delay between mouth and ear, and an echo too late
/// for the canceller to find.
fn stream_config(dev: &cpal::Device, input: bool) -> Result<(cpal::StreamConfig, cpal::SampleFormat), cpal::Error> {
    let def = if input { dev.default_input_config() } else { dev.default_output_config() }?;
    let period = def.sample_rate() / 50;
    let buffer_size = match def.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max } if (*min..=*max).contains(&period) => {
            cpal::BufferSize::Fixed(period)
        }
        _ => cpal::BufferSize::Default,
    };
    let cfg = cpal::StreamConfig { channels: def.channels().max(1), sample_rate: def.sample_rate(), buffer_size };
    Ok((cfg, def.sample_format()))
}

/// Calls `$build::<T>($args)` with `T` the Rust type of a cpal sample format.
macro_rules! for_format {
    ($fmt:expr, $build:ident($($arg:expr),*)) => {
        match $fmt {
            cpal::SampleFormat::I8 => $build::<i8>($($arg),*),
            cpal::SampleFormat::I16 => $build::<i16>($($arg),*),
            cpal::SampleFormat::I24 => $build::<cpal::I24>($($arg),*),
            cpal::SampleFormat::I32 => $build::<i32>($($arg),*),
            cpal::SampleFormat::I64 => $build::<i64>($($arg),*),
            cpal::SampleFormat::U8 => $build::<u8>($($arg),*),
            cpal::SampleFormat::U16 => $build::<u16>($($arg),*),
            cpal::SampleFormat::U24 => $build::<cpal::U24>($($arg),*),
            cpal::SampleFormat::U32 => $build::<u32>($($arg),*),
            cpal::SampleFormat::U64 => $build::<u64>($($arg),*),
            cpal::SampleFormat::F32 => $build::<f32>($($arg),*),
            cpal::SampleFormat::F64 => $build::<f64>($($arg),*),
            _ => Err(cpal::Error::new(cpal::ErrorKind::UnsupportedConfig)),
        }
    };
}

pub struct Microphone {
    name: String,
    /// Mono at the device's rate, as the callback delivers it.
    shared: Arc<Shared<f32>>,
    to_engine: RateConverter,
    /// Keeps the device open; dropping it closes the device.
    _stream: Worker,
    /// Whether a device chosen by name is still there.
    _presence: Option<Worker>,
}

/// Longest a device may take to start delivering or taking sound, and then to go without,
/// before it counts as stopped.
const DEVICE_STARTUP: Duration = Duration::from_secs(3);
const DEVICE_SILENCE: Duration = Duration::from_secs(2);

fn capture_stream<T>(
    dev: &cpal::Device,
    cfg: cpal::StreamConfig,
    shared: Arc<Shared<f32>>,
    stop: StopFlag,
) -> Result<cpal::Stream, cpal::Error>
where
    T: cpal::SizedSample,
    f32: cpal::FromSample<T>,
{
    let ch = cfg.channels as usize;
    // Keep at most a second: a stalled engine loses old audio, not memory.
    let keep = cfg.sample_rate as usize;
    let sh = shared.clone();
    let err = stream_errors("microphone", stop, move || shared.break_off());
    dev.build_input_stream(
        cfg,
        move |d: &[T], _: &cpal::InputCallbackInfo| {
            let mut b = sh.buf.lock().unwrap();
            b.extend(d.chunks(ch).map(mix_down));
            let excess = b.len().saturating_sub(keep);
            b.drain(..excess);
            drop(b);
            sh.taken();
            sh.ready.notify_one();
        },
        err,
        None,
    )
}

impl Microphone {
    pub fn open(id: Option<&str>) -> Result<Self, DeviceError> {
        let dev = find("microphone", id, true)?;
        let name = dev.description().map(|d| d.name().to_string()).unwrap_or_else(|_| "microphone".into());
        let (cfg, fmt) = stream_config(&dev, true).map_err(|e| open_error("microphone", name.clone(), &e))?;
        tracing::debug!(%name, rate = cfg.sample_rate, channels = cfg.channels, format = %fmt, "opening microphone");
        let to_engine = RateConverter::new(cfg.sample_rate, SAMPLE_RATE);
        let shared = Shared::new();
        let sh = shared.clone();
        let stream = stream_thread("microphone", name.clone(), move |stop| {
            for_format!(fmt, capture_stream(&dev, cfg, sh, stop))
        })?;
        let presence = id.map(|id| watch_presence("microphone", id, true, shared.clone())).transpose()?;
        Ok(Microphone { name, shared, to_engine, _stream: stream, _presence: presence })
    }

    fn stopped(&self, reason: &str) -> DeviceError {
        DeviceError::Failed { kind: "microphone", name: self.name.clone(), reason: reason.into() }
    }

    fn went_away(&self) -> DeviceError {
        DeviceError::Unavailable { kind: "microphone", name: self.name.clone(), reason: "it went away".into() }
    }
}

impl AudioSource for Microphone {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn next_frame(&mut self) -> Result<Option<[i16; FRAME_SAMPLES]>, DeviceError> {
        while self.to_engine.available() < FRAME_SAMPLES {
            let mut b = self.shared.buf.lock().unwrap();
            while b.is_empty() {
                if self.shared.broken.load(Relaxed) {
                    return Err(self.went_away());
                }
                let (idle, allowed) = self.shared.idle();
                if idle >= allowed {
                    return Err(self.stopped(&format!("no audio for {} s", allowed.as_secs())));
                }
                b = self.shared.ready.wait_timeout(b, allowed - idle).unwrap().0;
            }
            let got: Vec<f32> = b.drain(..).collect();
            drop(b);
            self.to_engine.push(got);
        }
        let mut out = [0i16; FRAME_SAMPLES];
        for (o, s) in out.iter_mut().zip(self.to_engine.take(FRAME_SAMPLES)) {
            *o = (s.clamp(-1.0, 1.0) * 32_767.0) as i16;
        }
        Ok(Some(out))
    }
}

pub struct Speaker {
    name: String,
    /// 48 kHz mono waiting for the device.
    shared: Arc<Shared<i16>>,
    /// Keeps the device open; dropping it closes the device.
    _stream: Worker,
    /// Whether a device chosen by name is still there.
    _presence: Option<Worker>,
}

/// Playback queue depth the engine keeps ahead of the sound card.
const SPEAKER_AHEAD: usize = FRAME_SAMPLES * 3;

fn playback_stream<T>(
    dev: &cpal::Device,
    cfg: cpal::StreamConfig,
    shared: Arc<Shared<i16>>,
    echo: Option<Arc<EchoReference>>,
    stop: StopFlag,
) -> Result<cpal::Stream, cpal::Error>
where
    T: cpal::SizedSample + cpal::FromSample<f32>,
{
    let ch = cfg.channels as usize;
    let mut to_device = RateConverter::new(SAMPLE_RATE, cfg.sample_rate);
    let mut taken: Vec<i16> = Vec::with_capacity(FRAME_SAMPLES);
    let sh = shared.clone();
    let err = stream_errors("speaker", stop, move || shared.break_off());
    dev.build_output_stream(
        cfg,
        move |d: &mut [T], _: &cpal::OutputCallbackInfo| {
            let frames = d.len() / ch;
            while to_device.available() < frames {
                let want = match to_device.step() {
                    0 => frames - to_device.available(),
                    step => step,
                };
                let mut b = sh.buf.lock().unwrap();
                taken.clear();
                let n = want.min(b.len());
                taken.extend(b.drain(..n));
                drop(b);
                sh.taken();
                sh.ready.notify_one();
                // What the engine could not deliver in time plays as silence.
                taken.resize(want, 0);
                if let Some(echo) = &echo {
                    echo.played(taken.iter().copied());
                }
                to_device.push(taken.iter().map(|&s| s as f32 / 32_768.0));
            }
            // The same sound on every channel.
            for (f, s) in d.chunks_mut(ch).zip(to_device.take(frames)) {
                // Resampling can overshoot full scale a little; 24-bit conversion would wrap.
                f.fill(T::from_sample(s.clamp(-1.0, 1.0 - f32::EPSILON)));
            }
        },
        err,
        None,
    )
}

impl Speaker {
    /// Opens a speaker; every sample it gives the device also goes to `echo`, the echo
    /// canceller's reference.
    pub fn open(id: Option<&str>, echo: Option<Arc<EchoReference>>) -> Result<Self, DeviceError> {
        let dev = find("speaker", id, false)?;
        let name = dev.description().map(|d| d.name().to_string()).unwrap_or_else(|_| "speaker".into());
        let (cfg, fmt) = stream_config(&dev, false).map_err(|e| open_error("speaker", name.clone(), &e))?;
        tracing::debug!(%name, rate = cfg.sample_rate, channels = cfg.channels, format = %fmt, "opening speaker");
        let shared = Shared::new();
        let sh = shared.clone();
        let stream = stream_thread("speaker", name.clone(), move |stop| {
            for_format!(fmt, playback_stream(&dev, cfg, sh, echo, stop))
        })?;
        let presence = id.map(|id| watch_presence("speaker", id, false, shared.clone())).transpose()?;
        Ok(Speaker { name, shared, _stream: stream, _presence: presence })
    }
}

impl AudioSink for Speaker {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn play(&mut self, pcm: &[i16; FRAME_SAMPLES]) -> Result<(), DeviceError> {
        let stopped =
            |reason: &str| DeviceError::Failed { kind: "speaker", name: self.name.clone(), reason: reason.into() };
        let mut b = self.shared.buf.lock().unwrap();
        while b.len() >= SPEAKER_AHEAD {
            if self.shared.broken.load(Relaxed) {
                let reason = "it went away".into();
                return Err(DeviceError::Unavailable { kind: "speaker", name: self.name.clone(), reason });
            }
            let (idle, allowed) = self.shared.idle();
            if idle >= allowed {
                return Err(stopped(&format!("it took no sound for {} s", allowed.as_secs())));
            }
            // Waits a frame at a time: the engine stays paced by the device while it plays.
            b = self.shared.ready.wait_timeout(b, (allowed - idle).min(Duration::from_millis(20))).unwrap().0;
        }
        b.extend(pcm.iter().copied());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsupported_format_is_not_called_busy() {
        let open = |k| open_error("microphone", "USB headset".into(), &cpal::Error::new(k)).to_string();
        assert!(open(cpal::ErrorKind::DeviceBusy).contains("is busy"));
        let unsupported = open(cpal::ErrorKind::UnsupportedConfig);
        assert!(unsupported.contains("cannot record or play") && !unsupported.contains("busy"), "{unsupported}");
        assert!(open(cpal::ErrorKind::DeviceNotAvailable).contains("not available"));
        assert!(open(cpal::ErrorKind::PermissionDenied).contains("not allowed"));
    }

    #[test]
    fn a_burst_of_stream_errors_is_one_line() {
        let t0 = Instant::now();
        let mut b = ErrorBursts::default();
        assert_eq!(b.log(t0), Some(0));
        let logged = (1..375u64).filter(|i| b.log(t0 + Duration::from_micros(i * 13)).is_some()).count();
        assert_eq!(logged, 0, "375 errors in 5 ms make one line");
        assert_eq!(b.log(t0 + ERROR_LOG_INTERVAL), Some(374), "the next line says how many were held back");
        assert_eq!(b.log(t0 + ERROR_LOG_INTERVAL * 3), Some(0));
    }
}
