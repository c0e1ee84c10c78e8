//! Microphones and speakers through cpal (ALSA on Linux). Each cpal stream lives on its own
//! thread (streams may not move between threads) and trades samples with the engine through
//! a bounded buffer: capture drops the oldest audio rather than grow, playback blocks the
//! engine while the device has enough queued, which paces it by the sound card's clock.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

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
        Some(id) => {
            let devs = if input { host.input_devices() } else { host.output_devices() }.map_err(|_| not_found())?;
            devs.into_iter()
                .find(|d| {
                    d.id().map(|x| x.to_string() == id).unwrap_or(false)
                        || d.description().map(|x| x.name() == id).unwrap_or(false)
                })
                .ok_or_else(not_found)
        }
    }
}

/// Samples shared between a cpal callback and the engine.
struct Shared {
    buf: Mutex<VecDeque<i16>>,
    ready: Condvar,
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
/// own doing and not logged.
fn stream_errors(kind: &'static str, stop: StopFlag) -> impl FnMut(cpal::Error) + Send + 'static {
    let mut bursts = ErrorBursts::default();
    move |e| {
        if stop.is_set() {
            return;
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

/// Device periods of one 20 ms frame. A server's default buffers are far longer (PulseAudio
/// asks for 2 s of playback): that much delay between mouth and ear, and an echo too late
/// for the canceller to find.
const PERIOD: u32 = FRAME_SAMPLES as u32;

fn stream_config(dev: &cpal::Device, input: bool) -> Result<(cpal::StreamConfig, cpal::SampleFormat), cpal::Error> {
    let def = if input { dev.default_input_config() } else { dev.default_output_config() }?;
    let buffer_size = match def.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max } if (*min..=*max).contains(&PERIOD) => {
            cpal::BufferSize::Fixed(PERIOD)
        }
        _ => cpal::BufferSize::Default,
    };
    let cfg = cpal::StreamConfig { channels: def.channels(), sample_rate: SAMPLE_RATE as _, buffer_size };
    Ok((cfg, def.sample_format()))
}

pub struct Microphone {
    name: String,
    shared: Arc<Shared>,
    /// Keeps the device open; dropping it closes the device.
    _stream: Worker,
}

impl Microphone {
    pub fn open(id: Option<&str>) -> Result<Self, DeviceError> {
        let dev = find("microphone", id, true)?;
        let name = dev.description().map(|d| d.name().to_string()).unwrap_or_else(|_| "microphone".into());
        let shared = Arc::new(Shared { buf: Mutex::new(VecDeque::new()), ready: Condvar::new() });
        let sh = shared.clone();
        let stream = stream_thread("microphone", name.clone(), move |stop| {
            let (cfg, fmt) = stream_config(&dev, true)?;
            let ch = cfg.channels as usize;
            let push = move |mono: &mut dyn Iterator<Item = i16>| {
                let mut b = sh.buf.lock().unwrap();
                b.extend(mono);
                // Keep at most a second: a stalled engine loses old audio, not memory.
                let excess = b.len().saturating_sub(SAMPLE_RATE as usize);
                b.drain(..excess);
                sh.ready.notify_one();
            };
            let err = stream_errors("microphone", stop);
            match fmt {
                cpal::SampleFormat::F32 => dev.build_input_stream(
                    cfg,
                    move |d: &[f32], _: &cpal::InputCallbackInfo| {
                        push(&mut d.chunks(ch).map(|f| (f[0].clamp(-1.0, 1.0) * 32767.0) as i16))
                    },
                    err,
                    None,
                ),
                _ => dev.build_input_stream(
                    cfg,
                    move |d: &[i16], _: &cpal::InputCallbackInfo| push(&mut d.chunks(ch).map(|f| f[0])),
                    err,
                    None,
                ),
            }
        })?;
        Ok(Microphone { name, shared, _stream: stream })
    }
}

impl AudioSource for Microphone {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn next_frame(&mut self) -> Result<Option<[i16; FRAME_SAMPLES]>, DeviceError> {
        let mut b = self.shared.buf.lock().unwrap();
        while b.len() < FRAME_SAMPLES {
            let (g, timeout) = self.shared.ready.wait_timeout(b, Duration::from_secs(2)).unwrap();
            b = g;
            if timeout.timed_out() && b.len() < FRAME_SAMPLES {
                return Err(DeviceError::Failed {
                    kind: "microphone",
                    name: self.name.clone(),
                    reason: "no audio for 2 s".into(),
                });
            }
        }
        let mut out = [0i16; FRAME_SAMPLES];
        for (o, s) in out.iter_mut().zip(b.drain(..FRAME_SAMPLES)) {
            *o = s;
        }
        Ok(Some(out))
    }
}

pub struct Speaker {
    name: String,
    shared: Arc<Shared>,
    /// Keeps the device open; dropping it closes the device.
    _stream: Worker,
}

/// Playback queue depth the engine keeps ahead of the sound card.
const SPEAKER_AHEAD: usize = FRAME_SAMPLES * 3;

impl Speaker {
    /// Opens a speaker; every sample it gives the device also goes to `echo`, the echo
    /// canceller's reference.
    pub fn open(id: Option<&str>, echo: Option<Arc<EchoReference>>) -> Result<Self, DeviceError> {
        let dev = find("speaker", id, false)?;
        let name = dev.description().map(|d| d.name().to_string()).unwrap_or_else(|_| "speaker".into());
        let shared = Arc::new(Shared { buf: Mutex::new(VecDeque::new()), ready: Condvar::new() });
        let sh = shared.clone();
        let stream = stream_thread("speaker", name.clone(), move |stop| {
            let (cfg, fmt) = stream_config(&dev, false)?;
            let ch = cfg.channels as usize;
            let pull = move |n: usize| -> Vec<i16> {
                let mut b = sh.buf.lock().unwrap();
                let take = n.min(b.len());
                let mut v: Vec<i16> = b.drain(..take).collect();
                v.resize(n, 0);
                sh.ready.notify_one();
                drop(b);
                if let Some(echo) = &echo {
                    echo.played(v.iter().copied());
                }
                v
            };
            let err = stream_errors("speaker", stop);
            match fmt {
                cpal::SampleFormat::F32 => dev.build_output_stream(
                    cfg,
                    move |d: &mut [f32], _: &cpal::OutputCallbackInfo| {
                        let mono = pull(d.len() / ch);
                        for (f, s) in d.chunks_mut(ch).zip(mono) {
                            f.fill(s as f32 / 32768.0);
                        }
                    },
                    err,
                    None,
                ),
                _ => dev.build_output_stream(
                    cfg,
                    move |d: &mut [i16], _: &cpal::OutputCallbackInfo| {
                        let mono = pull(d.len() / ch);
                        for (f, s) in d.chunks_mut(ch).zip(mono) {
                            f.fill(s);
                        }
                    },
                    err,
                    None,
                ),
            }
        })?;
        Ok(Speaker { name, shared, _stream: stream })
    }
}

impl AudioSink for Speaker {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn play(&mut self, pcm: &[i16; FRAME_SAMPLES]) -> Result<(), DeviceError> {
        let mut b = self.shared.buf.lock().unwrap();
        while b.len() >= SPEAKER_AHEAD {
            let (g, timeout) = self.shared.ready.wait_timeout(b, Duration::from_millis(500)).unwrap();
            b = g;
            if timeout.timed_out() {
                // The device stopped pulling (unplugged, or an unpaced null device).
                b.clear();
                break;
            }
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
