//! confab desktop app: a thin Tauri layer over `confab-engine`. Commands validate what the
//! page sends and call the engine; events and frames go back through channels. With no
//! server configured, the app runs `confab-signal` in-process.

#![cfg_attr(all(not(debug_assertions), target_os = "windows"), windows_subsystem = "windows")]

mod builtin;
mod frames;
mod settings;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use confab_engine::audio_processing::ProcessingSettings;
use confab_engine::devices::{self, AudioSpec, DeviceInfo, DeviceKind, SinkSpec, VideoSpec};
use confab_engine::worker::Worker;
use confab_engine::{Call, CallConfig, CallController, CallEvent, DecodedFrame, FrameSink};
use confab_proto::{limits, PeerId};
use frames::FrameForwarder;
use serde::{Deserialize, Serialize};
use settings::{Settings, BUILT_IN};
use tauri::ipc::{Channel, InvokeResponseBody};
use tauri::{Manager, State};

/// confab: video calls. Type a room, click Join.
#[derive(Parser, Debug, Clone, Serialize)]
#[command(name = "confab", version)]
struct Cli {
    /// Signaling server (ws:// or wss://), or "built-in".
    #[arg(long)]
    server: Option<String>,
    /// Room to pre-fill.
    #[arg(long)]
    room: Option<String>,
    /// Display name to pre-fill.
    #[arg(long)]
    name: Option<String>,
}

struct Active {
    control: CallController,
    pump: tauri::async_runtime::JoinHandle<()>,
}

struct AppState {
    cli: Cli,
    config_dir: PathBuf,
    settings: Mutex<Settings>,
    call: tokio::sync::Mutex<Option<Active>>,
    /// The join screen's camera preview.
    preview: Mutex<Option<Worker>>,
    /// The join screen's microphone test (its level meter).
    mic_test: Mutex<Option<Worker>>,
    /// Where frames go now (the preview's or the call's forwarder).
    frames: Mutex<Option<Arc<FrameForwarder>>>,
    builtin: tokio::sync::Mutex<builtin::BuiltIn>,
    /// `CONFAB_SYNTHETIC_DEVICES=1`: offer the synthetic camera and microphone.
    synthetic: bool,
    /// `CONFAB_UDP_BIND`: where ICE host candidates live (default: every interface).
    udp_bind: String,
}

#[derive(Serialize)]
struct AppInfo {
    version: &'static str,
    settings: Settings,
    /// Command-line values, which win over saved settings.
    initial: Cli,
    devices: Vec<DeviceInfo>,
    synthetic: bool,
}

fn devices_for(synthetic: bool) -> Vec<DeviceInfo> {
    devices::list_devices(synthetic)
}

/// The device lists, off the UI thread: asking a sound server, or probing ALSA PCMs, can
/// take a while, and the page polls this while a device list is on screen.
async fn devices_off_ui(synthetic: bool) -> Vec<DeviceInfo> {
    tauri::async_runtime::spawn_blocking(move || devices_for(synthetic)).await.unwrap_or_default()
}

#[tauri::command]
async fn app_info(state: State<'_, AppState>) -> Result<AppInfo, String> {
    let devices = devices_off_ui(state.synthetic).await;
    let settings = state.settings.lock().unwrap().clone();
    Ok(AppInfo {
        version: env!("CARGO_PKG_VERSION"),
        settings,
        initial: state.cli.clone(),
        devices,
        synthetic: state.synthetic,
    })
}

#[tauri::command]
async fn list_devices(state: State<'_, AppState>) -> Result<Vec<DeviceInfo>, String> {
    Ok(devices_off_ui(state.synthetic).await)
}

#[tauri::command]
fn save_settings(state: State<'_, AppState>, settings: Settings) -> Result<(), String> {
    settings::save(&state.config_dir, &settings).map_err(|e| format!("cannot save settings: {e}"))?;
    *state.settings.lock().unwrap() = settings;
    Ok(())
}

/// The camera the page chose; with synthetic devices on, the default camera of a machine
/// that has none is the synthetic one.
fn video_spec(id: &str, synthetic: bool) -> VideoSpec {
    match VideoSpec::from_device_id(id) {
        VideoSpec::Camera(None) if synthetic && devices::camera::list(&devices::Cameras::system()).is_empty() => {
            VideoSpec::Synthetic
        }
        spec => spec,
    }
}

/// Shows the chosen camera on the join screen until Join (or another choice).
#[tauri::command]
async fn start_preview(
    state: State<'_, AppState>,
    camera: String,
    frames: Channel<InvokeResponseBody>,
) -> Result<(), String> {
    stop_preview_inner(&state);
    let spec = video_spec(&camera, state.synthetic);
    // Opening a camera takes a while (the driver negotiates a mode): not on the UI thread.
    let source = tauri::async_runtime::spawn_blocking(move || {
        devices::open_video(&spec, &devices::Cameras::system(), 640, 360, 30)
    })
    .await
    .map_err(|e| e.to_string())?;
    let Some(mut source) = source.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    // Another choice, or Join, may have come meanwhile and started its own preview.
    stop_preview_inner(&state);
    let fwd = Arc::new(FrameForwarder::new(frames));
    *state.frames.lock().unwrap() = Some(fwd.clone());
    let preview = Worker::spawn("preview", move |stop| {
        let me = PeerId(confab_engine::SELF_TILE.into());
        while !stop.is_set() {
            match source.next_frame() {
                Ok(Some(f)) => {
                    // As the call will send it: cropped to 16:9, never stretched.
                    let frame = f.frame.fitted(640, 360);
                    fwd.on_frame(&me, &DecodedFrame { frame, stamp: None, decoded_ms: f.capture_ms })
                }
                _ => break,
            }
        }
    })
    .map_err(|e| e.to_string())?;
    *state.preview.lock().unwrap() = Some(preview);
    Ok(())
}

/// The microphone the page chose, as a call would open it: with synthetic devices on, the
/// default microphone of a machine that has none is the synthetic tone; with none at all,
/// nothing.
fn audio_spec(id: &str, synthetic: bool) -> AudioSpec {
    let has_mic = || devices_for(false).iter().any(|d| d.kind == DeviceKind::Microphone);
    match AudioSpec::from_device_id(id) {
        AudioSpec::Mic(None) if !has_mic() && synthetic => AudioSpec::Synthetic(440.0),
        AudioSpec::Mic(None) if !has_mic() => AudioSpec::None,
        spec => spec,
    }
}

/// The join screen's "test your mic": opens the chosen microphone and sends its level
/// (dBFS, the loudest of each 100 ms) to `levels` until stopped, another microphone is
/// chosen, or the call starts.
#[tauri::command]
async fn start_mic_test(state: State<'_, AppState>, microphone: String, levels: Channel<f32>) -> Result<(), String> {
    stop_mic_test_inner(&state);
    let spec = audio_spec(&microphone, state.synthetic);
    // Opening a device can take a while (ALSA probes it): not on the UI thread.
    let source = tauri::async_runtime::spawn_blocking(move || devices::open_audio(&spec))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let Some(mut source) = source else { return Ok(()) };
    let test = Worker::spawn("mic-test", move |stop| {
        let mut loudest = confab_engine::levels::FLOOR_DBFS;
        let mut n = 0;
        while !stop.is_set() {
            let Ok(Some(pcm)) = source.next_frame() else { break };
            loudest = loudest.max(confab_engine::levels::level_dbfs(&pcm));
            n += 1;
            if n % 5 == 0 {
                if levels.send(loudest).is_err() {
                    break;
                }
                loudest = confab_engine::levels::FLOOR_DBFS;
            }
        }
    })
    .map_err(|e| e.to_string())?;
    *state.mic_test.lock().unwrap() = Some(test);
    Ok(())
}

fn stop_mic_test_inner(state: &AppState) {
    let test = state.mic_test.lock().unwrap().take();
    drop(test);
}

#[tauri::command]
fn stop_mic_test(state: State<'_, AppState>) {
    stop_mic_test_inner(&state);
}

fn stop_preview_inner(state: &AppState) {
    let preview = state.preview.lock().unwrap().take();
    // Dropping the worker stops the preview thread and waits for it (the camera closes).
    drop(preview);
}

#[tauri::command]
fn stop_preview(state: State<'_, AppState>) {
    stop_preview_inner(&state);
}

#[derive(Deserialize, Debug)]
struct JoinRequest {
    name: String,
    room: String,
    server: String,
    password: Option<String>,
    camera: String,
    microphone: String,
    speaker: String,
    host_on_network: bool,
    #[serde(default)]
    audio_processing: ProcessingSettings,
}

#[derive(Serialize)]
struct Joined {
    peer_id: PeerId,
    room: String,
    server: String,
    /// When hosting on the network: the address to give others.
    share: Option<String>,
    audio_only: bool,
}

fn check_text(what: &str, v: &str, max: usize) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() {
        return Err(format!("Please enter a {what}."));
    }
    if v.chars().count() > max {
        return Err(format!("The {what} is too long (at most {max} characters)."));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("The {what} has characters that cannot be used."));
    }
    Ok(v.to_string())
}

#[tauri::command]
async fn join(
    state: State<'_, AppState>,
    req: JoinRequest,
    events: Channel<serde_json::Value>,
    frames: Channel<InvokeResponseBody>,
) -> Result<Joined, String> {
    let name = check_text("display name", &req.name, limits::MAX_DISPLAY_NAME_CHARS)?;
    let room = check_text("room name", &req.room, limits::MAX_ROOM_NAME_CHARS)?;
    let password = req.password.as_deref().map(str::trim).filter(|p| !p.is_empty()).map(String::from);
    let server_setting = req.server.trim().to_string();
    leave_inner(&state).await;
    stop_preview_inner(&state);
    stop_mic_test_inner(&state);

    let (url, share) = if server_setting.is_empty() || server_setting == BUILT_IN {
        let mut b = state.builtin.lock().await;
        b.ensure(req.host_on_network).await?
    } else if server_setting.starts_with("ws://") || server_setting.starts_with("wss://") {
        (server_setting.clone(), None)
    } else {
        return Err(format!("The server address must start with ws:// or wss:// (got '{server_setting}')."));
    };

    let mut video = video_spec(&req.camera, state.synthetic);
    let mut audio_only = false;
    if video == VideoSpec::Camera(None) && devices::camera::list(&devices::Cameras::system()).is_empty() {
        // No camera at all: join with sound only rather than not at all.
        video = VideoSpec::None;
        audio_only = true;
    }
    // The default microphone or speaker of a machine that has none: the synthetic tone if
    // allowed, else silence; the call goes on either way.
    let audio = audio_spec(&req.microphone, state.synthetic);
    let sink = sink_spec(&req.speaker);

    let mut cfg = CallConfig::new(url.clone(), room.clone(), name.clone());
    cfg.password = password;
    cfg.video = video;
    cfg.audio = audio;
    cfg.sink = sink;
    cfg.processing = req.audio_processing;
    cfg.self_view = true;
    cfg.udp_bind = vec![format!("{}:0", state.udp_bind)];
    let fwd = Arc::new(FrameForwarder::new(frames));
    *state.frames.lock().unwrap() = Some(fwd.clone());
    let mut call = Call::join(cfg, fwd.clone()).await.map_err(|e| friendly(&e))?;
    let peer_id = call.peer_id.clone();

    let saved = Settings {
        name,
        room: room.clone(),
        server: if server_setting.is_empty() { BUILT_IN.into() } else { server_setting },
        camera: req.camera.clone(),
        microphone: req.microphone.clone(),
        speaker: req.speaker.clone(),
        host_on_network: req.host_on_network,
        audio_processing: req.audio_processing,
    };
    if let Err(e) = settings::save(&state.config_dir, &saved) {
        tracing::warn!(error = %e, "cannot save settings");
    }
    *state.settings.lock().unwrap() = saved;

    let control = call.controller();
    let pump = tauri::async_runtime::spawn(async move {
        while let Some(ev) = call.next_event().await {
            if let CallEvent::PeerLeft { peer_id } = &ev {
                fwd.remove(peer_id.as_str());
            }
            let end = matches!(ev, CallEvent::Ended { .. });
            if let Ok(v) = serde_json::to_value(&ev) {
                let _ = events.send(v);
            }
            if end {
                break;
            }
        }
    });
    *state.call.lock().await = Some(Active { control, pump });
    Ok(Joined { peer_id, room, server: url, share, audio_only })
}

/// Turns engine errors into what the join screen should say.
fn friendly(e: &confab_engine::CallError) -> String {
    use confab_engine::CallError as E;
    use confab_proto::ErrorCode;
    match e {
        E::Refused { code: ErrorCode::RoomFull, message } => format!("This room is full: {message}."),
        E::Refused { code: ErrorCode::Unauthorized, message } => format!("Wrong or missing password: {message}."),
        E::Signal(confab_engine::signaling::SignalError::Unreachable { addr, .. }) => {
            format!("Cannot reach the server at {addr}. Check the address, or use the built-in server.")
        }
        E::Device(devices::DeviceError::Busy { kind, name, .. }) => {
            format!("The {kind} '{name}' is in use by another program. Close it, or pick another {kind}.")
        }
        E::Device(devices::DeviceError::NotFound { kind, .. }) => {
            format!("No {kind} found. Pick another one in the list.")
        }
        E::Device(devices::DeviceError::Unavailable { kind, name, .. }) => {
            format!("The {kind} '{name}' is not available (unplugged?). Pick another one in the list.")
        }
        other => other.to_string(),
    }
}

async fn leave_inner(state: &AppState) {
    let active = state.call.lock().await.take();
    if let Some(a) = active {
        a.control.leave().await;
        let _ = a.pump.await;
    }
}

#[tauri::command]
async fn leave(state: State<'_, AppState>) -> Result<(), String> {
    leave_inner(&state).await;
    Ok(())
}

#[tauri::command]
async fn set_muted(state: State<'_, AppState>, muted: bool) -> Result<(), String> {
    if let Some(a) = state.call.lock().await.as_ref() {
        a.control.set_muted(muted).await;
    }
    Ok(())
}

/// Echo cancellation, noise suppression and gain control, from Settings: kept for the next
/// call and, during one, applied at once.
#[tauri::command]
async fn set_audio_processing(state: State<'_, AppState>, processing: ProcessingSettings) -> Result<(), String> {
    if let Some(a) = state.call.lock().await.as_ref() {
        a.control.set_processing(processing).await;
    }
    let saved = {
        let mut s = state.settings.lock().unwrap();
        s.audio_processing = processing;
        s.clone()
    };
    settings::save(&state.config_dir, &saved).map_err(|e| format!("cannot save settings: {e}"))
}

/// The speaker the page chose, as a call opens it: the default speaker of a machine that
/// has none is nothing.
fn sink_spec(id: &str) -> SinkSpec {
    match SinkSpec::from_device_id(id) {
        SinkSpec::Speaker(None) if !devices_for(false).iter().any(|d| d.kind == DeviceKind::Speaker) => SinkSpec::Null,
        spec => spec,
    }
}

/// Settings' device lists during a call: the camera, microphone or speaker changes at once,
/// the call goes on, and the choice is kept for next time. If the new device cannot be
/// opened the old one stays, and the error says why.
#[tauri::command]
async fn switch_device(state: State<'_, AppState>, kind: DeviceKind, id: String) -> Result<(), String> {
    if let Some(a) = state.call.lock().await.as_ref() {
        let synthetic = state.synthetic;
        let r = match kind {
            DeviceKind::Camera => a.control.switch_video(video_spec(&id, synthetic)).await,
            DeviceKind::Microphone => a.control.switch_audio(audio_spec(&id, synthetic)).await,
            DeviceKind::Speaker => a.control.switch_sink(sink_spec(&id)).await,
        };
        r.map_err(|e| friendly(&e))?;
    }
    let saved = {
        let mut s = state.settings.lock().unwrap();
        match kind {
            DeviceKind::Camera => s.camera = id,
            DeviceKind::Microphone => s.microphone = id,
            DeviceKind::Speaker => s.speaker = id,
        }
        s.clone()
    };
    settings::save(&state.config_dir, &saved).map_err(|e| format!("cannot save settings: {e}"))
}

#[tauri::command]
async fn set_camera(state: State<'_, AppState>, on: bool) -> Result<(), String> {
    if let Some(a) = state.call.lock().await.as_ref() {
        a.control.set_camera(on).await;
    }
    Ok(())
}

#[tauri::command]
async fn send_chat(state: State<'_, AppState>, text: String) -> Result<(), String> {
    let text = text.trim().to_string();
    if text.is_empty() {
        return Ok(());
    }
    if text.chars().count() > limits::MAX_CHAT_CHARS {
        return Err(format!("Messages can be at most {} characters.", limits::MAX_CHAT_CHARS));
    }
    match state.call.lock().await.as_ref() {
        Some(a) => {
            a.control.chat(text).await;
            Ok(())
        }
        None => Err("Not in a call.".into()),
    }
}

#[tauri::command]
fn frame_done(state: State<'_, AppState>, tile: String) {
    if let Some(f) = state.frames.lock().unwrap().as_ref() {
        f.frame_done(&tile);
    }
}

/// Frames sent to each tile and frames dropped before the page could draw them.
#[tauri::command]
fn tile_counts(state: State<'_, AppState>) -> std::collections::HashMap<String, (u64, u64)> {
    state.frames.lock().unwrap().as_ref().map(|f| f.counts()).unwrap_or_default()
}

#[tauri::command]
fn set_tile_size(state: State<'_, AppState>, tile: String, width: u32, height: u32) {
    if let Some(f) = state.frames.lock().unwrap().as_ref() {
        f.set_tile_size(&tile, width, height);
    }
}

fn main() {
    let cli = Cli::parse();
    // WebKitGTK's accelerated compositing falls back to software GL where there is no GPU
    // (and under Xvfb), and then costs 3-4x the CPU of plain drawing for our 30 fps tiles
    // (measured: 138% vs 25% of a core for one 720p tile). Opt back in with
    // CONFAB_WEBKIT_COMPOSITING=1.
    if std::env::var_os("CONFAB_WEBKIT_COMPOSITING").is_none()
        && std::env::var_os("WEBKIT_DISABLE_COMPOSITING_MODE").is_none()
    {
        std::env::set_var("WEBKIT_DISABLE_COMPOSITING_MODE", "1");
    }
    confab_engine::init_logging();
    let synthetic = std::env::var("CONFAB_SYNTHETIC_DEVICES").map(|v| v == "1").unwrap_or(false);
    let udp_bind = std::env::var("CONFAB_UDP_BIND").unwrap_or_else(|_| "0.0.0.0".into());
    let app = tauri::Builder::default()
        .setup(move |app| {
            let config_dir = app.path().app_config_dir().unwrap_or_else(|_| std::env::temp_dir().join("confab"));
            let settings = settings::load(&config_dir);
            app.manage(AppState {
                cli: cli.clone(),
                config_dir,
                settings: Mutex::new(settings),
                call: tokio::sync::Mutex::new(None),
                preview: Mutex::new(None),
                mic_test: Mutex::new(None),
                frames: Mutex::new(None),
                builtin: tokio::sync::Mutex::new(builtin::BuiltIn::default()),
                synthetic,
                udp_bind: udp_bind.clone(),
            });
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![
            app_info,
            list_devices,
            save_settings,
            start_preview,
            stop_preview,
            start_mic_test,
            stop_mic_test,
            join,
            leave,
            set_muted,
            set_camera,
            set_audio_processing,
            switch_device,
            send_chat,
            frame_done,
            tile_counts,
            set_tile_size
        ])
        .build(tauri::generate_context!("../tauri.conf.json"))
        .expect("building the app");
    app.run(|handle, event| {
        if let tauri::RunEvent::Exit = event {
            // Closing the window leaves the call properly: peers see us go at once.
            let state = handle.state::<AppState>();
            tauri::async_runtime::block_on(async {
                leave_inner(&state).await;
                state.builtin.lock().await.stop().await;
            });
            stop_preview_inner(&state);
        }
    });
}
