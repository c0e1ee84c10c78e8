//! `confab-peer`: joins a confab room from the command line with synthetic or real devices,
//! prints every call event as a JSON line, and ends with a `summary` line of what it saw
//! from each peer. Exit status 0 only if media flowed both ways with every expected peer.
//! Tests, benchmarks and load tools drive confab through it.

mod snapshot;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use confab_engine::audio_processing::ProcessingSettings;
use confab_engine::devices::{self, AudioSpec, SinkSpec, VideoSpec};
use confab_engine::{Call, CallConfig, CallEvent, DecodedFrame, FrameSink, IcePolicy, PeerStats, TlsOptions};
use confab_proto::PeerId;
use serde::Serialize;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "confab-peer",
    version,
    about = "Headless confab client: join a room, report what was seen and heard."
)]
struct Cli {
    /// Signaling server, ws://HOST:PORT/ws or wss://HOST:PORT/ws.
    #[arg(long, env = "CONFAB_SERVER", required_unless_present = "list_devices")]
    server: Option<String>,
    /// Room to join.
    #[arg(long, required_unless_present = "list_devices")]
    room: Option<String>,
    /// Display name.
    #[arg(long, default_value = "confab-peer")]
    name: String,
    /// Room password.
    #[arg(long)]
    password: Option<String>,
    /// Video to send: synthetic, synthetic:4x3 (a 640x480 circle picture), camera,
    /// camera:ID, screen (the whole X11 display), screen:N (its monitor N) or none.
    #[arg(long, default_value = "synthetic")]
    video: VideoSpec,
    /// Audio to send: synthetic, synthetic:HZ, mic, mic:ID or none.
    #[arg(long, default_value = "synthetic")]
    audio: AudioSpec,
    /// Where to play what we hear: null or speaker[:ID].
    #[arg(long, default_value = "null")]
    speaker: SinkSpec,
    /// Echo cancellation of a microphone (what our speaker plays, heard again).
    #[arg(long, default_value = "on", value_name = "on|off", action = clap::ArgAction::Set, value_parser = on_off())]
    aec: bool,
    /// Noise suppression of a microphone.
    #[arg(long, default_value = "on", value_name = "on|off", action = clap::ArgAction::Set, value_parser = on_off())]
    ns: bool,
    /// Automatic gain control of a microphone.
    #[arg(long, default_value = "on", value_name = "on|off", action = clap::ArgAction::Set, value_parser = on_off())]
    agc: bool,
    /// Video size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x720", value_parser = parse_size)]
    size: (u32, u32),
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// VP8 bitrate in kbit/s (default: picked for the size).
    #[arg(long)]
    bitrate: Option<u32>,
    /// Seconds to stay in the call, counted from joining.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Extra CA (or the server's own self-signed certificate) to trust for wss://.
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// ICE candidates to use: all, or relay (TURN only).
    #[arg(long, default_value = "all")]
    ice_policy: IcePolicy,
    /// Local address for ICE host candidates (0.0.0.0 = every interface except loopback).
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// How many remote peers must exchange media with us for exit status 0.
    #[arg(long, default_value_t = 1)]
    expect_peers: usize,
    /// Send this chat message once every expected peer is connected.
    #[arg(long)]
    chat: Option<String>,
    /// Send a chat line at a time into the call: SECS:TEXT (repeatable).
    #[arg(long, value_parser = parse_chat_at)]
    chat_at: Vec<(f64, String)>,
    /// Mute the microphone this many seconds after joining.
    #[arg(long)]
    mute_at: Option<f64>,
    /// Turn the camera off this many seconds after joining.
    #[arg(long)]
    camera_off_at: Option<f64>,
    /// Print the available devices as JSON and exit.
    #[arg(long)]
    list_devices: bool,
    /// Do not print per-second stats lines.
    #[arg(long)]
    quiet_stats: bool,
    /// Print the voice levels (ours and each peer's, and who is speaking) five times a second.
    #[arg(long)]
    levels: bool,
    /// At exit, write the last picture from each peer to DIR as NAME-camera.png.
    #[arg(long, value_name = "DIR")]
    snapshot: Option<PathBuf>,
}

fn on_off() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

fn parse_chat_at(s: &str) -> Result<(f64, String), String> {
    let (t, text) = s.split_once(':').ok_or_else(|| format!("'{s}' is not SECS:TEXT"))?;
    let t: f64 = t.parse().map_err(|_| format!("bad seconds in '{s}'"))?;
    if !(t.is_finite() && t >= 0.0) || text.trim().is_empty() {
        return Err(format!("'{s}': need SECS >= 0 and some text"));
    }
    Ok((t, text.to_string()))
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once('x').ok_or_else(|| format!("size '{s}' is not WIDTHxHEIGHT"))?;
    let w: u32 = w.parse().map_err(|_| format!("bad width in '{s}'"))?;
    let h: u32 = h.parse().map_err(|_| format!("bad height in '{s}'"))?;
    if w < 16 || h < 16 || w > 3840 || h > 2160 || w % 2 == 1 || h % 2 == 1 {
        return Err(format!("size {w}x{h}: need even sizes from 16x16 to 3840x2160"));
    }
    Ok((w, h))
}

/// What we saw from one peer's video.
#[derive(Default)]
struct VideoRecord {
    frames: u64,
    stamped: u64,
    last_no: Option<u32>,
    gaps: u64,
    latencies_ms: Vec<u64>,
    /// When the last frame arrived (wall ms) and the running mean of frame intervals.
    last_at_ms: Option<u64>,
    mean_interval_ms: f64,
    max_gap_ms: u64,
    freezes: u64,
    freeze_ms: u64,
    /// Gaps of 300 ms or more: (wall ms when the picture came back, gap ms).
    stalls: Vec<(u64, u64)>,
    /// The last picture's mean luma and chroma: which camera it shows, for a test.
    picture: Option<[u8; 3]>,
}

impl VideoRecord {
    /// Accounts one displayed frame at `now_ms`. A freeze is WebRTC's: a frame interval over
    /// both three mean intervals and the mean plus 150 ms.
    fn arrived(&mut self, now_ms: u64) {
        if let Some(last) = self.last_at_ms {
            let gap = now_ms.saturating_sub(last);
            self.max_gap_ms = self.max_gap_ms.max(gap);
            let mean = self.mean_interval_ms;
            if self.frames > 10 && gap as f64 > (3.0 * mean).max(mean + 150.0) {
                self.freezes += 1;
                self.freeze_ms += gap;
            }
            if gap >= 300 {
                self.stalls.push((now_ms, gap));
            }
            self.mean_interval_ms = if self.frames <= 1 { gap as f64 } else { mean + (gap as f64 - mean) / 30.0 };
        }
        self.last_at_ms = Some(now_ms);
    }
}

/// Collects stamps and latencies per peer on the decode threads.
#[derive(Default)]
struct Recorder {
    peers: Mutex<BTreeMap<PeerId, VideoRecord>>,
    /// The last picture of each peer, kept only for --snapshot.
    last: Option<Mutex<BTreeMap<PeerId, confab_engine::frame::I420Frame>>>,
}

impl FrameSink for Recorder {
    fn on_frame(&self, peer: &PeerId, f: &DecodedFrame) {
        let mut peers = self.peers.lock().unwrap();
        let r = peers.entry(peer.clone()).or_default();
        r.frames += 1;
        r.arrived(confab_proto::wall_ms());
        r.picture = Some(mean_yuv(&f.frame));
        if let Some(last) = &self.last {
            last.lock().unwrap().insert(peer.clone(), f.frame.clone());
        }
        if let Some(s) = f.stamp {
            r.stamped += 1;
            if let Some(last) = r.last_no {
                if s.frame_no > last + 1 {
                    r.gaps += (s.frame_no - last - 1) as u64;
                }
            }
            r.last_no = Some(r.last_no.map_or(s.frame_no, |l| l.max(s.frame_no)));
            r.latencies_ms.push(f.decoded_ms.saturating_sub(s.capture_ms));
        }
    }
}

/// Mean Y, U and V of a picture, from every 7th sample (enough to tell two scenes apart).
fn mean_yuv(f: &confab_engine::frame::I420Frame) -> [u8; 3] {
    let (y, u, v) = f.planes();
    let mean = |p: &[u8]| {
        let (sum, n) = p.iter().step_by(7).fold((0u64, 0u64), |(s, n), &x| (s + x as u64, n + 1));
        (sum / n.max(1)) as u8
    };
    [mean(y), mean(u), mean(v)]
}

#[derive(Serialize, Default, Clone)]
struct PeerSummary {
    peer_id: PeerId,
    name: String,
    first_frame_ms: Option<u64>,
    frames_decoded: u64,
    stamp_gaps: u64,
    /// Longest time between two pictures, and WebRTC-style freezes (count, total ms).
    max_frame_gap_ms: u64,
    freezes: u64,
    freeze_ms: u64,
    /// Picture gaps of 300 ms or more: [wall ms when the picture came back, gap ms].
    stalls: Vec<(u64, u64)>,
    latency_ms: Option<serde_json::Value>,
    audio_tone_hz: Option<f64>,
    audio_packets_received: u64,
    candidate_type: Option<String>,
    bytes_received: u64,
    bytes_sent: u64,
    /// The last video rate the path to this peer allowed, and our budget then (kbit/s).
    path_kbps: u32,
    video_budget_kbps: u32,
    /// The lowest budget during the call (0 before the first stats).
    min_video_budget_kbps: u32,
    /// Received bitrate (kbit/s), mean over the last 5 s of stats.
    bitrate_in_kbps: f64,
    #[serde(skip)]
    recent_in: std::collections::VecDeque<f64>,
    left: bool,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Prints one JSON line, stamped with the wall clock (`at_ms`) so that tests can time
/// events across processes.
fn print(v: &serde_json::Value) {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("at_ms".into(), json!(confab_proto::wall_ms()));
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    confab_engine::init_logging();
    if cli.list_devices {
        let list = devices::list_devices(true);
        print(&json!({"type": "devices", "devices": list}));
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let ok = rt.block_on(run(cli))?;
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(cli: Cli) -> Result<bool> {
    let mut cfg =
        CallConfig::new(cli.server.clone().unwrap_or_default(), cli.room.clone().unwrap_or_default(), &cli.name);
    cfg.password = cli.password.clone();
    cfg.video = cli.video.clone();
    cfg.audio = cli.audio.clone();
    cfg.sink = cli.speaker.clone();
    cfg.processing = ProcessingSettings { aec: cli.aec, ns: cli.ns, agc: cli.agc };
    (cfg.width, cfg.height) = cli.size;
    cfg.fps = cli.fps;
    cfg.bitrate_kbps = cli.bitrate;
    cfg.ice_policy = cli.ice_policy;
    cfg.udp_bind = vec![format!("{}:0", cli.bind)];
    if let Some(ca) = &cli.ca_cert {
        cfg.tls = TlsOptions::from_file(ca).context("loading --ca-cert")?;
    }
    let recorder = Arc::new(Recorder { last: cli.snapshot.as_ref().map(|_| Mutex::default()), ..Default::default() });
    let started = Instant::now();
    let mut call = match Call::join(cfg, recorder.clone()).await {
        Ok(c) => c,
        Err(e) => {
            print(&json!({"type": "error", "message": e.to_string()}));
            bail!("{e}");
        }
    };
    let me = call.peer_id.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(cli.duration);
    let mut summaries: BTreeMap<PeerId, PeerSummary> = BTreeMap::new();
    let mut connected: BTreeMap<PeerId, bool> = BTreeMap::new();
    let mut chatted = false;
    let mut muted = false;
    let mut camera_off = false;
    let mut chats_at = cli.chat_at.clone();
    chats_at.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut timers = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = timers.tick() => {
                let t = started.elapsed().as_secs_f64();
                if let Some(at) = cli.mute_at { if !muted && t >= at { muted = true; call.set_muted(true).await; } }
                if let Some(at) = cli.camera_off_at { if !camera_off && t >= at { camera_off = true; call.set_camera(false).await; } }
                while chats_at.first().is_some_and(|(at, _)| t >= *at) {
                    let (_, text) = chats_at.remove(0);
                    call.chat(text).await;
                }
            }
            ev = call.next_event() => {
                let Some(ev) = ev else { break };
                match &ev {
                    CallEvent::Joined { peers, .. } => {
                        for p in peers {
                            summaries.insert(p.peer_id.clone(), PeerSummary { peer_id: p.peer_id.clone(), name: p.name.clone(), ..Default::default() });
                        }
                    }
                    CallEvent::PeerJoined { peer } => {
                        summaries.insert(peer.peer_id.clone(), PeerSummary { peer_id: peer.peer_id.clone(), name: peer.name.clone(), ..Default::default() });
                    }
                    CallEvent::PeerLeft { peer_id } => {
                        if let Some(s) = summaries.get_mut(peer_id) { s.left = true; }
                        connected.remove(peer_id);
                    }
                    CallEvent::FirstFrame { peer_id, ms } => {
                        if let Some(s) = summaries.get_mut(peer_id) { s.first_frame_ms = Some(*ms); }
                    }
                    CallEvent::Connection { peer_id, state } => {
                        connected.insert(peer_id.clone(), state == "connected");
                    }
                    CallEvent::Stats { stats } => update(&mut summaries, stats),
                    CallEvent::Ended { .. } => { print(&serde_json::to_value(&ev)?); break; }
                    _ => {}
                }
                let quiet = match ev {
                    CallEvent::Stats { .. } => cli.quiet_stats,
                    CallEvent::Levels { .. } => !cli.levels,
                    _ => false,
                };
                if !quiet {
                    let mut v = serde_json::to_value(&ev)?;
                    if let CallEvent::Stats { stats } = &ev {
                        // What the last picture from this peer looked like.
                        let picture = recorder.peers.lock().unwrap().get(&stats.peer_id).and_then(|r| r.picture);
                        if let Some([y, u, v_]) = picture {
                            v["stats"]["picture"] = json!({"y": y, "u": u, "v": v_});
                        }
                    }
                    print(&v);
                }
                if let Some(text) = &cli.chat {
                    let ready = connected.values().filter(|c| **c).count() >= cli.expect_peers;
                    if !chatted && ready {
                        chatted = true;
                        call.chat(text.clone()).await;
                    }
                }
            }
        }
    }
    print(&json!({"type": "leaving"}));
    call.leave().await;

    if let (Some(dir), Some(last)) = (&cli.snapshot, &recorder.last) {
        for (id, frame) in last.lock().unwrap().iter() {
            let name = summaries.get(id).map(|s| s.name.as_str()).unwrap_or(id.as_str());
            let path = snapshot::write(dir, &snapshot::file_name(name, "camera"), frame)?;
            print(
                &json!({"type": "snapshot", "peer_id": id, "path": path, "width": frame.width, "height": frame.height}),
            );
        }
    }
    let records = recorder.peers.lock().unwrap();
    let mut ok_peers = 0;
    let mut list = Vec::new();
    for (id, s) in summaries.iter_mut() {
        if let Some(r) = records.get(id) {
            s.frames_decoded = r.frames;
            s.stamp_gaps = r.gaps;
            s.max_frame_gap_ms = r.max_gap_ms;
            s.freezes = r.freezes;
            s.freeze_ms = r.freeze_ms;
            s.stalls = r.stalls.clone();
            if !r.latencies_ms.is_empty() {
                let mut l = r.latencies_ms.clone();
                l.sort_unstable();
                s.latency_ms =
                    Some(json!({"p50": percentile(&l, 0.5), "p95": percentile(&l, 0.95), "p99": percentile(&l, 0.99)}));
            }
        }
        let received = s.frames_decoded > 0 || s.audio_packets_received > 0;
        if received && s.bytes_sent > 0 {
            ok_peers += 1;
        }
        list.push(s.clone());
    }
    let ok = ok_peers >= cli.expect_peers;
    print(&json!({"type": "summary", "peer_id": me, "peers": list, "ok": ok,
                  "duration_s": started.elapsed().as_secs_f64()}));
    Ok(ok)
}

fn update(summaries: &mut BTreeMap<PeerId, PeerSummary>, stats: &PeerStats) {
    if let Some(s) = summaries.get_mut(&stats.peer_id) {
        s.bytes_received = s.bytes_received.max(stats.bytes_received);
        s.bytes_sent = s.bytes_sent.max(stats.bytes_sent);
        if stats.candidate_type.is_some() {
            s.candidate_type = stats.candidate_type.clone();
        }
        s.audio_packets_received = s.audio_packets_received.max(stats.audio_packets_received);
        s.path_kbps = stats.path_kbps;
        s.video_budget_kbps = stats.video_budget_kbps;
        if s.min_video_budget_kbps == 0 || stats.video_budget_kbps < s.min_video_budget_kbps {
            s.min_video_budget_kbps = stats.video_budget_kbps;
        }
        if stats.bitrate_in_kbps > 0.0 {
            s.recent_in.push_back(stats.bitrate_in_kbps);
            if s.recent_in.len() > 5 {
                s.recent_in.pop_front();
            }
            s.bitrate_in_kbps = s.recent_in.iter().sum::<f64>() / s.recent_in.len() as f64;
        }
        if stats.audio_tone_hz.is_some() {
            s.audio_tone_hz = stats.audio_tone_hz;
        }
    }
}
