//! A user-space UDP impairment relay for tests: the CI kernel has no netem, so a bandwidth
//! bottleneck, loss, delay, jitter and "the NAT binding died" are simulated here, between a client
//! and e.g. a TURN server.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Packets waiting for their delay, per direction; beyond this they are dropped, like a full router queue.
pub const MAX_QUEUED: usize = 10_000;
/// Live client flows (one upstream socket each); packets from further new clients are dropped.
pub const MAX_FLOWS: usize = 1024;
/// The bottleneck's queue, in milliseconds of data at its rate, when [`Impairment::queue_ms`] is 0.
pub const DEFAULT_QUEUE_MS: u32 = 100;

/// Per direction, a packet first passes the bandwidth bottleneck (if `rate_kbps` > 0), then loss,
/// delay and jitter apply to it as it leaves the bottleneck. `Default` is no impairment at all.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Probability in 0..=1 that a packet is dropped.
    pub loss: f64,
    pub delay_ms: u32,
    /// Each packet's delay is `delay_ms` plus a uniform offset in `-jitter_ms..=jitter_ms` (never below 0).
    pub jitter_ms: u32,
    /// Bottleneck rate in kbit/s (of UDP payload), shared by all flows of a direction; 0 = unlimited.
    pub rate_kbps: u32,
    /// The bottleneck's drop-tail queue holds at most this many milliseconds of data at `rate_kbps`;
    /// 0 means [`DEFAULT_QUEUE_MS`].
    pub queue_ms: u32,
}

/// One direction's bottleneck link: a serializer sending one packet after the other at the rate,
/// with a drop-tail queue in front. Plain data; the caller passes the time in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bottleneck {
    /// When the link has finished sending every packet it accepted so far.
    pub busy_until: Option<Instant>,
}

impl Bottleneck {
    /// Offers a packet of `len` bytes arriving at `now`: `Some(t)` = it has left the link at `t`,
    /// `None` = dropped because the queue would then hold more than the queue limit. A packet
    /// arriving at an idle link is always accepted, so a low rate slows big packets rather than
    /// blackholing them. Without a rate, packets pass at `now` and the state is left alone.
    pub fn offer(&mut self, imp: &Impairment, now: Instant, len: usize) -> Option<Instant> {
        if imp.rate_kbps == 0 {
            return Some(now);
        }
        // len * 8 bits at rate_kbps * 1000 bit/s, in nanoseconds.
        let send = Duration::from_nanos(len as u64 * 8_000_000 / u64::from(imp.rate_kbps));
        let start = self.busy_until.map_or(now, |b| b.max(now));
        let backlog = start - now;
        let limit = Duration::from_millis(u64::from(if imp.queue_ms == 0 { DEFAULT_QUEUE_MS } else { imp.queue_ms }));
        if !backlog.is_zero() && backlog + send > limit {
            return None;
        }
        self.busy_until = Some(start + send);
        self.busy_until
    }
}

/// What happens to one packet: `None` = dropped, `Some(d)` = delivered after `d`.
pub fn decide(imp: &Impairment, rng: &mut impl Rng) -> Option<Duration> {
    // Not `random_bool`: it panics outside 0..=1, whereas a comparison treats NaN or <0 as no loss.
    if rng.random::<f64>() < imp.loss {
        return None;
    }
    // Microsecond resolution so jitter reorders packets that arrive within the same millisecond.
    let jitter = i64::from(imp.jitter_ms) * 1000;
    let us = i64::from(imp.delay_ms) * 1000 + rng.random_range(-jitter..=jitter);
    Some(Duration::from_micros(us.max(0) as u64))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    pub forwarded: u64,
    /// Lost by the impairment, the bottleneck's queue, queue overflow, cut flows or the flow cap.
    pub dropped: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub to_upstream: DirStats,
    pub to_client: DirStats,
    pub flows: usize,
    pub cut_flows: usize,
}

#[derive(Clone, Copy)]
enum Dir {
    ToUpstream = 0,
    ToClient = 1,
}

struct Flow {
    client: SocketAddr,
    /// Connected to the upstream, so the upstream sees one distinct source per client.
    socket: UdpSocket,
    /// Cancelled by `cut()`: ends the flow's reader and voids its packets still in the queues.
    cut: CancellationToken,
}

#[derive(Default)]
struct Flows {
    live: HashMap<SocketAddr, Arc<Flow>>,
    /// Clients whose flow was cut: their packets are dropped for good, as if the binding died.
    cut: HashSet<SocketAddr>,
}

#[derive(Default)]
struct Shared {
    impairment: Mutex<Impairment>,
    flows: Mutex<Flows>,
    forwarded: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
}

impl Shared {
    fn count(&self, dir: Dir, forwarded: bool) {
        let c = if forwarded { &self.forwarded } else { &self.dropped };
        c[dir as usize].fetch_add(1, Relaxed);
    }
}

/// Cheap clonable control of a running [`Relay`].
#[derive(Clone)]
pub struct RelayHandle(Arc<Shared>);

impl RelayHandle {
    /// Applies to packets arriving from now on; already queued ones keep their schedule.
    pub fn set_impairment(&self, imp: Impairment) {
        *self.0.impairment.lock().unwrap() = imp;
    }

    pub fn impairment(&self) -> Impairment {
        *self.0.impairment.lock().unwrap()
    }

    /// Blackholes every flow that exists now, both ways and forever; clients on new source addresses
    /// get fresh flows, so an ICE restart (new sockets) recovers while the old path stays dead.
    pub fn cut(&self) {
        let mut flows = self.0.flows.lock().unwrap();
        for (addr, flow) in std::mem::take(&mut flows.live) {
            flow.cut.cancel();
            flows.cut.insert(addr);
        }
    }

    pub fn stats(&self) -> Stats {
        let dir = |d: Dir| DirStats {
            forwarded: self.0.forwarded[d as usize].load(Relaxed),
            dropped: self.0.dropped[d as usize].load(Relaxed),
        };
        let flows = self.0.flows.lock().unwrap();
        Stats {
            to_upstream: dir(Dir::ToUpstream),
            to_client: dir(Dir::ToClient),
            flows: flows.live.len(),
            cut_flows: flows.cut.len(),
        }
    }
}

/// A running relay; dropping it stops all its tasks and closes its sockets.
pub struct Relay {
    local_addr: SocketAddr,
    handle: RelayHandle,
    _stop: DropGuard,
}

impl Relay {
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, impairment: Impairment) -> io::Result<Relay> {
        let socket = Arc::new(UdpSocket::bind(listen).await?);
        let local_addr = socket.local_addr()?;
        let shared = Arc::new(Shared { impairment: Mutex::new(impairment), ..Default::default() });
        let stop = CancellationToken::new();
        // A small channel in front of each heap: if the scheduler falls behind, packets drop here too.
        let (up_tx, up_rx) = mpsc::channel(1024);
        let (down_tx, down_rx) = mpsc::channel(1024);
        let ctx = Ctx { shared: shared.clone(), stop: stop.clone(), listen: socket, upstream };
        tokio::spawn(ctx.clone().schedule(Dir::ToUpstream, up_rx));
        tokio::spawn(ctx.clone().schedule(Dir::ToClient, down_rx));
        tokio::spawn(ctx.accept(up_tx, down_tx));
        Ok(Relay { local_addr, handle: RelayHandle(shared), _stop: stop.drop_guard() })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Handles may outlive the relay; don't let them keep the upstream sockets open.
        self.handle.0.flows.lock().unwrap().live.clear();
    }
}

type Packet = (Instant, Arc<Flow>, Vec<u8>);

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    stop: CancellationToken,
    listen: Arc<UdpSocket>,
    upstream: SocketAddr,
}

impl Ctx {
    fn enqueue(&self, dir: Dir, tx: &mpsc::Sender<Packet>, flow: Arc<Flow>, data: &[u8]) {
        if tx.try_send((Instant::now(), flow, data.to_vec())).is_err() {
            self.shared.count(dir, false);
        }
    }

    /// Reads clients on the listen socket, creating a flow per new source address.
    async fn accept(self, up: mpsc::Sender<Packet>, down: mpsc::Sender<Packet>) {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, src) = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = self.listen.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    // Windows reports ICMP errors of earlier sends on the next recv; not fatal.
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "listen socket failed");
                        return;
                    }
                },
            };
            match self.flow_for(src, &down) {
                Ok(Some(flow)) => self.enqueue(Dir::ToUpstream, &up, flow, &buf[..n]),
                Ok(None) => self.shared.count(Dir::ToUpstream, false),
                Err(e) => {
                    tracing::warn!(error = %e, %src, "cannot open upstream socket");
                    self.shared.count(Dir::ToUpstream, false);
                }
            }
        }
    }

    fn flow_for(&self, client: SocketAddr, down: &mpsc::Sender<Packet>) -> io::Result<Option<Arc<Flow>>> {
        let mut flows = self.shared.flows.lock().unwrap();
        if let Some(flow) = flows.live.get(&client) {
            return Ok(Some(flow.clone()));
        }
        if flows.cut.contains(&client) || flows.live.len() >= MAX_FLOWS {
            return Ok(None);
        }
        let ip = match self.upstream.ip() {
            ip if ip.is_loopback() => ip,
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        // std sockets: binding and connecting are immediate, and we are holding a (sync) lock.
        let std = std::net::UdpSocket::bind((ip, 0))?;
        std.connect(self.upstream)?;
        std.set_nonblocking(true)?;
        let cut = self.stop.child_token();
        let flow = Arc::new(Flow { client, socket: UdpSocket::from_std(std)?, cut });
        flows.live.insert(client, flow.clone());
        tracing::debug!(%client, upstream_port = flow.socket.local_addr()?.port(), "new flow");
        tokio::spawn(self.clone().read_upstream(flow.clone(), down.clone()));
        Ok(Some(flow))
    }

    async fn read_upstream(self, flow: Arc<Flow>, down: mpsc::Sender<Packet>) {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = tokio::select! {
                _ = flow.cut.cancelled() => return,
                r = flow.socket.recv(&mut buf) => match r {
                    Ok(n) => n,
                    // The upstream not listening (yet) shows up as ICMP errors on a connected socket.
                    Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, client = %flow.client, "upstream socket failed");
                        return;
                    }
                },
            };
            self.enqueue(Dir::ToClient, &down, flow.clone(), &buf[..n]);
        }
    }

    /// One direction's bottleneck and delay line: a timer queue ordered by due time, so jitter
    /// reorders like netem.
    async fn schedule(self, dir: Dir, mut rx: mpsc::Receiver<Packet>) {
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let mut bottleneck = Bottleneck::default();
        // Keyed by (due, arrival number): equal due times keep arrival order.
        let mut queue = BTreeMap::<(Instant, u64), (Arc<Flow>, Vec<u8>)>::new();
        let mut seq = 0u64;
        loop {
            let next = queue.first_key_value().map(|(k, _)| k.0);
            tokio::select! {
                _ = self.stop.cancelled() => return,
                p = rx.recv() => {
                    let Some((arrived, flow, data)) = p else { return };
                    let imp = *self.shared.impairment.lock().unwrap();
                    let due = bottleneck
                        .offer(&imp, arrived, data.len())
                        .and_then(|left| Some(left + decide(&imp, &mut rng)?));
                    match due {
                        Some(due) if queue.len() < MAX_QUEUED => {
                            seq += 1;
                            queue.insert((due, seq), (flow, data));
                        }
                        _ => self.shared.count(dir, false),
                    }
                }
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let now = Instant::now();
                    while queue.first_key_value().is_some_and(|(k, _)| k.0 <= now) {
                        let (_, (flow, data)) = queue.pop_first().unwrap();
                        // Packets queued before a cut die with their flow, so a cut is immediate.
                        let sent = !flow.cut.is_cancelled()
                            && match dir {
                                Dir::ToUpstream => flow.socket.send(&data).await.is_ok(),
                                Dir::ToClient => self.listen.send_to(&data, flow.client).await.is_ok(),
                            };
                        self.shared.count(dir, sent);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;

    #[test]
    fn loss_fraction_matches() {
        let mut rng = StdRng::seed_from_u64(7);
        let imp = Impairment { loss: 0.2, ..Default::default() };
        let lost = (0..100_000).filter(|_| decide(&imp, &mut rng).is_none()).count();
        assert!((19_000..=21_000).contains(&lost), "lost {lost}");
        let none = Impairment::default();
        assert!((0..1000).all(|_| decide(&none, &mut rng) == Some(Duration::ZERO)));
        let all = Impairment { loss: 1.0, ..Default::default() };
        assert!((0..1000).all(|_| decide(&all, &mut rng).is_none()));
    }

    #[test]
    fn delays_stay_in_bounds() {
        let mut rng = StdRng::seed_from_u64(7);
        let imp = Impairment { loss: 0.0, delay_ms: 80, jitter_ms: 20, ..Default::default() };
        let d: Vec<_> = (0..100_000).map(|_| decide(&imp, &mut rng).unwrap()).collect();
        assert!(d.iter().all(|d| (Duration::from_millis(60)..=Duration::from_millis(100)).contains(d)));
        // Jitter actually spreads: both halves of the range are used.
        assert!(d.iter().any(|d| *d < Duration::from_millis(70)) && d.iter().any(|d| *d > Duration::from_millis(90)));
        // Jitter larger than the delay clamps at zero instead of underflowing.
        let wide = Impairment { loss: 0.0, delay_ms: 5, jitter_ms: 50, ..Default::default() };
        assert!((0..10_000).all(|_| decide(&wide, &mut rng).unwrap() <= Duration::from_millis(55)));
    }

    #[test]
    fn bottleneck_serializes_and_drops_tail() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        // 400 kbit/s: 1000 bytes take 20 ms; the default queue holds 100 ms, i.e. five of them.
        let imp = Impairment { rate_kbps: 400, ..Default::default() };
        let mut b = Bottleneck::default();
        // An idle link sends at once; back-to-back packets queue behind each other.
        let left: Vec<_> = (0..6).map(|_| b.offer(&imp, t0, 1000)).collect();
        let want: Vec<_> = (1..=5).map(|i| Some(t0 + ms(20 * i))).chain([None]).collect();
        assert_eq!(left, want, "the sixth would make the queue hold 120 ms");
        // A drop leaves the schedule alone; once a packet has gone, there is room for one more.
        assert_eq!(b.busy_until, Some(t0 + ms(100)));
        assert_eq!(b.offer(&imp, t0 + ms(19), 1000), None);
        assert_eq!(b.offer(&imp, t0 + ms(20), 1000), Some(t0 + ms(120)));
        // A smaller packet can still fit where a big one does not.
        assert_eq!(b.offer(&imp, t0 + ms(30), 1000), None);
        assert_eq!(b.offer(&imp, t0 + ms(30), 500), Some(t0 + ms(130)));
        assert_eq!(b.offer(&imp, t0 + ms(30), 1), None);
        // After the link drained, it starts from `now`, not from its old schedule.
        assert_eq!(b.offer(&imp, t0 + ms(500), 500), Some(t0 + ms(510)));
        // A packet bigger than the whole queue still passes an idle link, just slowly; what is
        // still to be sent of it counts against the queue.
        let mut b = Bottleneck::default();
        assert_eq!(b.offer(&imp, t0, 10_000), Some(t0 + ms(200)));
        assert_eq!(b.offer(&imp, t0 + ms(50), 1), None);
        assert_eq!(b.offer(&imp, t0 + ms(120), 1000), Some(t0 + ms(220)));
        // queue_ms is honoured; a zero rate is no bottleneck and leaves the state untouched.
        let short = Impairment { rate_kbps: 400, queue_ms: 30, ..Default::default() };
        let mut b = Bottleneck::default();
        assert_eq!(b.offer(&short, t0, 1000), Some(t0 + ms(20)));
        assert_eq!(b.offer(&short, t0, 1000), None);
        assert_eq!(b.offer(&short, t0 + ms(10), 1000), Some(t0 + ms(40)));
        let before = b;
        assert!((0..100).all(|_| b.offer(&Impairment::default(), t0, 65_000) == Some(t0)));
        assert_eq!(b, before);
        // Sub-millisecond precision: 1 byte at 1 Mbit/s takes 8 us.
        let fast = Impairment { rate_kbps: 1000, ..Default::default() };
        let mut b = Bottleneck::default();
        assert_eq!(b.offer(&fast, t0, 1), Some(t0 + Duration::from_micros(8)));
    }
}
