//! The handle of a call ("Actors with Tokio"): [`Call`] owns the event stream, and
//! [`CallController`], cheap to clone, sends [`Command`]s to the task that owns the state.

use std::sync::Arc;

use confab_proto::PeerId;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::local_media::LocalMedia;
use super::server_link::ServerLink;
use super::task::CallTask;
use super::{CallConfig, CallError, CallEvent};
use crate::audio_processing::ProcessingSettings;
use crate::device_recovery::DeviceNotices;
use crate::devices::{AudioSpec, SinkSpec, VideoSpec};
use crate::media::FrameSink;

pub(super) enum Command {
    Mute(bool),
    Camera(bool),
    SwitchVideo(VideoSpec, oneshot::Sender<Result<(), CallError>>),
    SwitchAudio(AudioSpec, oneshot::Sender<Result<(), CallError>>),
    SwitchSink(SinkSpec, oneshot::Sender<Result<(), CallError>>),
    Processing(ProcessingSettings),
    /// The camera stopped or came back (from the capture thread): peers must hear of it.
    CameraDevice(crate::device_recovery::DeviceNotice),
    Chat(String),
    Leave(oneshot::Sender<()>),
}

/// The handle of a running call: the commands of [`CallController`] (through `Deref`) plus
/// the event stream.
pub struct Call {
    control: CallController,
    events: mpsc::Receiver<CallEvent>,
    /// Our id in the room.
    pub peer_id: PeerId,
}

/// Sends commands to a running call; cheap to clone, so a UI can keep one while a task
/// reads the events.
#[derive(Clone)]
pub struct CallController {
    cmd: mpsc::Sender<Command>,
}

impl std::ops::Deref for Call {
    type Target = CallController;
    fn deref(&self) -> &CallController {
        &self.control
    }
}

impl Call {
    /// Opens the devices, connects to the server and joins the room. Returns once the
    /// server said `joined`; the first event is [`CallEvent::Joined`].
    pub async fn join(cfg: CallConfig, frames: Arc<dyn FrameSink>) -> Result<Call, CallError> {
        Self::join_until(cfg, frames, CancellationToken::new()).await
    }

    /// [`Call::join`], unless `cancel` fires before the server lets us in (a user who
    /// clicks Leave while a slow server answers): then the devices are closed, the room is
    /// told we left, and the result is [`CallError::Cancelled`].
    pub async fn join_until(
        cfg: CallConfig,
        frames: Arc<dyn FrameSink>,
        cancel: CancellationToken,
    ) -> Result<Call, CallError> {
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        // Weak: the call's own media must not keep its command channel open (the task ends
        // when the handle's sender is dropped).
        let (device_events, camera_notices) = (ev_tx.clone(), cmd_tx.downgrade());
        let notices: DeviceNotices = Arc::new(move |n| {
            // From a capture thread: never block it; a full queue loses the notice. The
            // camera's go through the call (peers see camera off while it is stopped).
            let _ = match n {
                crate::device_recovery::DeviceNotice::Stopped { kind: "camera", .. }
                | crate::device_recovery::DeviceNotice::Back { kind: "camera" } => {
                    camera_notices.upgrade().is_some_and(|tx| tx.try_send(Command::CameraDevice(n)).is_ok())
                }
                n => device_events.try_send(CallEvent::from(n)).is_ok(),
            };
        });
        // Devices first: a busy camera should fail the join, not half a call.
        let mut media = LocalMedia::open(&cfg, frames, notices)?;
        let sink = media.open_sink(&cfg.sink)?;

        let (link, joined) = ServerLink::connect(&cfg, &cancel).await?;
        let me = link.me().clone();
        info!(peer = %me, room = %joined.room, peers = joined.peers.len(), "joined");
        let (pc_tx, pc_rx) = mpsc::channel(1024);
        media.play_to(sink, cfg.sink.clone());
        let first = CallEvent::Joined {
            peer_id: me.clone(),
            room: joined.room.clone(),
            max_peers: joined.max_peers,
            peers: joined.peers.clone(),
        };
        let _ = ev_tx.send(first).await;
        let mut task = CallTask::new(&cfg, link, joined.ice_servers, &joined.peers, media, ev_tx, pc_tx);
        // Everyone already here offers to us; we answer (we are the polite side).
        for p in joined.peers {
            task.add_peer(p, true).await;
        }
        tokio::spawn(task.run(cmd_rx, pc_rx));
        Ok(Call { control: CallController { cmd: cmd_tx }, events: ev_rx, peer_id: me })
    }

    /// The next event; `None` after [`CallEvent::Ended`].
    pub async fn next_event(&mut self) -> Option<CallEvent> {
        self.events.recv().await
    }

    /// A handle for commands that outlives borrows of the call.
    pub fn controller(&self) -> CallController {
        self.control.clone()
    }

    /// Leaves the room: capture stops, every peer connection closes, every thread ends.
    /// Returns when all of that is done.
    pub async fn leave(self) {
        self.control.leave().await
    }
}

impl CallController {
    pub async fn set_muted(&self, muted: bool) {
        let _ = self.cmd.send(Command::Mute(muted)).await;
    }

    /// Camera off stops capture (the device is released); on opens it again.
    pub async fn set_camera(&self, on: bool) {
        let _ = self.cmd.send(Command::Camera(on)).await;
    }

    pub async fn switch_video(&self, spec: VideoSpec) -> Result<(), CallError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::SwitchVideo(spec, tx)).await.map_err(|_| CallError::Ended)?;
        rx.await.map_err(|_| CallError::Ended)?
    }

    pub async fn switch_audio(&self, spec: AudioSpec) -> Result<(), CallError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::SwitchAudio(spec, tx)).await.map_err(|_| CallError::Ended)?;
        rx.await.map_err(|_| CallError::Ended)?
    }

    /// Plays the call through `spec` from now on; if it cannot be opened, the old speaker
    /// stays.
    pub async fn switch_sink(&self, spec: SinkSpec) -> Result<(), CallError> {
        let (tx, rx) = oneshot::channel();
        self.cmd.send(Command::SwitchSink(spec, tx)).await.map_err(|_| CallError::Ended)?;
        rx.await.map_err(|_| CallError::Ended)?
    }

    /// Turns echo cancellation, noise suppression and gain control on or off mid-call.
    pub async fn set_processing(&self, s: ProcessingSettings) {
        let _ = self.cmd.send(Command::Processing(s)).await;
    }

    pub async fn chat(&self, text: impl Into<String>) {
        let _ = self.cmd.send(Command::Chat(text.into())).await;
    }

    /// Leaves the room and waits until everything is closed. Harmless if already ended.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(Command::Leave(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}
