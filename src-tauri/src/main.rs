//! confab desktop app: a thin Tauri layer over `confab-engine`. Commands validate what the
//! page sends and call the engine; events and frames go back through channels. With no
//! server configured, the app runs `confab-signal` in-process.

#![cfg_attr(all(not(debug_assertions), target_os = "windows"), windows_subsystem = "windows")]

mod builtin;
mod frame_stream;
mod frames;
mod invite;
mod join;
mod links;
mod rendering;
mod settings;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use confab_engine::audio_processing::ProcessingSettings;
use confab_engine::devices::{self, AudioSpec, DeviceInfo, DeviceKind, SinkSpec, VideoSpec};
use confab_engine::worker::Worker;
use confab_engine::{CallController, DecodedFrame, FrameSink};
use confab_proto::{limits, PeerId};
use frames::FrameHub;
use join::{friendly, leave_inner};
use serde::Serialize;
use settings::Settings;
use tauri::ipc::Channel;
use tauri::{Manager, State};
use tauri_plugin_deep_link::DeepLinkExt;

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
    /// Join at once with what is filled in, as if Join were clicked (a meeting-room
    /// computer that joins its standing room when it starts, say).
    #[arg(long)]
    join: bool,
    /// An invite link (confab://join?...), as the desktop passes it when one is clicked.
    #[arg(value_name = "LINK")]
    link: Option<String>,
}

pub(crate) struct Active {
    control: CallController,
    pump: tauri::async_runtime::JoinHandle<()>,
    /// What others need to join this call (Copy invite link).
    invite: invite::Invite,
}

pub(crate) struct AppState {
    cli: Cli,
    config_dir: PathBuf,
    settings: Mutex<Settings>,
    call: tokio::sync::Mutex<Option<Active>>,
    /// The join screen's camera preview.
    preview: Mutex<Option<Worker>>,
    /// The join screen's microphone test (its level meter).
    mic_test: Mutex<Option<Worker>>,
    /// Where every frame for the page goes (the preview's and the call's).
    frames: Arc<FrameHub>,
    /// How the page draws (decided at startup).
    rendering: rendering::Rendering,
    /// The page's frame stream, started when the page first asks for it.
    frame_stream: tokio::sync::OnceCell<frame_stream::FrameStream>,
    builtin: tokio::sync::Mutex<builtin::BuiltIn>,
    /// `CONFAB_SYNTHETIC_DEVICES=1`: offer the synthetic camera and microphone.
    synthetic: bool,
    /// `CONFAB_UDP_BIND`: where ICE host candidates live (default: every interface).
    udp_bind: String,
    /// The join in progress, which Leave cancels.
    joining: Mutex<Option<join::Joining>>,
    next_join: std::sync::atomic::AtomicU64,
    /// Invite links that arrive while the app runs (clicked on the desktop), to the page.
    links: links::LinkInbox,
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
    // The page asks once it has loaded: for the logs (and the install test), the moment the
    // join screen is up.
    tracing::info!("join screen up");
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
pub(crate) fn video_spec(id: &str, synthetic: bool) -> VideoSpec {
    match VideoSpec::from_device_id(id) {
        VideoSpec::Camera(None) if synthetic && devices::camera::list(&devices::Cameras::system()).is_empty() => {
            VideoSpec::Synthetic
        }
        spec => spec,
    }
}

/// Shows the chosen camera on the join screen until Join (or another choice).
#[tauri::command]
async fn start_preview(state: State<'_, AppState>, camera: String) -> Result<(), String> {
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
    let fwd = state.frames.clone();
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
pub(crate) fn audio_spec(id: &str, synthetic: bool) -> AudioSpec {
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

pub(crate) fn stop_mic_test_inner(state: &AppState) {
    let test = state.mic_test.lock().unwrap().take();
    drop(test);
}

#[tauri::command]
fn stop_mic_test(state: State<'_, AppState>) {
    stop_mic_test_inner(&state);
}

pub(crate) fn stop_preview_inner(state: &AppState) {
    let preview = state.preview.lock().unwrap().take();
    // Dropping the worker stops the preview thread and waits for it (the camera closes).
    drop(preview);
}

#[tauri::command]
fn stop_preview(state: State<'_, AppState>) {
    stop_preview_inner(&state);
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
pub(crate) fn sink_spec(id: &str) -> SinkSpec {
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

#[derive(Serialize)]
struct FrameStreamInfo {
    url: String,
    /// How tiles draw: webgl (I420) or 2d (RGBA); see rendering.rs.
    renderer: &'static str,
}

/// Where the page reads its frames from (see frame_stream.rs).
#[tauri::command]
async fn frame_stream(state: State<'_, AppState>) -> Result<FrameStreamInfo, String> {
    let hub = state.frames.clone();
    let stream = state
        .frame_stream
        .get_or_try_init(|| frame_stream::FrameStream::start(hub))
        .await
        .map_err(|e| format!("cannot open the frame stream on loopback: {e}"))?;
    Ok(FrameStreamInfo { url: stream.url.clone(), renderer: state.rendering.renderer.as_str() })
}

/// Frames sent to each tile and frames dropped before the page could draw them.
#[tauri::command]
fn tile_counts(state: State<'_, AppState>) -> std::collections::HashMap<String, (u64, u64)> {
    state.frames.counts()
}

#[tauri::command]
fn set_tile_size(state: State<'_, AppState>, tile: String, width: u32, height: u32) {
    state.frames.set_tile_size(&tile, width, height);
}

fn main() {
    let cli = Cli::parse();
    // Before anything starts a thread (and WebKit, which reads its variable once).
    let rendering = rendering::apply();
    confab_engine::init_logging();
    tracing::info!(renderer = rendering.renderer.as_str(), compositing = rendering.compositing, "rendering");
    let synthetic = std::env::var("CONFAB_SYNTHETIC_DEVICES").map(|v| v == "1").unwrap_or(false);
    let udp_bind = std::env::var("CONFAB_UDP_BIND").unwrap_or_else(|_| "0.0.0.0".into());
    let app = tauri::Builder::default()
        // First, as its documentation asks: a second `confab` (a link clicked while we run)
        // hands its arguments over and exits. The deep-link feature passes a link given
        // alone to the deep-link plugin's on_open_url below; anything else comes here.
        .plugin(tauri_plugin_single_instance::init(|app, args, _cwd| {
            let alone = args.len() == 2 && invite::Invite::looks_like_link(&args[1]);
            links::second_instance(app, if alone { Vec::new() } else { args });
        }))
        .plugin(tauri_plugin_deep_link::init())
        .plugin(tauri_plugin_clipboard_manager::init())
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
                frames: Arc::default(),
                frame_stream: tokio::sync::OnceCell::new(),
                rendering,
                builtin: tokio::sync::Mutex::new(builtin::BuiltIn::default()),
                synthetic,
                udp_bind: udp_bind.clone(),
                joining: Mutex::new(None),
                next_join: Default::default(),
                links: links::LinkInbox::default(),
            });
            // The link this process was started with (also when the desktop passes it with
            // other arguments), then every link clicked while we run.
            let state = app.state::<AppState>();
            if let Some(link) = cli.link.clone() {
                state.links.deliver(links::LinkNews::from_arg(&link));
            }
            let handle = app.handle().clone();
            app.deep_link().on_open_url(move |event| {
                let state = handle.state::<AppState>();
                for url in event.urls() {
                    state.links.deliver(links::LinkNews::from_arg(url.as_str()));
                }
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
            join::join,
            join::leave,
            set_muted,
            set_camera,
            set_audio_processing,
            switch_device,
            send_chat,
            frame_stream,
            tile_counts,
            set_tile_size,
            links::watch_links,
            links::copy_invite,
            links::invite_info
        ])
        .build(tauri::generate_context!("../tauri.conf.json"))
        .expect("building the app");
    app.run(|handle, event| {
        if let tauri::RunEvent::Exit = event {
            // Closing the window leaves the call properly: peers see us go at once.
            let state = handle.state::<AppState>();
            tauri::async_runtime::block_on(async {
                state.cancel_join().await;
                leave_inner(&state).await;
                state.builtin.lock().await.stop().await;
            });
            stop_preview_inner(&state);
        }
    });
}
