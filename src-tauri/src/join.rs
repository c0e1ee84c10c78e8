//! Joining and leaving: the join screen's request checked and turned into a call, a join
//! that Leave (or closing the window) cancels before it completes, a server's certificate
//! trusted on first use, and engine errors said the way the join screen should say them.

use confab_engine::devices::{self, VideoSpec};
use confab_engine::signaling::SignalError;
use confab_engine::{Call, CallConfig, CallEvent, TlsOptions};
use confab_proto::{limits, PeerId};
use serde::{Deserialize, Serialize};
use tauri::ipc::Channel;
use tauri::State;
use tokio_util::sync::CancellationToken;

use crate::invite::Invite;
use crate::settings::{self, Settings, BUILT_IN};
use crate::{audio_spec, sink_spec, stop_mic_test_inner, stop_preview_inner, video_spec, Active, AppState};

#[derive(Deserialize, Debug)]
pub struct JoinRequest {
    name: String,
    room: String,
    server: String,
    password: Option<String>,
    camera: String,
    microphone: String,
    speaker: String,
    host_on_network: bool,
    #[serde(default)]
    audio_processing: confab_engine::audio_processing::ProcessingSettings,
    /// The certificate fingerprint the user just accepted for this server, if any.
    #[serde(default)]
    trust: Option<String>,
}

#[derive(Serialize)]
pub struct Joined {
    peer_id: PeerId,
    room: String,
    server: String,
    /// When hosting on the network: the addresses others can use (each with the code).
    share: Vec<String>,
    audio_only: bool,
}

/// Why a join did not happen, for the join screen.
#[derive(Serialize, Debug, Default)]
pub struct JoinFailure {
    message: String,
    /// Leave (or a newer join) cancelled it: nothing to show.
    cancelled: bool,
    /// The server's certificate is not trusted: what to show the user, who may trust it.
    untrusted: Option<Untrusted>,
}

#[derive(Serialize, Debug)]
pub struct Untrusted {
    server: String,
    fingerprint: String,
}

impl From<String> for JoinFailure {
    fn from(message: String) -> Self {
        JoinFailure { message, ..Default::default() }
    }
}

impl JoinFailure {
    fn cancelled() -> Self {
        JoinFailure { message: "The join was cancelled.".into(), cancelled: true, untrusted: None }
    }
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

/// `host:port` of a ws:// or wss:// URL: what a trusted certificate is remembered under.
pub fn server_key(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

/// A join in progress, which Leave or a newer join may cancel.
pub struct Joining {
    id: u64,
    cancel: CancellationToken,
    /// Ends (its sender dropped) when the join has returned, cancelled or not.
    done: tokio::sync::oneshot::Receiver<()>,
}

impl AppState {
    /// Cancels the join in progress, if any, and waits until it has wound down: the room
    /// told we left and the devices closed. Called before taking the call slot, so that a
    /// join either sees the cancellation or has already put its call where leave finds it.
    pub async fn cancel_join(&self) {
        let joining = self.joining.lock().unwrap().take();
        if let Some(j) = joining {
            j.cancel.cancel();
            // Bounded: a device that hangs on close must not hang Leave or the exit.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), j.done).await;
        }
    }
}

#[tauri::command]
pub async fn join(
    state: State<'_, AppState>,
    req: JoinRequest,
    events: Channel<serde_json::Value>,
) -> Result<Joined, JoinFailure> {
    let name = check_text("display name", &req.name, limits::MAX_DISPLAY_NAME_CHARS)?;
    let room = check_text("room name", &req.room, limits::MAX_ROOM_NAME_CHARS)?;
    let password = req.password.as_deref().map(str::trim).filter(|p| !p.is_empty()).map(String::from);
    let server_setting = req.server.trim().to_string();
    state.cancel_join().await;
    leave_inner(&state).await;
    stop_preview_inner(&state);
    stop_mic_test_inner(&state);
    let cancel = CancellationToken::new();
    let id = state.next_join.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (_done, done) = tokio::sync::oneshot::channel::<()>();
    *state.joining.lock().unwrap() = Some(Joining { id, cancel: cancel.clone(), done });
    let r = join_call(&state, &req, name, room, password, server_setting, events, &cancel).await;
    let mut slot = state.joining.lock().unwrap();
    if slot.as_ref().is_some_and(|j| j.id == id) {
        *slot = None;
    }
    r
}

#[allow(clippy::too_many_arguments)]
async fn join_call(
    state: &AppState,
    req: &JoinRequest,
    name: String,
    room: String,
    password: Option<String>,
    server_setting: String,
    events: Channel<serde_json::Value>,
    cancel: &CancellationToken,
) -> Result<Joined, JoinFailure> {
    let built_in = server_setting.is_empty() || server_setting == BUILT_IN;
    let (url, share) = if built_in {
        let ep = state.builtin.lock().await.ensure(req.host_on_network).await?;
        (ep.url, ep.share)
    } else if server_setting.starts_with("ws://") || server_setting.starts_with("wss://") {
        (server_setting.clone(), Vec::new())
    } else {
        return Err(format!("The server address must start with ws:// or wss:// (got '{server_setting}').").into());
    };

    let mut tls = TlsOptions::default();
    let key = server_key(&url);
    if let (Some(key), Some(fp)) = (&key, &req.trust) {
        // Kept only once the handshake proves it is the certificate the user saw.
        tls.pinned_sha256 = Some(confab_engine::signaling::normalize_fingerprint(fp));
        tracing::info!(server = %key, "trusting the certificate the user accepted");
    } else if let Some(key) = &key {
        tls.pinned_sha256 = state.settings.lock().unwrap().trusted_certs.get(key).cloned();
    }

    let mut video = video_spec(&req.camera, state.synthetic);
    let mut audio_only = false;
    if video == VideoSpec::Camera(None) && devices::camera::list(&devices::Cameras::system()).is_empty() {
        // No camera at all: join with sound only rather than not at all.
        video = VideoSpec::None;
        audio_only = true;
    }
    let mut cfg = CallConfig::new(url.clone(), room.clone(), name.clone());
    cfg.password = password.clone();
    cfg.video = video;
    // The default microphone or speaker of a machine that has none: the synthetic tone if
    // allowed, else silence; the call goes on either way.
    cfg.audio = audio_spec(&req.microphone, state.synthetic);
    cfg.sink = sink_spec(&req.speaker);
    cfg.processing = req.audio_processing;
    cfg.self_view = true;
    cfg.udp_bind = vec![format!("{}:0", state.udp_bind)];
    cfg.tls = tls.clone();
    let fwd = state.frames.clone();
    fwd.forget_peers();
    let mut call = match Call::join_until(cfg, fwd.clone(), cancel.clone()).await {
        Ok(call) => call,
        Err(confab_engine::CallError::Cancelled) => return Err(JoinFailure::cancelled()),
        Err(e) => return Err(failure(&e, &url)),
    };
    let peer_id = call.peer_id.clone();

    let saved = {
        let mut s = state.settings.lock().unwrap();
        let mut trusted = s.trusted_certs.clone();
        if let (Some(key), Some(pin)) = (key, tls.pinned_sha256) {
            trusted.insert(key, pin);
        }
        *s = Settings {
            name,
            room: room.clone(),
            server: if server_setting.is_empty() { BUILT_IN.into() } else { server_setting },
            camera: req.camera.clone(),
            microphone: req.microphone.clone(),
            speaker: req.speaker.clone(),
            host_on_network: req.host_on_network,
            audio_processing: req.audio_processing,
            trusted_certs: trusted,
        };
        s.clone()
    };
    if let Err(e) = settings::save(&state.config_dir, &saved) {
        tracing::warn!(error = %e, "cannot save settings");
    }

    // What others need to join us: the server as they reach it.
    let invite_server = if built_in { share.first().cloned().unwrap_or_else(|| url.clone()) } else { url.clone() };
    let invite = Invite { server: invite_server, room: room.clone(), password };
    let control = call.controller();
    let mut slot = state.call.lock().await;
    if cancel.is_cancelled() {
        drop(slot);
        call.leave().await;
        return Err(JoinFailure::cancelled());
    }
    let pump = tauri::async_runtime::spawn(async move {
        while let Some(ev) = call.next_event().await {
            match &ev {
                CallEvent::PeerLeft { peer_id } => fwd.remove(peer_id.as_str()),
                CallEvent::Levels { levels } => {
                    for l in levels {
                        fwd.set_speaking(l.peer_id.as_str(), l.speaking);
                    }
                }
                _ => {}
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
    *slot = Some(Active { control, pump, invite });
    Ok(Joined { peer_id, room, server: url, share, audio_only })
}

/// Turns engine errors into what the join screen should say.
fn failure(e: &confab_engine::CallError, url: &str) -> JoinFailure {
    use confab_engine::CallError as E;
    if let E::Signal(SignalError::Untrusted { fingerprint, reason, .. }) = e {
        return JoinFailure {
            message: format!(
                "This server's certificate is not trusted ({reason}). If its SHA-256 fingerprint below is the one \
                 the server's operator gave you (confab-signal prints it when it starts), you can trust it."
            ),
            cancelled: false,
            untrusted: Some(Untrusted {
                server: server_key(url).unwrap_or_default(),
                fingerprint: fingerprint.clone(),
            }),
        };
    }
    friendly(e).into()
}

pub fn friendly(e: &confab_engine::CallError) -> String {
    use confab_engine::CallError as E;
    use confab_proto::ErrorCode;
    match e {
        E::Refused { code: ErrorCode::RoomFull, message } => format!("This room is full: {message}."),
        E::Refused { code: ErrorCode::Unauthorized, message } => format!("Wrong or missing password: {message}."),
        E::Signal(SignalError::Unreachable { addr, .. }) => {
            format!("Cannot reach the server at {addr}. Check the address, or use the built-in server.")
        }
        E::Signal(SignalError::Refused { status: 401, .. }) => "That computer hosts its calls with an access code: \
             join with the invite link its host gave you (it carries the code)."
            .into(),
        E::Signal(SignalError::Refused { status: 403, message }) if message.contains("access code") => {
            "The access code is wrong or old: ask the host for a new invite link.".into()
        }
        E::Signal(SignalError::Refused { message, .. }) => format!("The server refused to let us in: {message}"),
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

pub async fn leave_inner(state: &AppState) {
    let active = state.call.lock().await.take();
    if let Some(a) = active {
        a.control.leave().await;
        let _ = a.pump.await;
    }
}

/// Leave: ends the call, or the join still in progress.
#[tauri::command]
pub async fn leave(state: State<'_, AppState>) -> Result<(), String> {
    state.cancel_join().await;
    leave_inner(&state).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_remembered_by_host_and_port() {
        assert_eq!(server_key("wss://chat.example.org/ws").as_deref(), Some("chat.example.org:443"));
        assert_eq!(server_key("wss://10.0.0.5:8787/ws?code=X").as_deref(), Some("10.0.0.5:8787"));
        assert_eq!(server_key("ws://[::1]:9/ws").as_deref(), Some("[::1]:9"));
        assert_eq!(server_key("built-in"), None);
    }

    #[test]
    fn names_are_checked_before_anything_opens() {
        assert_eq!(check_text("room name", "  standup ", 64).unwrap(), "standup");
        assert!(check_text("room name", "   ", 64).unwrap_err().contains("enter"));
        assert!(check_text("room name", &"x".repeat(65), 64).unwrap_err().contains("too long"));
        assert!(check_text("room name", "a\u{7}b", 64).unwrap_err().contains("cannot be used"));
    }
}
