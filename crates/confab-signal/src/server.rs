//! The I/O around the room state machine:
//!
//! ```text
//! listener ──accept──> connection task (TLS?, HTTP/1.1 via hyper)
//!                        ├─ GET /healthz, GET /metrics
//!                        └─ GET /ws ──upgrade──> WebSocket task
//!                                                 ├─ reader: rate limit -> decode -> Hub
//!                                                 ├─ writer: bounded queue -> socket
//!                                                 └─ told to stop by the Hub or sweeper
//! Hub (one mutex): Rooms state machine + the outbound queue of every connection
//! sweeper (one task): pings every client, drops the silent ones
//! ```
//! The Hub delivers under its lock so every client sees room events in the order the state
//! machine produced them. A client whose queue is full does not read: it is cut off rather
//! than allowed to grow memory.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use confab_proto::{decode, encode, ErrorCode, ProtoError, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::admission::admission;
use crate::metrics::{Metrics, Rejection};
use crate::ratelimit::{Strikes, TokenBucket, Verdict};
use crate::rooms::{ConnId, Outbound, Rooms, RoomsConfig};
use crate::turn::IceConfig;

/// Everything the server can be told. `Default` is what `confab-signal` runs with no flags.
#[derive(Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Most peers in one room.
    pub max_peers: usize,
    /// Most simultaneous TCP connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Messages a client may send in a burst.
    pub rate_burst: u32,
    /// Messages per second a client may send on average.
    pub rate_per_sec: u32,
    /// How often the server pings each client.
    pub ping_interval: Duration,
    /// A client silent this long is dropped (checked at each ping).
    pub idle_timeout: Duration,
    /// Frames queued for one client before it counts as not reading and is cut off.
    pub outbound_queue: usize,
    /// How long the room place of a client whose connection broke (no close frame) is kept
    /// for a `resume`.
    pub resume_grace: Duration,
    /// Secret for resume tokens. Set it (and keep it) so that clients keep their peer ids,
    /// and calls their connections, across a restart; `None` picks a random one per start.
    pub resume_secret: Option<String>,
    /// WebSocket frames over this many bytes close the connection (code 1009). Frames
    /// between the protocol limit (64 KiB) and this get a `too_large` error instead, so a
    /// confused client learns why.
    pub ws_max_frame: usize,
    /// Serve `wss://` with this identity.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// STUN/TURN servers for `joined`.
    pub ice: IceConfig,
    /// How long shutdown waits for clients to take their close frames.
    pub shutdown_grace: Duration,
    /// Web pages (their `Origin`, e.g. `https://meet.example.org`) allowed to open a
    /// WebSocket here; `*` allows every page. Browsers send `Origin` with every WebSocket
    /// upgrade and confab's own clients never do, so the default (empty) refuses every web
    /// page: otherwise any page open in any browser tab could join a room on a server it
    /// can reach (one on 127.0.0.1 or the LAN included) and take the media of whoever is in it.
    pub allow_origins: Vec<String>,
    /// When set, a WebSocket from anywhere but this machine (a loopback address) must carry
    /// `?code=` with this value: the app's "Host on my network" puts it in its invite links.
    pub access_code: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8787".parse().expect("valid address"),
            max_peers: 4,
            max_connections: 10_000,
            rate_burst: 100,
            rate_per_sec: 50,
            ping_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(20),
            outbound_queue: 256,
            resume_grace: Duration::from_secs(8),
            resume_secret: None,
            ws_max_frame: 1 << 20,
            tls: None,
            ice: IceConfig::default(),
            shutdown_grace: Duration::from_secs(2),
            allow_origins: Vec::new(),
            access_code: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A bound server, not yet serving.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// A running server. Dropping it stops the server (without waiting); `shutdown` stops it
/// gracefully and waits.
pub struct ServerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    cfg: Config,
    hub: Mutex<Hub>,
    metrics: Arc<Metrics>,
    next_conn: AtomicU64,
    permits: Arc<Semaphore>,
    /// Cancelled when the server stops: every connection sends its close frame and ends.
    shutdown: CancellationToken,
    /// Every connection task, so that shutdown can wait for them.
    tasks: TaskTracker,
    /// Origin of the monotonic clock used by rate limits.
    epoch: Instant,
}

struct Hub {
    rooms: Rooms,
    conns: HashMap<ConnId, ConnHandle>,
}

struct ConnHandle {
    tx: mpsc::Sender<Message>,
    ctl: Arc<ConnCtl>,
}

/// What the rest of the server shares with one connection task. One waker for every reason
/// to stop, and no per-connection timer: the sweeper does liveness for all of them.
struct ConnCtl {
    stop: Notify,
    /// Why it must stop: one of the `STOP_*` values.
    why: AtomicU8,
    /// Monotonic milliseconds (`Shared::now_mono_ms`) of the last frame received.
    last_heard_ms: AtomicU64,
}

const STOP_SLOW_CONSUMER: u8 = 1;
const STOP_SHUTDOWN: u8 = 2;
const STOP_TIMEOUT: u8 = 3;

impl ConnCtl {
    fn stop(&self, why: u8) {
        self.why.store(why, Relaxed);
        self.stop.notify_one();
    }
}

impl Server {
    /// Binds the listener. Port 0 picks a free port (see [`Server::local_addr`]).
    pub async fn bind(cfg: Config) -> Result<Server, ServerError> {
        let listener =
            TcpListener::bind(cfg.listen).await.map_err(|source| ServerError::Bind { addr: cfg.listen, source })?;
        let rooms = Rooms::new(RoomsConfig {
            max_peers: cfg.max_peers,
            ice: cfg.ice.clone(),
            resume_grace_ms: cfg.resume_grace.as_millis() as u64,
            resume_key: match &cfg.resume_secret {
                Some(s) => s.as_bytes().to_vec(),
                None => rand::random::<[u8; 32]>().to_vec(),
            },
            ..Default::default()
        });
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(cfg.max_connections)),
            cfg,
            hub: Mutex::new(Hub { rooms, conns: HashMap::new() }),
            metrics: Arc::new(Metrics::default()),
            next_conn: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            epoch: Instant::now(),
        });
        Ok(Server { listener, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Serves until `stop` completes, then closes every connection with a close frame
    /// ("server shutting down") and waits up to `shutdown_grace` for them.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let Server { listener, shared } = self;
        tokio::pin!(stop);
        let sweeper = shared.tasks.spawn(sweep(shared.clone()));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => accept(&shared, tcp, peer),
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        let open = shared.metrics.connections.load(Relaxed);
        info!(open, "shutting down");
        shared.shutdown.cancel();
        for conn in shared.hub.lock().expect("hub lock").conns.values() {
            conn.ctl.stop(STOP_SHUTDOWN);
        }
        let _ = sweeper.await;
        shared.tasks.close();
        if tokio::time::timeout(shared.cfg.shutdown_grace, shared.tasks.wait()).await.is_err() {
            warn!("some connections did not close within the grace period");
        }
    }

    /// Runs the server on the current tokio runtime.
    pub fn spawn(self) -> ServerHandle {
        let addr = self.local_addr();
        let shared = self.shared.clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(self.run(async move { stopped.cancelled().await }));
        ServerHandle { addr, shared, stop, task: Some(task) }
    }
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://` or `wss://` URL of the WebSocket endpoint.
    pub fn ws_url(&self) -> String {
        let scheme = if self.shared.cfg.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.addr)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// (rooms, peers) right now.
    pub fn counts(&self) -> (usize, usize) {
        let hub = self.shared.hub.lock().expect("hub lock");
        (hub.rooms.room_count(), hub.rooms.peer_count())
    }

    /// Stops accepting, closes every connection with a close frame and waits for them.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn accept(shared: &Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
        shared.metrics.rejected(Rejection::MaxConnections);
        shared.tasks.spawn(async move {
            // Answer, then drain what the client sent: closing with unread data would reset
            // the connection before the client reads the answer.
            let mut tcp = tcp;
            let _ = tcp
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 17\r\nconnection: close\r\n\r\nserver is full.\r\n")
                .await;
            let _ = tcp.shutdown().await;
            let mut sink = [0u8; 1024];
            let drain = async { while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        });
        return;
    };
    let _ = tcp.set_nodelay(true);
    let shared2 = shared.clone();
    shared.tasks.spawn(async move {
        let shared = shared2;
        let stop = shared.shutdown.clone();
        let serve = async {
            match shared.cfg.tls.clone() {
                None => serve_http(shared.clone(), tcp, peer, permit).await,
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_http(shared.clone(), stream, peer, permit).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        };
        tokio::select! {
            _ = serve => {}
            _ = stop.cancelled() => {}
        }
    });
}

type Body = Full<Bytes>;

async fn serve_http<IO>(shared: Arc<Shared>, io: IO, peer: SocketAddr, permit: OwnedSemaphorePermit)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The permit follows the connection into the WebSocket task when it upgrades.
    let permit = Arc::new(Mutex::new(Some(permit)));
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(route(&shared, req, peer, &permit)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!(error = %e, "http connection ended with an error");
    }
}

fn route(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
    permit: &Mutex<Option<OwnedSemaphorePermit>>,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        (&Method::GET, "/metrics") => {
            let (rooms, peers) = {
                let hub = shared.hub.lock().expect("hub lock");
                (hub.rooms.room_count(), hub.rooms.peer_count())
            };
            let mut r = text(StatusCode::OK, shared.metrics.render(rooms, peers));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        (&Method::GET, "/ws") => match admission(
            &shared.cfg,
            req.headers().get(header::ORIGIN).map(|o| String::from_utf8_lossy(o.as_bytes())).as_deref(),
            req.uri().query(),
            peer.ip(),
        ) {
            Ok(()) => upgrade(shared, req, permit),
            Err((rejection, status, why)) => {
                shared.metrics.rejected(rejection);
                debug!(%peer, %why, "WebSocket refused");
                text(status, why)
            }
        },
        (_, "/healthz" | "/metrics" | "/ws") => text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found: confab-signal serves /ws, /healthz and /metrics\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn header_has(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn upgrade(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    permit: &Mutex<Option<OwnedSemaphorePermit>>,
) -> Response<Body> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let ok = header_has(&req, header::CONNECTION, "upgrade")
        && header_has(&req, header::UPGRADE, "websocket")
        && req.headers().get(header::SEC_WEBSOCKET_VERSION).map(|v| v == "13").unwrap_or(false);
    let (Some(key), true) = (key, ok) else {
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade (version 13)\n".into());
    };
    // Taken only for a valid upgrade, so a bad request leaves the connection counted.
    let Some(permit) = permit.lock().expect("permit lock").take() else {
        return text(StatusCode::BAD_REQUEST, "this connection already upgraded\n".into());
    };
    let shared2 = shared.clone();
    shared.tasks.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let cfg = WebSocketConfig::default()
                    .read_buffer_size(4 * 1024)
                    .write_buffer_size(16 * 1024)
                    .max_write_buffer_size(1 << 20)
                    .max_message_size(Some(shared2.cfg.ws_max_frame))
                    .max_frame_size(Some(shared2.cfg.ws_max_frame));
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
                serve_ws(shared2, ws).await;
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
        drop(permit);
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64 is a valid header"),
    );
    r
}

/// How a WebSocket connection ended.
enum End {
    /// The client closed it with a close frame: it means to go.
    Closed,
    /// The socket failed or ended without a close frame: the client may come back.
    Lost,
    /// The server closes it with this code and reason.
    Close(CloseCode, &'static str),
    /// The Hub cut it off (slow consumer); nothing more can be sent.
    Killed,
}

async fn serve_ws<S>(shared: Arc<Shared>, ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let id = ConnId(shared.next_conn.fetch_add(1, Relaxed));
    let (tx, mut rx) = mpsc::channel::<Message>(shared.cfg.outbound_queue);
    let ctl = Arc::new(ConnCtl {
        stop: Notify::new(),
        why: AtomicU8::new(0),
        last_heard_ms: AtomicU64::new(shared.now_mono_ms()),
    });
    shared.hub.lock().expect("hub lock").conns.insert(id, ConnHandle { tx: tx.clone(), ctl: ctl.clone() });
    if shared.shutdown.is_cancelled() {
        // Upgraded just as the server stopped: the shutdown sweep may have missed us.
        ctl.stop(STOP_SHUTDOWN);
    }
    shared.metrics.connections.fetch_add(1, Relaxed);
    debug!(conn = id.0, "connected");

    let (mut sink, mut stream) = ws.split();
    // Polled alongside the reader; batches whatever is queued into one flush.
    let writer = async move {
        while let Some(first) = rx.recv().await {
            let mut closing = matches!(first, Message::Close(_));
            sink.feed(first).await?;
            while !closing {
                match rx.try_recv() {
                    Ok(m) => {
                        closing = matches!(m, Message::Close(_));
                        sink.feed(m).await?;
                    }
                    Err(_) => break,
                }
            }
            sink.flush().await?;
            if closing {
                break;
            }
        }
        Ok::<_, tungstenite::Error>(())
    };
    tokio::pin!(writer);

    let mut bucket = TokenBucket::new(shared.cfg.rate_burst, shared.cfg.rate_per_sec, shared.now_mono_ms());
    let mut strikes = Strikes::default();
    let mut writer_done = false;
    // Created once, not per loop turn: re-creating it would register and unregister a
    // waiter (two lock round trips) on every message.
    let stopped = ctl.stop.notified();
    tokio::pin!(stopped);

    let end = loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break match ctl.why.load(Relaxed) {
                STOP_SHUTDOWN => End::Close(CloseCode::Away, "server shutting down"),
                STOP_TIMEOUT => End::Close(CloseCode::Policy, TIMEOUT_REASON),
                _ => End::Killed,
            },
            r = &mut writer, if !writer_done => {
                writer_done = true;
                if let Err(e) = r { debug!(conn = id.0, error = %e, "write failed"); }
                break End::Lost;
            }
            frame = stream.next() => match frame {
                None => break End::Lost,
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    shared.metrics.rejected(Rejection::FrameTooLarge);
                    debug!(conn = id.0, error = %e, "frame over the hard limit");
                    break End::Close(CloseCode::Size, "frame too large");
                }
                Some(Err(e)) => {
                    debug!(conn = id.0, error = %e, "read failed");
                    break End::Lost;
                }
                Some(Ok(msg)) => {
                    ctl.last_heard_ms.store(shared.now_mono_ms(), Relaxed);
                    let verdict = match msg {
                        Message::Text(t) => on_frame(&shared, id, Ok(t.as_bytes()), &mut bucket, &mut strikes),
                        Message::Binary(_) => on_frame(&shared, id, Err(()), &mut bucket, &mut strikes),
                        Message::Close(_) => break End::Closed,
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
                    };
                    if let Some(end) = verdict { break end; }
                }
            },
        }
    };

    // A network that failed (reset, silence) may come back: hold the room place. A client
    // that said goodbye, or that we threw out, leaves now.
    let lost = matches!(end, End::Lost | End::Close(_, TIMEOUT_REASON));
    let outs = {
        let mut hub = shared.hub.lock().expect("hub lock");
        hub.conns.remove(&id);
        if lost {
            hub.rooms.connection_lost(id, confab_proto::wall_ms())
        } else {
            hub.rooms.disconnect(id)
        }
    };
    shared.deliver(outs);
    shared.metrics.connections.fetch_sub(1, Relaxed);
    if let End::Close(code, reason) = end {
        debug!(conn = id.0, reason, "closing");
        let frame = CloseFrame { code, reason: reason.into() };
        if tx.try_send(Message::Close(Some(frame))).is_ok() && !writer_done {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
        }
    }
    debug!(conn = id.0, "disconnected");
}

/// One data frame: `Ok` text, `Err` binary. Both count against the rate limit.
fn on_frame(
    shared: &Shared,
    id: ConnId,
    frame: Result<&[u8], ()>,
    bucket: &mut TokenBucket,
    strikes: &mut Strikes,
) -> Option<End> {
    shared.metrics.messages_received.fetch_add(1, Relaxed);
    if !bucket.try_take(shared.now_mono_ms()) {
        return match strikes.rate_limited() {
            Verdict::Tell => {
                let e = ProtoError::new(ErrorCode::RateLimited, "too many messages; slow down or be disconnected");
                shared.deliver(vec![Outbound { to: vec![id], msg: e.to_msg() }]);
                None
            }
            Verdict::Quiet => None,
            Verdict::Disconnect => {
                shared.metrics.rejected(Rejection::RateLimit);
                Some(End::Close(CloseCode::Policy, "rate limit exceeded"))
            }
        };
    }
    let Ok(bytes) = frame else {
        let e = ProtoError::new(ErrorCode::BadRequest, "binary frames are not supported; send JSON text");
        return on_error(shared, id, strikes, e);
    };
    match decode(bytes) {
        Ok(msg) => {
            strikes.good();
            let now_ms = confab_proto::wall_ms();
            let mut hub = shared.hub.lock().expect("hub lock");
            let outs = hub.rooms.handle(id, msg, now_ms);
            hub.deliver(outs, &shared.metrics);
            None
        }
        Err(e) => on_error(shared, id, strikes, e),
    }
}

fn on_error(shared: &Shared, id: ConnId, strikes: &mut Strikes, e: ProtoError) -> Option<End> {
    debug!(conn = id.0, error = %e, "refused a message");
    match strikes.error() {
        Verdict::Disconnect => {
            shared.metrics.error(e.code);
            shared.metrics.rejected(Rejection::Errors);
            Some(End::Close(CloseCode::Policy, "too many invalid messages"))
        }
        _ => {
            shared.deliver(vec![Outbound { to: vec![id], msg: e.to_msg() }]);
            None
        }
    }
}

const TIMEOUT_REASON: &str = "no answer to pings";

/// Every `ping_interval`: ping each client, and stop those silent for `idle_timeout`. Twice a
/// second: give up the places of away peers whose grace ran out. One timer for the whole
/// server instead of one per connection.
async fn sweep(shared: Arc<Shared>) {
    let step = shared.cfg.ping_interval.min(Duration::from_millis(500));
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let idle_ms = shared.cfg.idle_timeout.as_millis() as u64;
    let ping_ms = shared.cfg.ping_interval.as_millis() as u64;
    let mut last_ping = shared.now_mono_ms();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut hub = shared.hub.lock().expect("hub lock");
        let expired = hub.rooms.expire(confab_proto::wall_ms());
        hub.deliver(expired, &shared.metrics);
        let now = shared.now_mono_ms();
        if now.saturating_sub(last_ping) < ping_ms {
            continue;
        }
        last_ping = now;
        for conn in hub.conns.values() {
            if now.saturating_sub(conn.ctl.last_heard_ms.load(Relaxed)) >= idle_ms {
                if conn.ctl.why.load(Relaxed) == 0 {
                    shared.metrics.rejected(Rejection::Timeout);
                }
                conn.ctl.stop(STOP_TIMEOUT);
            } else {
                // A full queue is the slow-consumer rule's business, not the sweeper's.
                let _ = conn.tx.try_send(Message::Ping(Bytes::new()));
            }
        }
    }
}

impl Shared {
    fn deliver(&self, outs: Vec<Outbound>) {
        if outs.is_empty() {
            return;
        }
        self.hub.lock().expect("hub lock").deliver(outs, &self.metrics);
    }

    fn now_mono_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

impl Hub {
    /// Queues each message to its recipients, serialized once. Runs under the Hub lock so
    /// that queues receive messages in state-machine order.
    fn deliver(&mut self, outs: Vec<Outbound>, metrics: &Metrics) {
        let mut work: VecDeque<Outbound> = outs.into();
        while let Some(out) = work.pop_front() {
            match &out.msg {
                ServerMsg::Error { code, .. } => metrics.error(*code),
                ServerMsg::Signal { .. } => {
                    metrics.signals_relayed.fetch_add(out.to.len() as u64, Relaxed);
                }
                _ => {}
            }
            let text = tungstenite::Utf8Bytes::from(encode(&out.msg));
            for to in out.to {
                let Some(conn) = self.conns.get(&to) else { continue };
                match conn.tx.try_send(Message::Text(text.clone())) {
                    Ok(()) => {
                        metrics.messages_sent.fetch_add(1, Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // It does not read. Cut it off now; its room hears `peer_left`.
                        let conn = self.conns.remove(&to).expect("looked up above");
                        conn.ctl.stop(STOP_SLOW_CONSUMER);
                        metrics.rejected(Rejection::SlowConsumer);
                        warn!(conn = to.0, "outbound queue full: disconnecting a client that does not read");
                        work.extend(self.rooms.disconnect(to));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: each connection is a descriptor,
/// and the usual soft limit of 1024 is far below what one server can hold.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}
