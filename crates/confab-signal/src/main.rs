//! `confab-signal`: the signaling server binary. Flags map onto [`confab_signal::Config`];
//! every flag can also come from a `CONFAB_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use confab_signal::{tls, Config, IceConfig, Server};
use tracing::info;

#[derive(Parser, Debug)]
#[command(
    name = "confab-signal",
    version,
    about = "The confab signaling server: rooms, relay, chat, TURN credentials."
)]
struct Cli {
    /// Address to listen on (use 0.0.0.0:8787 to accept other machines).
    #[arg(long, env = "CONFAB_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Most peers in one room (2 for one-to-one calls).
    #[arg(long, env = "CONFAB_MAX_PEERS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_peers: u32,
    /// Most simultaneous connections; more are refused with HTTP 503.
    #[arg(long, env = "CONFAB_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Messages a client may send in one burst.
    #[arg(long, env = "CONFAB_RATE_BURST", default_value_t = 100)]
    rate_burst: u32,
    /// Messages per second a client may send on average.
    #[arg(long, env = "CONFAB_RATE_PER_SEC", default_value_t = 50)]
    rate_per_sec: u32,
    /// Seconds between pings to each client.
    #[arg(long, env = "CONFAB_PING_INTERVAL", default_value_t = 10.0)]
    ping_interval: f64,
    /// Seconds of silence after which a client is dropped.
    #[arg(long, env = "CONFAB_IDLE_TIMEOUT", default_value_t = 20.0)]
    idle_timeout: f64,
    /// Seconds the place of a client whose connection broke is kept for it to resume
    /// (0: remove at once). Peers that really left are gone from their rooms after this.
    #[arg(long, env = "CONFAB_RESUME_GRACE", default_value_t = 8.0)]
    resume_grace: f64,
    /// Secret for resume tokens (any string; keep it across restarts). With it, clients get
    /// their peer ids back after a restart and calls carry on untouched; without it a
    /// restart gives everyone new ids and calls rebuild their connections.
    #[arg(long, env = "CONFAB_RESUME_SECRET", hide_env_values = true)]
    resume_secret: Option<String>,
    /// Frames queued for one client before it is cut off as not reading.
    #[arg(long, env = "CONFAB_OUTBOUND_QUEUE", default_value_t = 256)]
    outbound_queue: usize,
    /// PEM certificate chain for wss:// (with --tls-key).
    #[arg(long, env = "CONFAB_TLS_CERT", requires = "tls_key", conflicts_with = "self_signed")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for wss:// (with --tls-cert).
    #[arg(long, env = "CONFAB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve wss:// with a certificate generated now for localhost, 127.0.0.1 and ::1.
    #[arg(long, env = "CONFAB_SELF_SIGNED")]
    self_signed: bool,
    /// Extra host names or IPs for the self-signed certificate (repeatable).
    #[arg(
        long = "self-signed-name",
        env = "CONFAB_SELF_SIGNED_NAMES",
        value_delimiter = ',',
        requires = "self_signed"
    )]
    self_signed_names: Vec<String>,
    /// Write the self-signed certificate (PEM) here so that clients can trust it.
    #[arg(long, env = "CONFAB_WRITE_CERT", requires = "self_signed")]
    write_cert: Option<PathBuf>,
    /// A STUN server URL handed to clients, e.g. stun:stun.example.org:3478 (repeatable).
    #[arg(long, env = "CONFAB_STUN", value_delimiter = ',')]
    stun: Vec<String>,
    /// A TURN server URL, e.g. turn:turn.example.org:3478?transport=udp (repeatable).
    #[arg(long, env = "CONFAB_TURN", value_delimiter = ',', requires = "turn_secret")]
    turn: Vec<String>,
    /// coturn's static-auth-secret (use-auth-secret), to mint per-peer TURN credentials.
    #[arg(long, env = "CONFAB_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
    /// Seconds TURN credentials stay valid.
    #[arg(long, env = "CONFAB_TURN_TTL", default_value_t = 3600)]
    turn_ttl: u64,
    /// Runtime worker threads; 0 means one per core. 1 runs everything on one thread, which
    /// costs the least CPU per message when one core is enough.
    #[arg(long, env = "CONFAB_WORKERS", default_value_t = 0)]
    workers: usize,
    /// A web page origin allowed to connect, e.g. https://meet.example.org (repeatable; `*`
    /// allows every page). By default no web page may connect: only apps such as confab
    /// and confab-peer, which send no Origin.
    #[arg(long = "allow-origin", env = "CONFAB_ALLOW_ORIGINS", value_delimiter = ',')]
    allow_origins: Vec<String>,
    /// Log format.
    #[arg(long, env = "CONFAB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn seconds(name: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("--{name} must be a positive number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONFAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    for url in &cli.turn {
        if !(url.starts_with("turn:") || url.starts_with("turns:")) {
            bail!("--turn {url:?} must start with turn: or turns:");
        }
    }
    for url in &cli.stun {
        if !url.starts_with("stun:") && !url.starts_with("stuns:") {
            bail!("--stun {url:?} must start with stun: or stuns:");
        }
    }

    let identity = if cli.self_signed {
        let id = tls::self_signed(&cli.self_signed_names).context("generating the self-signed certificate")?;
        if let Some(path) = &cli.write_cert {
            std::fs::write(path, &id.cert_pem)
                .with_context(|| format!("writing the certificate to {}", path.display()))?;
            info!(path = %path.display(), "wrote the self-signed certificate");
        }
        Some(id)
    } else if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        Some(tls::load(cert, key).context("loading the TLS certificate")?)
    } else {
        None
    };

    if cli.idle_timeout <= cli.ping_interval {
        bail!(
            "--idle-timeout ({} s) must be longer than --ping-interval ({} s), or every client times out",
            cli.idle_timeout,
            cli.ping_interval
        );
    }
    for o in &cli.allow_origins {
        if o != "*" && !(o.starts_with("http://") || o.starts_with("https://")) {
            bail!("--allow-origin {o:?} must be a page origin such as https://meet.example.org, or *");
        }
    }
    if cli.rate_burst == 0 || cli.rate_per_sec == 0 {
        bail!("--rate-burst and --rate-per-sec must be at least 1");
    }
    let cfg = Config {
        listen: cli.listen,
        max_peers: cli.max_peers as usize,
        max_connections: cli.max_connections,
        rate_burst: cli.rate_burst,
        rate_per_sec: cli.rate_per_sec,
        ping_interval: seconds("ping-interval", cli.ping_interval)?,
        idle_timeout: seconds("idle-timeout", cli.idle_timeout)?,
        outbound_queue: cli.outbound_queue.max(1),
        resume_secret: cli.resume_secret.clone(),
        resume_grace: if cli.resume_grace == 0.0 { Duration::ZERO } else { seconds("resume-grace", cli.resume_grace)? },
        tls: identity.as_ref().map(|i| i.config.clone()),
        ice: IceConfig { stun: cli.stun, turn: cli.turn, turn_secret: cli.turn_secret, turn_ttl_s: cli.turn_ttl },
        allow_origins: cli.allow_origins.clone(),
        ..Config::default()
    };

    let fds = confab_signal::raise_fd_limit();
    let rt = match cli.workers {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
    .context("starting the runtime")?;
    rt.block_on(async move {
        let tls = cfg.tls.is_some();
        let server = Server::bind(cfg).await?;
        let addr = server.local_addr();
        let scheme = if tls { "wss" } else { "ws" };
        // One plain line on stdout that scripts (and our tests) can read the port from.
        println!("confab-signal listening on {scheme}://{addr}/ws");
        if let Some(id) = &identity {
            println!("certificate SHA-256 fingerprint {}", id.fingerprint);
        }
        info!(%addr, tls, fd_limit = fds, "serving");
        server.run(shutdown_signal()).await;
        info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
        _ = term.recv() => info!("SIGTERM"),
    }
}
