//! The built-in signaling server: `confab-signal` running inside the app, so that two app
//! windows on one machine (or two desktops on a LAN) can call with no server set up. The
//! first app to need it binds port 8787; a second app on the same machine finds it there
//! and uses it.
//!
//! Its doors: web pages are refused (the library's default `allow_origins`: a page in any
//! browser tab could otherwise reach 127.0.0.1 and join a room), and when hosting on the
//! network every connection from another machine needs the access code that the invite
//! link carries (`?code=` in the server URL).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use confab_signal::{Config, Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
pub struct BuiltIn {
    running: Option<Running>,
}

struct Running {
    handle: ServerHandle,
    /// Hosting on the network, with what others must bring: a new code each time hosting
    /// starts, so that old links stop working when hosting stops. `None`: loopback only.
    code: Option<String>,
}

/// Where the built-in server can be reached.
pub struct Endpoint {
    /// For this app: loopback.
    pub url: String,
    /// When hosting on the network: for the others, one URL per network address, each with
    /// the access code.
    pub share: Vec<String>,
}

/// Access codes people can read out: no 0/O or 1/I/L. 8 of 31 symbols is ~40 bits, and
/// guessing runs through TCP handshakes on a LAN while the host is in a call.
fn new_code() -> String {
    const SYMBOLS: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
    let pick = |_| SYMBOLS[rand::random_range(0..SYMBOLS.len())] as char;
    let a: String = (0..4).map(pick).collect();
    let b: String = (0..4).map(pick).collect();
    format!("{a}-{b}")
}

fn port() -> u16 {
    std::env::var("CONFAB_BUILTIN_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8787)
}

impl BuiltIn {
    /// Makes sure a server is there, bound to the network when hosting.
    pub async fn ensure(&mut self, on_network: bool) -> Result<Endpoint, String> {
        let port = port();
        if self.running.as_ref().is_some_and(|r| r.code.is_some() != on_network) {
            self.stop().await;
        }
        if self.running.is_none() {
            let ip: IpAddr = if on_network { [0, 0, 0, 0].into() } else { [127, 0, 0, 1].into() };
            let code = on_network.then(new_code);
            let cfg = Config { listen: SocketAddr::new(ip, port), access_code: code.clone(), ..Config::default() };
            match Server::bind(cfg).await {
                Ok(s) => self.running = Some(Running { handle: s.spawn(), code }),
                Err(e) => {
                    // Another confab on this machine may already run it: fine for a call on
                    // this machine, but then we cannot host, and must say so rather than
                    // hand out an address that leads nowhere.
                    let other_confab = is_confab(port).await;
                    tracing::warn!(error = %e, other_confab, "cannot start the built-in server");
                    return match (other_confab, on_network) {
                        (true, false) => Ok(Endpoint { url: format!("ws://127.0.0.1:{port}/ws"), share: Vec::new() }),
                        (true, true) => Err(format!(
                            "Cannot host on your network: another confab on this computer already uses port {port}. \
                             Close it, or join its call instead."
                        )),
                        (false, _) => Err(format!(
                            "Cannot start the built-in server: port {port} is in use by another program. \
                             Close that program, or enter a server address instead."
                        )),
                    };
                }
            }
        }
        let share = match self.running.as_ref().and_then(|r| r.code.as_ref()) {
            Some(code) => lan_addresses().iter().map(|ip| format!("ws://{ip}:{port}/ws?code={code}")).collect(),
            None => Vec::new(),
        };
        Ok(Endpoint { url: format!("ws://127.0.0.1:{port}/ws"), share })
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.handle.shutdown().await;
        }
    }
}

/// Whether a confab-signal answers /healthz on this machine's `port`.
async fn is_confab(port: u16) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        Some(buf.starts_with("HTTP/1.1 200") && buf.ends_with("ok\n"))
    };
    tokio::time::timeout(Duration::from_secs(2), probe).await.ok().flatten().unwrap_or(false)
}

/// This machine's non-loopback IPv4 addresses.
fn lan_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs gives a list we only read and then free.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && (*a).sa_family as i32 == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_link_local() {
                    out.push(IpAddr::V4(ip));
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}
