//! The page's frame stream: one WebSocket on loopback that carries every tile's frames to the
//! page, and the page's "drawn" acks back. A Tauri channel costs each frame a script
//! evaluation, an IPC fetch through the app's main thread and a copy at each hop, and each ack
//! an `invoke`; here a frame is one binary message that WebKit's network process hands to the
//! page, and the app's main thread never sees it.
//!
//! Closed to other pages and processes: the URL holds a secret made at startup that only our
//! page learns (through `frame_stream`, an app command), and a browser page, which would send
//! its own `Origin`, is refused even with it. One page at a time: a new connection (the page
//! reloaded) replaces the old.
//!
//! Page to app, text messages: `format i420|rgba` (how it draws, see frames.rs), and
//! `drawn <tile>` after the page drew (or dropped) that tile's frame; nothing more is sent
//! for a tile until then.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::frames::{FrameHub, PixelFormat};

/// How long a connection may take to become a WebSocket.
const HANDSHAKE_TIME: Duration = Duration::from_secs(5);

/// Origins our own page has: WebKitGTK's custom scheme, and the form Tauri uses elsewhere.
const APP_ORIGINS: [&str; 2] = ["tauri://localhost", "http://tauri.localhost"];

/// The running stream server; it stops (and drops its page) when this is dropped.
pub struct FrameStream {
    pub url: String,
    stop: CancellationToken,
}

impl Drop for FrameStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FrameStream {
    /// Listens on a free loopback port. Must run inside the app's tokio runtime.
    pub async fn start(hub: Arc<FrameHub>) -> std::io::Result<FrameStream> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let secret: String = {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..32).map(|_| format!("{:x}", rng.random_range(0..16u8))).collect()
        };
        let url = format!("ws://{}/frames/{secret}", listener.local_addr()?);
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, format!("/frames/{secret}"), hub, stop.clone()));
        Ok(FrameStream { url, stop })
    }
}

async fn accept_loop(listener: TcpListener, path: String, hub: Arc<FrameHub>, stop: CancellationToken) {
    let path: Arc<str> = path.into();
    // The page's connection; a new one (the page reloaded) replaces it.
    let page = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, say: try again in a moment rather than spin.
                    tracing::warn!(error = %e, "frame stream: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (path, hub, page, stop) = (path.clone(), hub.clone(), page.clone(), stop.clone());
        // Each handshake on its own task, with a deadline: a local process that connects and
        // says nothing must not keep the page out.
        tokio::spawn(async move {
            let Ok(Some(ws)) = tokio::time::timeout(HANDSHAKE_TIME, handshake(tcp, &path)).await else { return };
            let token = {
                let mut current = page.lock().unwrap();
                // What the old connection had in flight will never be acked.
                current.cancel();
                *current = stop.child_token();
                current.clone()
            };
            hub.page_gone();
            serve_page(ws, hub, token).await;
        });
    }
    page.lock().unwrap().cancel();
}

async fn handshake(tcp: TcpStream, path: &str) -> Option<tokio_tungstenite::WebSocketStream<TcpStream>> {
    // The callback's type is tungstenite's; its large error is built once per refusal.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match admit(req.uri().path(), req.headers().get("origin").and_then(|o| o.to_str().ok()), path) {
            Ok(()) => Ok(resp),
            Err(why) => {
                tracing::warn!(why, "frame stream: connection refused");
                let mut r = ErrorResponse::new(Some(why.to_string()));
                *r.status_mut() = StatusCode::FORBIDDEN;
                Err(r)
            }
        }
    };
    tokio_tungstenite::accept_hdr_async(tcp, check).await.ok()
}

/// Whether a connection for `path` with `origin` is our page.
fn admit(path: &str, origin: Option<&str>, ours: &str) -> Result<(), &'static str> {
    // Same length, compared in full: the time taken says nothing about the secret.
    let same = path.len() == ours.len() && path.bytes().zip(ours.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if !same {
        return Err("wrong path or secret");
    }
    match origin {
        Some(o) if !APP_ORIGINS.contains(&o) => Err("not the app's page"),
        _ => Ok(()),
    }
}

async fn serve_page(ws: tokio_tungstenite::WebSocketStream<TcpStream>, hub: Arc<FrameHub>, stop: CancellationToken) {
    let (mut tx, mut rx) = ws.split();
    loop {
        while let Some(frame) = hub.take_ready() {
            if tx.send(Message::Binary(frame.into())).await.is_err() {
                return;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = hub.ready.notified() => {}
            m = rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Some(tile) = t.as_str().strip_prefix("drawn ") {
                        hub.drawn(tile);
                    } else if let Some(f) = t.as_str().strip_prefix("format ").and_then(PixelFormat::parse) {
                        hub.set_format(f);
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    hub.page_gone();
                    return;
                }
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tx.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_page_with_the_secret_gets_in() {
        let ours = "/frames/0123456789abcdef";
        assert!(admit(ours, Some("tauri://localhost"), ours).is_ok());
        assert!(admit(ours, None, ours).is_ok());
        assert!(admit("/frames/0123456789abcdee", Some("tauri://localhost"), ours).is_err());
        assert!(admit("/frames/", None, ours).is_err());
        assert!(admit(ours, Some("http://evil.example"), ours).is_err());
        assert!(admit(ours, Some("null"), ours).is_err());
    }

    fn frame(hub: &FrameHub, tile: &str, n: u32) {
        hub.push(tile, &confab_engine::frame::I420Frame::new(64, 36), Some(n));
    }

    async fn next_frame_no(
        ws: &mut (impl StreamExt<Item = tokio_tungstenite::tungstenite::Result<Message>> + Unpin),
    ) -> u32 {
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .expect("a frame")
            .unwrap()
            .unwrap();
        let b = m.into_data();
        let at = 2 + b[1] as usize + 4;
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// A real WebSocket client on loopback, as the page is: frames come as the page acks them,
    /// and nobody without the secret, or from another origin, gets in.
    #[tokio::test]
    async fn frames_flow_as_the_page_draws_them() {
        let hub = Arc::new(FrameHub::default());
        let stream = FrameStream::start(hub.clone()).await.unwrap();
        let wrong = stream.url.replace("/frames/", "/frames/0");
        assert!(tokio_tungstenite::connect_async(&wrong).await.is_err());
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(stream.url.as_str())
                .unwrap();
        req.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
        assert!(tokio_tungstenite::connect_async(req).await.is_err());

        // Someone connects and says nothing: the page still gets in.
        let addr = stream.url.trim_start_matches("ws://").split('/').next().unwrap().to_string();
        let _silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut ws, _) =
            tokio::time::timeout(std::time::Duration::from_secs(2), tokio_tungstenite::connect_async(&stream.url))
                .await
                .expect("a silent connection kept the page out")
                .unwrap();
        ws.send(Message::text("format rgba")).await.unwrap();
        frame(&hub, "a", 1);
        assert_eq!(next_frame_no(&mut ws).await, 1);
        frame(&hub, "a", 2);
        assert_eq!(next_frame_no(&mut ws).await, 2);
        // Two in flight: of the two that come now, only the newest waits.
        frame(&hub, "a", 3);
        frame(&hub, "a", 4);
        let nothing = tokio::time::timeout(std::time::Duration::from_millis(200), ws.next()).await;
        assert!(nothing.is_err(), "a third frame came before the page drew one");
        ws.send(Message::text("drawn a")).await.unwrap();
        assert_eq!(next_frame_no(&mut ws).await, 4);
        assert_eq!(hub.counts()["a"], (3, 1));

        // The page reloads: the new one gets frames at once, in the format it asks for.
        let (mut again, _) = tokio_tungstenite::connect_async(&stream.url).await.unwrap();
        again.send(Message::text("format i420")).await.unwrap();
        let asked = async {
            while hub.format() != PixelFormat::I420 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), asked).await.expect("the format message is read");
        frame(&hub, "a", 5);
        let m = tokio::time::timeout(std::time::Duration::from_secs(5), again.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(m.into_data()[0], 1, "I420 after the page asked for it");
        drop(stream);
    }
}
