//! The built-in signaling server: `confab-signal` running inside the app, so that two app
//! windows on one machine (or two desktops on a LAN) can call with no server set up. The
//! first app to need it binds port 8787; a second app on the same machine finds it there
//! and uses it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use confab_signal::{Config, Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
pub struct BuiltIn {
    running: Option<(ServerHandle, bool)>,
}

fn port() -> u16 {
    std::env::var("CONFAB_BUILTIN_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8787)
}

impl BuiltIn {
    /// Makes sure a server is there; returns its WebSocket URL and, when hosting on the
    /// network, the address others should use.
    pub async fn ensure(&mut self, on_network: bool) -> Result<(String, Option<String>), String> {
        let port = port();
        if let Some((_, net)) = &self.running {
            if *net != on_network {
                self.stop().await;
            }
        }
        if self.running.is_none() {
            let ip: IpAddr = if on_network { [0, 0, 0, 0].into() } else { [127, 0, 0, 1].into() };
            let cfg = Config { listen: SocketAddr::new(ip, port), ..Config::default() };
            match Server::bind(cfg).await {
                Ok(s) => self.running = Some((s.spawn(), on_network)),
                Err(e) => {
                    // Another confab on this machine may already host it.
                    if is_confab(port).await {
                        return Ok((format!("ws://127.0.0.1:{port}/ws"), None));
                    }
                    return Err(format!(
                        "Cannot start the built-in server: {e}. Another program uses port {port}; enter a server address instead."
                    ));
                }
            }
        }
        let share = on_network.then(|| {
            let ips = lan_addresses();
            if ips.is_empty() {
                "no network address found".to_string()
            } else {
                ips.iter().map(|ip| format!("ws://{ip}:{port}/ws")).collect::<Vec<_>>().join("  or  ")
            }
        });
        Ok((format!("ws://127.0.0.1:{port}/ws"), share))
    }

    pub async fn stop(&mut self) {
        if let Some((h, _)) = self.running.take() {
            h.shutdown().await;
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
