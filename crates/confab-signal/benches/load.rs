//! Signaling load benchmark. Starts the real `confab-signal` binary, opens N WebSocket
//! clients in N/2 rooms on loopback, has each pair relay `signal` messages to each other at a
//! fixed total rate, and prints: connections held, messages/s, relay latency p50/p99, server
//! CPU seconds per relayed message and server RSS per idle connection.
//!
//! `cargo bench -p confab-signal --bench load -- [--clients 2000] [--rate 20000] [--secs 10]`
//!
//! Figures, not assertions. The client runs on the same 2 cores as the server, so the
//! latency includes the client's own scheduling.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_proto::{decode_server, ServerMsg, SignalData};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

struct Args {
    clients: usize,
    rate: f64,
    secs: f64,
    workers: String,
}

fn args() -> Args {
    let mut a = Args { clients: 2000, rate: 20_000.0, secs: 10.0, workers: "0".into() };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let val = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--clients" => a.clients = val.parse().expect("--clients N"),
            "--rate" => a.rate = val.parse().expect("--rate MSG_PER_SEC"),
            "--secs" => a.secs = val.parse().expect("--secs SECONDS"),
            "--workers" => a.workers = val,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a.clients = (a.clients / 2).max(1) * 2;
    a
}

struct Proc {
    child: Child,
    page_kib: u64,
    ticks: u64,
}

impl Proc {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| 4 * self.page_kib)
    }
    /// (user, system) CPU seconds so far.
    fn cpu_secs(&self) -> (f64, f64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split(' ').collect();
        let (utime, stime): (u64, u64) = (f[11].parse().unwrap(), f[12].parse().unwrap());
        (utime as f64 / self.ticks as f64, stime as f64 / self.ticks as f64)
    }
}

async fn metrics(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    let mut s = String::new();
    tcp.read_to_string(&mut s).await.unwrap();
    s
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' '))).unwrap().trim().parse().unwrap()
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let a = args();
    confab_signal::raise_fd_limit();
    let bin = env!("CARGO_BIN_EXE_confab-signal");
    let mut child = Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "100000",
            "--rate-burst",
            "1000",
            "--rate-per-sec",
            "1000",
            "--workers",
            &a.workers,
        ])
        .env("CONFAB_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start confab-signal");
    let line = BufReader::new(child.stdout.take().unwrap()).lines().next().unwrap().unwrap();
    let url = line.strip_prefix("confab-signal listening on ").unwrap().to_string();
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws").to_string();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let page_kib = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64 / 1024;
    let server = Proc { child, page_kib, ticks };

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run(a, url, addr, server));
}

async fn run(a: Args, url: String, addr: String, mut server: Proc) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = server.rss_kib();
    println!(
        "confab-signal load: {} clients in {} rooms, {} msg/s for {} s (server pid {})",
        a.clients,
        a.clients / 2,
        a.rate,
        a.secs,
        server.child.id()
    );

    // Connect and join, 64 at a time. Even clients join first; their partner second.
    let t = Instant::now();
    let mut clients = Vec::with_capacity(a.clients);
    for chunk in (0..a.clients).collect::<Vec<_>>().chunks(64) {
        let mut set = Vec::new();
        for &i in chunk {
            let url = url.clone();
            set.push(tokio::spawn(async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("connect");
                ws.send(Message::text(
                    json!({"type":"join","room":format!("room-{}", i / 2),"name":format!("c{i}")}).to_string(),
                ))
                .await
                .unwrap();
                let peers = loop {
                    if let Some(Ok(Message::Text(t))) = ws.next().await {
                        if let Ok(ServerMsg::Joined { peers, .. }) = decode_server(t.as_bytes()) {
                            break peers;
                        }
                    }
                };
                (i, ws, peers.first().map(|p| p.peer_id.clone()))
            }));
        }
        for h in set {
            clients.push(h.await.unwrap());
        }
    }
    // The first of each pair learns its partner from peer_joined.
    let mut paired = Vec::with_capacity(a.clients);
    for (i, mut ws, partner) in clients {
        let partner = match partner {
            Some(p) => p,
            None => loop {
                if let Some(Ok(Message::Text(t))) = ws.next().await {
                    if let Ok(ServerMsg::PeerJoined { peer }) = decode_server(t.as_bytes()) {
                        break peer.peer_id;
                    }
                }
            },
        };
        paired.push((i, ws, partner));
    }
    println!("  connected and joined in {:.2} s", t.elapsed().as_secs_f64());

    // Idle memory: let the allocator settle, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = server.rss_kib();
    let m = metrics(&addr).await;
    let held = metric(&m, "confab_connections");
    let per_conn_kib = (rss_idle.saturating_sub(rss_before)) as f64 / a.clients as f64;

    // Relay: each client sends to its partner every N/rate seconds, phases spread evenly.
    let period = Duration::from_secs_f64(a.clients as f64 / a.rate);
    let warmup = Duration::from_secs(2);
    let total = warmup + Duration::from_secs_f64(a.secs);
    let epoch = Instant::now();
    let start_barrier = Arc::new(Barrier::new(a.clients + 1));
    let mut tasks = Vec::new();
    for (i, ws, partner) in paired {
        let barrier = start_barrier.clone();
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let offset = period.mul_f64(i as f64 / a.clients as f64);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut lat_us: Vec<u32> = Vec::new();
            let mut sent = 0u64;
            barrier.wait().await;
            let deadline = tokio::time::Instant::now() + total;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = tick.tick() => {
                        let stamp = epoch.elapsed().as_micros() as u64;
                        let msg = json!({"type":"signal","to":partner,"data":{"candidate":{
                            "candidate":"candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
                            "sdpMid":"0","sdpMLineIndex":0,"usernameFragment":stamp.to_string()}}});
                        if tx.send(Message::text(msg.to_string())).await.is_err() { break; }
                        sent += 1;
                    }
                    m = rx.next() => match m {
                        Some(Ok(Message::Text(t))) => {
                            if let Ok(ServerMsg::Signal { data: SignalData::Candidate(Some(c)), .. }) = decode_server(t.as_bytes()) {
                                let stamp: u64 = c.username_fragment.unwrap().parse().unwrap();
                                let now = epoch.elapsed().as_micros() as u64;
                                if Duration::from_micros(stamp) > warmup {
                                    lat_us.push(now.saturating_sub(stamp) as u32);
                                }
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
            (lat_us, sent, tx.reunite(rx).ok())
        }));
    }
    start_barrier.wait().await;
    tokio::time::sleep(warmup).await;
    let cpu0 = server.cpu_secs();
    let relayed0 = metric(&metrics(&addr).await, "confab_signals_relayed_total");
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(a.secs)).await;
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = server.cpu_secs();
    let relayed1 = metric(&metrics(&addr).await, "confab_signals_relayed_total");
    let rss_busy = server.rss_kib();

    let mut lat = Vec::new();
    let mut sent = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (l, s, ws) = t.await.unwrap();
        lat.extend(l);
        sent += s;
        keep.push(ws);
    }
    lat.sort_unstable();
    let relayed = relayed1 - relayed0;
    let (user, sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let cpu = user + sys;
    let errors = metric(&metrics(&addr).await, "confab_errors_total{code=\"rate_limited\"}");

    println!("  connections held          {held:.0} of {}", a.clients);
    println!("  messages relayed/s        {:.0} (target rate {:.0}; {} sent in all)", relayed / window, a.rate, sent);
    println!(
        "  relay latency             p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} samples)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        lat.len()
    );
    println!(
        "  server CPU per message    {:.2} us ({:.2} CPU-s over {:.1} s = {:.0}% of one core)",
        cpu / relayed * 1e6,
        cpu,
        window,
        cpu / window * 100.0
    );
    println!(
        "    of which user / kernel  {:.2} us / {:.2} us (the kernel part is mostly loopback TCP send+receive)",
        user / relayed * 1e6,
        sys / relayed * 1e6
    );
    println!(
        "  server RSS                {} KiB before, {} KiB idle with clients, {} KiB under load",
        rss_before, rss_idle, rss_busy
    );
    println!("  server RSS per idle conn  {per_conn_kib:.2} KiB");
    println!("  rate_limited errors       {errors:.0}");
    println!(
        "{}",
        json!({"type":"signal_load","clients":a.clients,"held":held,"rate_target":a.rate,
               "msgs_per_s":relayed / window,"p50_ms":percentile(&lat, 0.5),"p99_ms":percentile(&lat, 0.99),
               "cpu_us_per_msg":cpu / relayed * 1e6,"rss_kib_per_idle_conn":per_conn_kib})
    );
    drop(keep);
    let _ = server.child.kill();
    let _ = server.child.wait();
}
