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
    /// The server answered the upgrade with an HTTP error (a web origin it does not allow,
    /// a missing or wrong access code); `message` is its own explanation.
    #[error("the server refused the connection (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    /// A `wss://` server whose certificate no trusted authority signed (self-signed, as
    /// `confab-signal --self-signed` makes), or not the one pinned for it. The user may
    /// trust it after comparing the fingerprint with what the server printed.
    #[error("the certificate of {host} is not trusted ({reason}); its SHA-256 fingerprint is {fingerprint}")]
    Untrusted { host: String, fingerprint: String, reason: String },
}

/// How to trust a wss:// server.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Extra PEM certificate(s) to trust besides the system's roots, e.g. the one
    /// `confab-signal --self-signed --write-cert` wrote (which pins that server).
    pub extra_ca_pem: Option<String>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (`AB:CD:...`, as
    /// `confab-signal` prints it), whoever signed it and whatever names it carries: what
    /// the user accepted on first use. Any other certificate is refused.
    pub pinned_sha256: Option<String>,
}

impl TlsOptions {
    pub fn from_file(path: &std::path::Path) -> Result<Self, SignalError> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| SignalError::BadCa { path: path.display().to_string(), reason: e.to_string() })?;
        Ok(TlsOptions { extra_ca_pem: Some(pem), pinned_sha256: None })
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
        let seen = Arc::new(std::sync::Mutex::new(None));
        let cfg = client_tls_config(tls, seen.clone())?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| SignalError::Tls { host: host.clone(), reason: e.to_string() })?;
        let s = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.map_err(|e| {
            match seen.lock().expect("certificate slot").take() {
                Some((fingerprint, reason)) => SignalError::Untrusted { host: host.clone(), fingerprint, reason },
                None => SignalError::Tls { host: host.clone(), reason: e.to_string() },
            }
        })?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => SignalError::Refused {
            status: r.status().as_u16(),
            message: r
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| r.status().canonical_reason().unwrap_or("refused").to_string()),
        },
        e => SignalError::Handshake { url: url.into(), reason: e.to_string() },
    })?;

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

/// Where a failed certificate check leaves the certificate's fingerprint and why it failed.
type SeenCert = Arc<std::sync::Mutex<Option<(String, String)>>>;

fn client_tls_config(tls: &TlsOptions, seen: SeenCert) -> Result<rustls::ClientConfig, SignalError> {
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
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| SignalError::Tls { host: String::new(), reason: e.to_string() })?;
    let verifier = Arc::new(CertCheck {
        webpki,
        pinned: tls.pinned_sha256.as_deref().map(normalize_fingerprint),
        algorithms: provider.signature_verification_algorithms,
        seen,
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SignalError::Tls { host: String::new(), reason: e.to_string() })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// SHA-256 of a DER certificate as `AB:CD:...`, the form `confab-signal`, browsers and
/// `openssl x509 -fingerprint -sha256` show.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// A fingerprint as typed or pasted (any case, with or without colons) in the canonical form.
pub fn normalize_fingerprint(s: &str) -> String {
    let hex: Vec<char> = s.chars().filter(char::is_ascii_hexdigit).map(|c| c.to_ascii_uppercase()).collect();
    hex.chunks(2).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join(":")
}

/// The usual check (system roots plus any extra CA), or, for a pinned server, exactly the
/// pinned certificate. A refused certificate's fingerprint is kept, so that the user can be
/// shown what to compare. The handshake's signatures are verified either way: a pin says
/// which key to trust, not that anyone may speak for it.
#[derive(Debug)]
struct CertCheck {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Option<String>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
    seen: SeenCert,
}

impl rustls::client::danger::ServerCertVerifier for CertCheck {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        let refused = |reason: String, e: rustls::Error| {
            *self.seen.lock().expect("certificate slot") = Some((fp.clone(), reason));
            Err(e)
        };
        match &self.pinned {
            Some(pin) if *pin == fp => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            Some(_) => refused(
                "it is not the certificate trusted for this server before".into(),
                rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure),
            ),
            None => match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Ok(v) => Ok(v),
                Err(e @ rustls::Error::InvalidCertificate(_)) => refused(e.to_string(), e),
                Err(e) => Err(e),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
