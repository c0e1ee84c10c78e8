//! Microphones and speakers through cpal (ALSA on Linux). Each cpal stream lives on its own
//! thread (streams may not move between threads) and trades samples with the engine through
//! a bounded buffer: capture drops the oldest audio rather than grow, playback blocks the
//! engine while the device has enough queued, which paces it by the sound card's clock.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

use super::{AudioSink, AudioSource, DeviceError, DeviceInfo, DeviceKind};
use crate::codec::opus::{FRAME_SAMPLES, SAMPLE_RATE};
use crate::worker::Worker;

/// Microphones and speakers present now. Ids are cpal's stable device ids ("alsa:hw:...").
pub fn list() -> Vec<DeviceInfo> {
    let host = cpal::default_host();
    let mut out = Vec::new();
    let name = |d: &cpal::Device| d.description().map(|x| x.name().to_string()).unwrap_or_else(|_| "unknown".into());
    if let Ok(devs) = host.input_devices() {
        for d in devs {
            if let Ok(id) = d.id() {
                out.push(DeviceInfo { kind: DeviceKind::Microphone, id: id.to_string(), name: name(&d) });
            }
        }
    }
    if let Ok(devs) = host.output_devices() {
        for d in devs {
            if let Ok(id) = d.id() {
                out.push(DeviceInfo { kind: DeviceKind::Speaker, id: id.to_string(), name: name(&d) });
            }
        }
    }
    out
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
    build: impl FnOnce() -> Result<cpal::Stream, String> + Send + 'static,
) -> Result<Worker, DeviceError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let worker = Worker::spawn(kind, move |stop| {
        let stream = match build().and_then(|s| s.play().map(|_| s).map_err(|e| e.to_string())) {
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
        Ok(Err(reason)) => Err(DeviceError::Busy { kind, name, reason }),
        Err(_) => Err(DeviceError::Failed { kind, name, reason: "stream thread died".into() }),
    }
}

fn stream_config(dev: &cpal::Device, input: bool) -> Result<(cpal::StreamConfig, cpal::SampleFormat), String> {
    let def =
        if input { dev.default_input_config() } else { dev.default_output_config() }.map_err(|e| e.to_string())?;
    let cfg = cpal::StreamConfig {
        channels: def.channels(),
        sample_rate: SAMPLE_RATE as _,
        buffer_size: cpal::BufferSize::Default,
    };
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
        let stream = stream_thread("microphone", name.clone(), move || {
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
            let err = |e| tracing::warn!(error = %e, "microphone stream error");
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
            .map_err(|e| e.to_string())
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
    pub fn open(id: Option<&str>) -> Result<Self, DeviceError> {
        let dev = find("speaker", id, false)?;
        let name = dev.description().map(|d| d.name().to_string()).unwrap_or_else(|_| "speaker".into());
        let shared = Arc::new(Shared { buf: Mutex::new(VecDeque::new()), ready: Condvar::new() });
        let sh = shared.clone();
        let stream = stream_thread("speaker", name.clone(), move || {
            let (cfg, fmt) = stream_config(&dev, false)?;
            let ch = cfg.channels as usize;
            let pull = move |n: usize| -> Vec<i16> {
                let mut b = sh.buf.lock().unwrap();
                let take = n.min(b.len());
                let mut v: Vec<i16> = b.drain(..take).collect();
                v.resize(n, 0);
                sh.ready.notify_one();
                v
            };
            let err = |e| tracing::warn!(error = %e, "speaker stream error");
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
            .map_err(|e| e.to_string())
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
