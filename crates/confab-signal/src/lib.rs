//! confab-signal: the signaling server of confab, as a library (embedded by the desktop app
//! and the tests) and a binary.
//!
//! ```text
//!   client ──ws/wss──> server (I/O: listener, HTTP, WebSocket tasks, limits)
//!                        │ decoded ClientMsg + now
//!                        v
//!                      rooms::Rooms (pure state machine) ──> Vec<Outbound> ──> clients
//! ```
//! - [`rooms`]: who is in which room, addressed relay, fan-out. No sockets, no clocks.
//! - [`server`]: everything that touches the network, with connection, rate, size and
//!   queue limits and graceful shutdown.
//! - [`turn`]: time-limited TURN credentials in coturn's REST format.
//! - [`tls`]: certificates from files or self-signed.
//! - [`metrics`]: Prometheus counters.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cfg = confab_signal::Config { listen: "127.0.0.1:0".parse()?, ..Default::default() };
//! let server = confab_signal::Server::bind(cfg).await?.spawn();
//! println!("clients connect to {}", server.ws_url());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admission;
pub mod metrics;
pub mod ratelimit;
pub mod rooms;
pub mod server;
pub mod tls;
pub mod turn;

pub use server::{raise_fd_limit, Config, Server, ServerError, ServerHandle};
pub use turn::IceConfig;
