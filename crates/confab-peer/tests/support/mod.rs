//! What the call tests share: `confab-peer` processes whose JSON lines can be watched while
//! they run, a real coturn, and the real `confab-signal` binary (for tests that kill it).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use confab_netsim::{Impairment, Relay};
use serde_json::Value;

pub mod sound;
pub mod xvfb;

pub const PEER: &str = env!("CARGO_BIN_EXE_confab-peer");

/// One call at a time: each test runs real encoders and decoders, and a 2-core machine
/// running several at once would measure CPU starvation, not confab.
pub static ONE_CALL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running `confab-peer`; its stdout lines are collected as they come.
pub struct Peer {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    reader: Option<JoinHandle<()>>,
}

impl Peer {
    /// A peer on loopback at 320x180 with stats lines suppressed, plus `extra` flags.
    pub fn start(url: &str, room: &str, name: &str, extra: &[&str]) -> Peer {
        let mut args = vec!["--server", url, "--room", room, "--name", name, "--bind", "127.0.0.1", "--quiet-stats"];
        if !extra.contains(&"--size") {
            args.extend(["--size", "320x180"]);
        }
        args.extend(extra);
        Peer::spawn(&args)
    }

    pub fn spawn(args: &[&str]) -> Peer {
        let mut cmd = Command::new(PEER);
        cmd.args(args);
        Peer::spawn_command(cmd)
    }

    /// Starts `cmd` (a `confab-peer` command with its arguments and environment).
    pub fn spawn_command(mut cmd: Command) -> Peer {
        // CONFAB_TEST_LOGS=DIR keeps each peer's log (at CONFAB_LOG's level) for a post-mortem.
        let stderr = match std::env::var_os("CONFAB_TEST_LOGS") {
            Some(dir) => {
                let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
                let name = args.windows(2).find(|w| w[0] == "--name").map_or("peer", |w| w[1].as_str());
                let path = std::path::Path::new(&dir).join(format!("{name}-{}.log", std::process::id()));
                Stdio::from(std::fs::File::create(path).expect("create peer log"))
            }
            None => Stdio::null(),
        };
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("start confab-peer");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Peer { child, lines, reader: Some(reader) }
    }

    /// Waits (up to `within`) for a line matching `f`; returns it. Polls what the reader
    /// collected, so it returns as soon as the line is there.
    pub fn wait_for(&self, what: &str, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + within;
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| f(v)) {
                return v.clone();
            }
            assert!(Instant::now() < end, "no {what} within {within:?}; saw: {:?}", self.lines.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the process dies without leaving.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process and returns (exit ok, every line).
    pub fn finish(mut self) -> (bool, Vec<Value>) {
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        (status.success(), lines)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn summary(lines: &[Value]) -> &Value {
    lines.iter().find(|l| l["type"] == "summary").expect("a summary line")
}

pub fn events<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["type"] == kind).collect()
}

/// The summary entry for the peer named `name`.
pub fn peer_in<'a>(lines: &'a [Value], name: &str) -> &'a Value {
    let s = summary(lines);
    s["peers"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no {name} in {s}"))
}

/// A free loopback port (TCP or UDP) at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real coturn on loopback with `use-auth-secret` (coturn's REST credentials).
pub struct Turn {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Turn {
    pub fn start(secret: &str) -> Turn {
        let port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("confab-turn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = "/usr/bin/turnserver";
        assert!(std::path::Path::new(bin).exists(), "coturn is not installed: run scripts/bootstrap");
        // Relay ports a restart can move to: each ICE restart allocates anew.
        let min = 50_000 + (port % 500) * 20;
        let child = Command::new(bin)
            .args(["-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", &min.to_string(), "--max-port", &(min + 19).to_string()])
            .args(["--use-auth-secret", "--static-auth-secret", secret, "--realm", "confab.test"])
            .args(["--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp-relay"])
            .arg("--pidfile")
            .arg(dir.join("turn.pid"))
            .arg("--log-file")
            .arg(dir.join("turn.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver");
        let turn = Turn { child, port, dir };
        turn.wait_ready();
        turn
    }

    /// Ready once it answers a STUN binding request on its port.
    fn wait_ready(&self) {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        // Binding request: type 0x0001, length 0, magic cookie, 12-byte transaction id.
        let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        req.extend_from_slice(b"confabready!");
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        while Instant::now() < end {
            let _ = sock.send_to(&req, ("127.0.0.1", self.port));
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n >= 20 && buf[0] == 0x01 && buf[1] == 0x01 {
                    return;
                }
            }
        }
        panic!("coturn did not answer on port {} within 10 s", self.port);
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The real `confab-signal` binary as its own process, so that a test can kill it.
pub struct SignalProcess {
    child: Child,
    pub port: u16,
}

impl SignalProcess {
    /// Starts it on 127.0.0.1:`port` with `extra` flags; returns once it accepts connections.
    pub fn start(port: u16, extra: &[&str]) -> SignalProcess {
        let bin = std::path::Path::new(PEER).with_file_name("confab-signal");
        assert!(bin.exists(), "{} is missing: build the workspace first (cargo build --workspace)", bin.display());
        let child = Command::new(&bin)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start confab-signal");
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "confab-signal did not listen on {port} within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        SignalProcess { child, port }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// SIGKILL: a crash, no close frames.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SignalProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SECRET: &str = "resilience";

/// coturn, `confab-netsim` in front of it, and a signaling server that hands out the
/// relay's address as the TURN server, all on loopback.
pub struct RelayedSetup {
    rt: tokio::runtime::Runtime,
    pub relay: Relay,
    signal: Option<confab_signal::ServerHandle>,
    _turn: Turn,
}

impl RelayedSetup {
    pub fn start(imp: Impairment) -> RelayedSetup {
        let turn = Turn::start(SECRET);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let relay = rt.block_on(Relay::start("127.0.0.1:0".parse().unwrap(), turn.addr(), imp)).unwrap();
        let ice = confab_signal::IceConfig {
            stun: vec![],
            turn: vec![format!("turn:{}?transport=udp", relay.local_addr())],
            turn_secret: Some(SECRET.into()),
            turn_ttl_s: 600,
        };
        let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse().unwrap(), ice, ..Default::default() };
        let signal = rt.block_on(async { confab_signal::Server::bind(cfg).await.unwrap().spawn() });
        RelayedSetup { rt, relay, signal: Some(signal), _turn: turn }
    }

    pub fn url(&self) -> String {
        self.signal.as_ref().unwrap().ws_url()
    }
}

impl Drop for RelayedSetup {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.signal.take();
    }
}
