//! `confab-netsim`: runs an impairment [`Relay`] and takes line commands on stdin, answering each
//! with exactly one JSON line on stdout so that a test driving it can synchronise on the answer.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use clap::Parser;
use confab_netsim::{Impairment, Relay, RelayHandle, Stats};
use serde_json::{json, Value};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(
    name = "confab-netsim",
    version,
    about = "UDP relay that adds a bandwidth bottleneck, loss, delay and jitter, for tests."
)]
struct Cli {
    /// Address clients send to (port 0 picks one; the actual address is printed).
    #[arg(long)]
    listen: SocketAddr,
    /// Where traffic is relayed to, e.g. a TURN server.
    #[arg(long)]
    upstream: SocketAddr,
    /// Drop probability per packet and direction, 0..=1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_loss)]
    loss: f64,
    #[arg(long, default_value_t = 0)]
    delay_ms: u32,
    #[arg(long, default_value_t = 0)]
    jitter_ms: u32,
    /// Bottleneck rate per direction in kbit/s; 0 = unlimited. Loss, delay and jitter apply after it.
    #[arg(long, default_value_t = 0)]
    rate_kbps: u32,
    /// The bottleneck's drop-tail queue, in milliseconds of data at the rate; 0 = the default (100).
    #[arg(long, default_value_t = 0)]
    queue_ms: u32,
}

fn parse_loss(s: &str) -> Result<f64> {
    let v: f64 = s.trim().parse().with_context(|| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        bail!("loss must be within 0..=1, got {v}");
    }
    Ok(v)
}

/// Applies one command line; `Ok(None)` means quit.
fn command(relay: &RelayHandle, line: &str) -> Result<Option<Value>> {
    let mut words = line.split_whitespace();
    let cmd = words.next().unwrap_or_default();
    let arg = words.next();
    if words.next().is_some() {
        bail!("too many arguments in {line:?}");
    }
    let mut imp = relay.impairment();
    let ms =
        |a: Option<&str>| -> Result<u32> { a.context("missing milliseconds")?.parse().context("bad milliseconds") };
    match (cmd, arg) {
        ("quit", None) => return Ok(None),
        ("cut", None) => relay.cut(),
        ("stats", None) => return Ok(Some(stats_json(relay.stats()))),
        ("loss", a) => imp.loss = parse_loss(a.context("missing loss")?)?,
        ("delay", a) => imp.delay_ms = ms(a)?,
        ("jitter", a) => imp.jitter_ms = ms(a)?,
        ("rate", a) => imp.rate_kbps = a.context("missing kbit/s")?.parse().context("bad kbit/s")?,
        ("queue", a) => imp.queue_ms = ms(a)?,
        _ => bail!("unknown command {line:?} (cut, loss F, delay MS, jitter MS, rate KBPS, queue MS, stats, quit)"),
    }
    relay.set_impairment(imp);
    Ok(Some(json!({"event": "ok", "cmd": cmd})))
}

fn stats_json(s: Stats) -> Value {
    let dir = |d: confab_netsim::DirStats| json!({"forwarded": d.forwarded, "dropped": d.dropped});
    json!({
        "event": "stats",
        "to_upstream": dir(s.to_upstream),
        "to_client": dir(s.to_client),
        "flows": s.flows,
        "cut_flows": s.cut_flows,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // stdout is the command protocol, so logs go to stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONFAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();

    let imp = Impairment {
        loss: cli.loss,
        delay_ms: cli.delay_ms,
        jitter_ms: cli.jitter_ms,
        rate_kbps: cli.rate_kbps,
        queue_ms: cli.queue_ms,
    };
    let relay =
        Relay::start(cli.listen, cli.upstream, imp).await.with_context(|| format!("listen on {}", cli.listen))?;
    tracing::info!(listen = %relay.local_addr(), upstream = %cli.upstream, ?imp, "relaying");
    println!("{}", json!({"event": "listening", "addr": relay.local_addr().to_string()}));

    // A plain thread, not tokio's stdin: tokio's blocking read would keep the runtime from shutting
    // down after `quit`, while a detached thread simply dies with the process.
    let (tx, mut lines) = mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let handle = relay.handle();
    while let Some(line) = lines.recv().await {
        if line.trim().is_empty() {
            continue;
        }
        match command(&handle, &line) {
            Ok(Some(answer)) => println!("{answer}"),
            Ok(None) => {
                println!("{}", json!({"event": "ok", "cmd": "quit"}));
                break;
            }
            Err(e) => println!("{}", json!({"event": "error", "message": format!("{e:#}")})),
        }
    }
    tracing::info!(stats = ?handle.stats(), "exiting");
    Ok(())
}
