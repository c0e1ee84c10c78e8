//! Counters for `/metrics`, rendered in the Prometheus text format. Plain atomics: the hot
//! path pays one relaxed add per event.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use confab_proto::ErrorCode;

/// Why a connection was refused or cut off by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// `--max-connections` reached: refused before the WebSocket handshake.
    MaxConnections,
    /// Its outbound queue filled up: it does not read.
    SlowConsumer,
    /// It kept sending faster than the rate limit.
    RateLimit,
    /// It kept sending invalid messages.
    Errors,
    /// It sent a frame over the WebSocket hard limit.
    FrameTooLarge,
    /// It stopped answering pings.
    Timeout,
    /// A web page whose origin is not allowed (`--allow-origin`).
    Origin,
    /// From another machine without the right access code.
    AccessCode,
}

const REJECTIONS: [(Rejection, &str); 8] = [
    (Rejection::MaxConnections, "max_connections"),
    (Rejection::SlowConsumer, "slow_consumer"),
    (Rejection::RateLimit, "rate_limit"),
    (Rejection::Errors, "errors"),
    (Rejection::FrameTooLarge, "frame_too_large"),
    (Rejection::Timeout, "timeout"),
    (Rejection::Origin, "origin"),
    (Rejection::AccessCode, "access_code"),
];

#[derive(Default)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicI64,
    /// Data frames (text or binary) received from clients.
    pub messages_received: AtomicU64,
    /// `signal` messages relayed to their addressee.
    pub signals_relayed: AtomicU64,
    /// Frames queued to clients (every recipient counts).
    pub messages_sent: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    rejections: [AtomicU64; REJECTIONS.len()],
}

impl Metrics {
    pub fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }

    pub fn errors_of(&self, code: ErrorCode) -> u64 {
        self.errors[code.index()].load(Relaxed)
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejections[why as usize].fetch_add(1, Relaxed);
    }

    /// The Prometheus exposition. `rooms` and `peers` come from the room state.
    pub fn render(&self, rooms: usize, peers: usize) -> String {
        let mut s = String::with_capacity(2048);
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge("confab_connections", "Open WebSocket connections.", self.connections.load(Relaxed));
        gauge("confab_rooms", "Rooms with at least one peer.", rooms as i64);
        gauge("confab_peers", "Peers in rooms.", peers as i64);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "confab_messages_received_total",
            "Text frames received from clients.",
            self.messages_received.load(Relaxed),
        );
        counter(
            "confab_signals_relayed_total",
            "Signal messages relayed to their addressee.",
            self.signals_relayed.load(Relaxed),
        );
        counter("confab_messages_sent_total", "Frames queued to clients.", self.messages_sent.load(Relaxed));
        let _ = writeln!(
            s,
            "# HELP confab_errors_total Messages refused, by error code.\n# TYPE confab_errors_total counter"
        );
        for code in ErrorCode::ALL {
            let _ = writeln!(s, "confab_errors_total{{code=\"{code}\"}} {}", self.errors_of(code));
        }
        let _ = writeln!(
            s,
            "# HELP confab_rejected_connections_total Connections refused or cut off by the server, by reason.\n# TYPE confab_rejected_connections_total counter"
        );
        for (why, label) in REJECTIONS {
            let _ = writeln!(
                s,
                "confab_rejected_connections_total{{reason=\"{label}\"}} {}",
                self.rejections[why as usize].load(Relaxed)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series() {
        let m = Metrics::default();
        m.error(ErrorCode::RoomFull);
        m.rejected(Rejection::SlowConsumer);
        m.connections.fetch_add(3, Relaxed);
        let text = m.render(2, 5);
        assert!(text.contains("confab_connections 3\n"));
        assert!(text.contains("confab_rooms 2\n"));
        assert!(text.contains("confab_peers 5\n"));
        assert!(text.contains("confab_errors_total{code=\"room_full\"} 1\n"));
        assert!(text.contains("confab_errors_total{code=\"bad_request\"} 0\n"));
        assert!(text.contains("confab_rejected_connections_total{reason=\"slow_consumer\"} 1\n"));
        for (_, label) in REJECTIONS {
            assert!(text.contains(&format!("reason=\"{label}\"")));
        }
    }
}
