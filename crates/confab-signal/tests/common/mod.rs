//! A real tokio-tungstenite client for the integration tests, over ws:// or wss://.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use confab_proto::{decode_server, PeerId, PeerInfo, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub const WAIT: Duration = Duration::from_secs(5);

pub struct Client {
    pub ws: WebSocketStream<Box<dyn Io>>,
}

/// What the next frame was, for tests about how connections end.
#[derive(Debug)]
pub enum Next {
    Msg(ServerMsg),
    Closed(Option<CloseFrame>),
}

pub async fn server(cfg: confab_signal::Config) -> confab_signal::ServerHandle {
    let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ..cfg };
    confab_signal::Server::bind(cfg).await.unwrap().spawn()
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Self::try_connect(url, None).await.expect("connect")
    }

    /// Connects to `ws://host:port/ws` or `wss://localhost:port/ws`, trusting only `ca_pem`.
    pub async fn try_connect(url: &str, ca_pem: Option<&str>) -> anyhow::Result<Client> {
        let (tls, rest) = match url.split_once("://") {
            Some(("ws", rest)) => (false, rest),
            Some(("wss", rest)) => (true, rest),
            _ => anyhow::bail!("bad url {url}"),
        };
        let hostport = rest.split('/').next().unwrap();
        let host = hostport.rsplit_once(':').unwrap().0;
        let port = hostport.rsplit_once(':').unwrap().1;
        let tcp = TcpStream::connect(("127.0.0.1", port.parse::<u16>()?)).await?;
        let stream: Box<dyn Io> = if tls {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut ca_pem.expect("wss needs a CA").as_bytes()) {
                roots.add(cert?)?;
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.to_string())?;
            Box::new(tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await?)
        } else {
            Box::new(tcp)
        };
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        Ok(Client { ws })
    }

    pub async fn send(&mut self, v: serde_json::Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next protocol message or the close, within [`WAIT`]. Pings are answered by
    /// tungstenite and skipped here.
    pub async fn next(&mut self) -> Next {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next()).await.expect("no frame within 5 s");
            match frame {
                Some(Ok(Message::Text(t))) => return Next::Msg(decode_server(t.as_bytes()).expect("valid server msg")),
                Some(Ok(Message::Close(f))) => return Next::Closed(f),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Next::Closed(None),
            }
        }
    }

    pub async fn recv(&mut self) -> ServerMsg {
        match self.next().await {
            Next::Msg(m) => m,
            Next::Closed(f) => panic!("connection closed: {f:?}"),
        }
    }

    /// Receives until a message matches `f`, failing on anything else in between.
    pub async fn expect(&mut self, what: &str, f: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
        let m = self.recv().await;
        assert!(f(&m), "expected {what}, got {m:?}");
        m
    }

    pub async fn expect_error(&mut self, code: &str) -> String {
        match self.recv().await {
            ServerMsg::Error { code: c, message } => {
                assert_eq!(c.as_str(), code, "message: {message}");
                message
            }
            m => panic!("expected error {code}, got {m:?}"),
        }
    }

    pub async fn join(&mut self, room: &str, name: &str) -> (PeerId, Vec<PeerInfo>) {
        let (id, peers, _) = self.join_with(serde_json::json!({"type":"join","room":room,"name":name})).await;
        (id, peers)
    }

    /// Sends a `join` and returns what `joined` said: id, peers and resume token.
    pub async fn join_with(&mut self, join: serde_json::Value) -> (PeerId, Vec<PeerInfo>, String) {
        self.send(join).await;
        match self.recv().await {
            ServerMsg::Joined { peer_id, peers, resume_token, .. } => (peer_id, peers, resume_token),
            m => panic!("expected joined, got {m:?}"),
        }
    }

    /// A round trip through the server: a chat that this client must see echoed next. Proves
    /// that nothing else was queued for this client before it.
    pub async fn barrier(&mut self, tag: &str) {
        self.send(serde_json::json!({"type":"chat","text":tag})).await;
        self.expect(&format!("chat echo {tag}"), |m| matches!(m, ServerMsg::Chat { text, .. } if text == tag)).await;
    }

    /// Waits for the server to close this connection; returns the close frame.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        loop {
            match self.next().await {
                Next::Closed(f) => return f,
                Next::Msg(_) => continue,
            }
        }
    }
}

pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut buf)).await.unwrap().unwrap();
    let status = buf.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of one series in a Prometheus exposition.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}
