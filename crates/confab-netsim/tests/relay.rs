//! The relay over real loopback sockets, in front of an echo server standing in for TURN.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confab_netsim::{Impairment, Relay, RelayHandle};
use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};

const PATIENCE: Duration = Duration::from_secs(5);

/// Echoes every datagram; returns its address and the source addresses it has seen.
async fn echo() -> (SocketAddr, Arc<Mutex<Vec<SocketAddr>>>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, src)) = sock.recv_from(&mut buf).await {
            seen2.lock().unwrap().push(src);
            let _ = sock.send_to(&buf[..n], src).await;
        }
    });
    (addr, seen)
}

async fn setup(imp: Impairment) -> (Relay, RelayHandle, Arc<Mutex<Vec<SocketAddr>>>) {
    let (upstream, seen) = echo().await;
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), upstream, imp).await.unwrap();
    let handle = relay.handle();
    (relay, handle, seen)
}

async fn client(relay: &Relay) -> UdpSocket {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(relay.local_addr()).await.unwrap();
    sock
}

async fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let n = timeout(PATIENCE, sock.recv(&mut buf)).await.expect("no reply in time").unwrap();
    buf[..n].to_vec()
}

/// Polls the relay's counters until `done` holds: they, not timers, say when packets are settled.
async fn settle(handle: &RelayHandle, done: impl Fn(&confab_netsim::Stats) -> bool) {
    let start = Instant::now();
    while !done(&handle.stats()) {
        assert!(start.elapsed() < PATIENCE, "relay did not settle: {:?}", handle.stats());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn packets_pass_in_order() {
    let (relay, handle, seen) = setup(Impairment::default()).await;
    let c = client(&relay).await;
    for i in 0..50u32 {
        c.send(&i.to_be_bytes()).await.unwrap();
    }
    for i in 0..50u32 {
        assert_eq!(recv(&c).await, i.to_be_bytes());
    }
    let s = handle.stats();
    assert_eq!((s.to_upstream.forwarded, s.to_client.forwarded, s.flows), (50, 50, 1));
    // The upstream sees the relay's per-flow socket, not the client.
    assert!(seen.lock().unwrap().iter().all(|a| *a != c.local_addr().unwrap()));
}

#[tokio::test]
async fn loss_applies_per_direction() {
    let (relay, handle, _) = setup(Impairment { loss: 0.5, ..Default::default() }).await;
    let c = client(&relay).await;
    let mut received = 0;
    // Bursts of 100, each settled before the next, so loopback socket buffers never overflow.
    for burst in 1..=20u64 {
        for _ in 0..100 {
            c.send(b"x").await.unwrap();
        }
        settle(&handle, |s| {
            let up = s.to_upstream.forwarded + s.to_upstream.dropped;
            up == burst * 100 && s.to_client.forwarded + s.to_client.dropped == s.to_upstream.forwarded
        })
        .await;
        while received < handle.stats().to_client.forwarded {
            recv(&c).await;
            received += 1;
        }
    }
    let s = handle.stats();
    let up = s.to_upstream.forwarded as f64 / 2000.0;
    let down = s.to_client.forwarded as f64 / s.to_upstream.forwarded as f64;
    assert!((0.44..=0.56).contains(&up), "{s:?}");
    assert!((0.40..=0.60).contains(&down), "{s:?}");
    assert!((300..=700).contains(&received), "round trip should keep about a quarter, got {received}");
}

#[tokio::test]
async fn delay_holds_packets_back() {
    let (relay, handle, _) = setup(Impairment { delay_ms: 80, ..Default::default() }).await;
    let c = client(&relay).await;
    let sent = Instant::now();
    c.send(b"ping").await.unwrap();
    assert_eq!(recv(&c).await, b"ping");
    let rtt = sent.elapsed();
    // Both directions are delayed, so the echo takes two one-way delays.
    assert!(rtt >= Duration::from_millis(160), "rtt {rtt:?}");
    assert!(rtt < Duration::from_secs(2), "rtt {rtt:?}");

    // Jitter larger than the spacing of packets reorders them, like netem.
    handle.set_impairment(Impairment { loss: 0.0, delay_ms: 30, jitter_ms: 25, ..Default::default() });
    for i in 0..100u32 {
        c.send(&i.to_be_bytes()).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..100 {
        got.push(u32::from_be_bytes(recv(&c).await.try_into().unwrap()));
    }
    assert!(got.windows(2).any(|w| w[0] > w[1]), "no reordering: {got:?}");
    got.sort();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn cut_kills_old_flows_only() {
    let (relay, handle, seen) = setup(Impairment::default()).await;
    let old = client(&relay).await;
    old.send(b"before").await.unwrap();
    assert_eq!(recv(&old).await, b"before");

    handle.cut();
    old.send(b"after").await.unwrap();
    let new = client(&relay).await;
    new.send(b"fresh").await.unwrap();
    assert_eq!(recv(&new).await, b"fresh");
    // The relay reads its listen socket in order, so the old client's packet was handled before the new
    // one's echo came back: nothing arriving now means it was blackholed, not that it is late.
    let mut buf = [0u8; 64];
    assert!(old.try_recv(&mut buf).is_err(), "cut flow still delivers");
    let s = handle.stats();
    assert_eq!((s.flows, s.cut_flows, s.to_upstream.dropped), (1, 1, 1));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0], seen[1], "a new flow must look like a new client to the upstream");
}

#[tokio::test]
async fn dropping_the_relay_frees_its_port() {
    let (relay, _, _) = setup(Impairment::default()).await;
    let addr = relay.local_addr();
    let c = client(&relay).await;
    c.send(b"x").await.unwrap();
    recv(&c).await;
    drop(relay);
    // The tasks end asynchronously; once they have, the listen socket is closed and the port is free.
    let start = Instant::now();
    while UdpSocket::bind(addr).await.is_err() {
        assert!(start.elapsed() < PATIENCE, "relay tasks still hold {addr}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn rate_limits_like_a_bottleneck() {
    // The upstream is a sink this time, so only the client-to-upstream direction carries traffic.
    let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let imp = Impairment { rate_kbps: 400, ..Default::default() };
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), sink.local_addr().unwrap(), imp).await.unwrap();
    let handle = relay.handle();
    // (packets, bytes, last arrival)
    let got = Arc::new(Mutex::new((0u64, 0u64, None::<Instant>)));
    let got2 = got.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok(n) = sink.recv(&mut buf).await {
            let mut g = got2.lock().unwrap();
            *g = (g.0 + 1, g.1 + n as u64, Some(Instant::now()));
        }
    });

    // About 2 Mbit/s, five times the bottleneck: a 1200-byte packet every 4.8 ms for one second.
    const PACKETS: u64 = 208;
    let c = client(&relay).await;
    let mut tick = tokio::time::interval(Duration::from_micros(4800));
    let start = Instant::now();
    for _ in 0..PACKETS {
        tick.tick().await;
        c.send(&[0u8; 1200]).await.unwrap();
    }
    settle(&handle, |s| s.to_upstream.forwarded + s.to_upstream.dropped == PACKETS).await;
    let forwarded = handle.stats().to_upstream.forwarded;
    let waited = Instant::now();
    while got.lock().unwrap().0 < forwarded {
        assert!(waited.elapsed() < PATIENCE, "sink got {:?} of {forwarded}", got.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let (_, bytes, last) = *got.lock().unwrap();
    let kbps = bytes as f64 * 8.0 / (last.unwrap() - start).as_secs_f64() / 1000.0;
    let s = handle.stats();
    assert!((250.0..=550.0).contains(&kbps), "{kbps:.0} kbit/s through a 400 kbit/s bottleneck; {s:?}");
    // The excess did not queue up without bound: the bottleneck dropped it.
    assert!(s.to_upstream.dropped > 0, "{s:?}");
    assert_eq!(s.to_client, Default::default());
}
