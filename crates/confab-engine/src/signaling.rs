//! The signaling client: one WebSocket to `confab-signal` (ws:// or wss://), speaking
//! protocol v1 from `confab-proto`. A task owns the socket; the call talks to it through
//! channels, and the task ends when the call drops its sender or the socket closes.

use std::sync::Arc;

use confab_proto::{decode_server, encode, ClientMsg, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("bad server URL '{0}': expected ws://HOST:PORT/ws or wss://HOST:PORT/ws")]
    BadUrl(String),
    #[error("cannot reach the server at {addr}: {source}")]
    Unreachable { addr: String, source: std::io::Error },
    #[error("cannot read the CA certificate {path}: {reason}")]
    BadCa { path: String, reason: String },
    #[error("TLS with {host} failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("WebSocket handshake with {url} failed: {reason}")]
    Handshake { url: String, reason: String },
}

/// How to trust a wss:// server.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Extra PEM certificate(s) to trust besides the system's roots, e.g. the one
    /// `confab-signal --self-signed --write-cert` wrote (which pins that server).
    pub extra_ca_pem: Option<String>,
}

impl TlsOptions {
    pub fn from_file(path: &std::path::Path) -> Result<Self, SignalError> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| SignalError::BadCa { path: path.display().to_string(), reason: e.to_string() })?;
        Ok(TlsOptions { extra_ca_pem: Some(pem) })
    }
}

/// What the signaling task reports.
#[derive(Debug)]
pub enum SignalEvent {
    Msg(ServerMsg),
    /// The connection ended; the reason if the server gave one.
    Closed(Option<String>),
}

/// How often the socket task checks that the server is still there (and pings it).
const SILENCE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);
/// A server silent this long is taken as gone.
const MAX_SILENCE: std::time::Duration = std::time::Duration::from_secs(15);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects and starts the socket task. Messages put into the returned sender go out in
/// order; server messages come out of the receiver.
pub async fn connect(
    url: &str,
    tls: &TlsOptions,
) -> Result<(mpsc::Sender<ClientMsg>, mpsc::Receiver<SignalEvent>), SignalError> {
    let (secure, rest) = match url.split_once("://") {
        Some(("ws", r)) => (false, r),
        Some(("wss", r)) => (true, r),
        _ => return Err(SignalError::BadUrl(url.into())),
    };
    let hostport = rest.split('/').next().filter(|s| !s.is_empty()).ok_or_else(|| SignalError::BadUrl(url.into()))?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>().map_err(|_| SignalError::BadUrl(url.into()))?,
        ),
        _ => (hostport.trim_start_matches('[').trim_end_matches(']').to_string(), if secure { 443 } else { 80 }),
    };
    let addr = format!("{host}:{port}");
    let tcp = tokio::time::timeout(std::time::Duration::from_secs(10), TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| SignalError::Unreachable {
            addr: addr.clone(),
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out after 10 s"),
        })?
        .map_err(|source| SignalError::Unreachable { addr: addr.clone(), source })?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if secure {
        let cfg = client_tls_config(tls)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| SignalError::Tls { host: host.clone(), reason: e.to_string() })?;
        let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| SignalError::Tls { host: host.clone(), reason: e.to_string() })?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| SignalError::Handshake { url: url.into(), reason: e.to_string() })?;

    let (out_tx, mut out_rx) = mpsc::channel::<ClientMsg>(256);
    let (in_tx, in_rx) = mpsc::channel::<SignalEvent>(1024);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        // confab-signal pings every 10 s: a link silent for longer than this is dead even if
        // TCP has not noticed (a network that vanished without a reset), and the call should
        // start reconnecting now rather than after TCP's minutes of retries.
        let mut last_heard = tokio::time::Instant::now();
        let mut check = tokio::time::interval(SILENCE_CHECK);
        let reason = loop {
            tokio::select! {
                _ = check.tick() => {
                    if last_heard.elapsed() >= MAX_SILENCE {
                        break Some(format!("nothing from the server for {} s", MAX_SILENCE.as_secs()));
                    }
                    // Our own ping: a reply counts as life even from a server that does not ping.
                    if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                        break Some(format!("send failed: {e}"));
                    }
                }
                out = out_rx.recv() => match out {
                    Some(m) => {
                        if let Err(e) = sink.send(Message::text(encode(&m))).await {
                            break Some(format!("send failed: {e}"));
                        }
                    }
                    None => {
                        // The call is done with us: close politely.
                        let _ = sink.close().await;
                        return;
                    }
                },
                frame = stream.next() => match frame.inspect(|_| last_heard = tokio::time::Instant::now()) {
                    Some(Ok(Message::Text(t))) => match decode_server(t.as_bytes()) {
                        Ok(m) => {
                            if in_tx.send(SignalEvent::Msg(m)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => warn!(error = %e, "server sent a message we do not understand"),
                    },
                    Some(Ok(Message::Close(f))) => break f.map(|f| f.reason.to_string()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break None,
                },
            }
        };
        debug!(?reason, "signaling connection ended");
        let _ = in_tx.send(SignalEvent::Closed(reason)).await;
    });
    Ok((out_tx, in_rx))
}

fn client_tls_config(tls: &TlsOptions) -> Result<rustls::ClientConfig, SignalError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(pem) = &tls.extra_ca_pem {
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            let cert = cert.map_err(|e| SignalError::BadCa { path: "(pem)".into(), reason: e.to_string() })?;
            roots.add(cert).map_err(|e| SignalError::BadCa { path: "(pem)".into(), reason: e.to_string() })?;
            n += 1;
        }
        if n == 0 {
            return Err(SignalError::BadCa { path: "(pem)".into(), reason: "no certificate in it".into() });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SignalError::Tls { host: String::new(), reason: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
