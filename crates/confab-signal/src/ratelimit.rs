//! Per-connection message rate limit: a token bucket with time passed in, plus the strike
//! rule that turns a client which keeps misbehaving into a closed connection.

/// Allows bursts of `burst` messages and `per_sec` on average.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    burst: f64,
    per_ms: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(burst: u32, per_sec: u32, now_ms: u64) -> Self {
        TokenBucket { burst: burst as f64, per_ms: per_sec as f64 / 1000.0, tokens: burst as f64, last_ms: now_ms }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + elapsed as f64 * self.per_ms).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with a client that was just refused something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Tell it why (an `error` message).
    Tell,
    /// Already told: drop silently, so that a flood is not answered by a flood.
    Quiet,
    /// Enough: close the connection.
    Disconnect,
}

/// Counts refusals in a row. A good message forgives them.
#[derive(Clone, Debug, Default)]
pub struct Strikes {
    rate: u32,
    errors: u32,
}

impl Strikes {
    /// Refusals of the rate limit in a row before the connection is closed.
    pub const MAX_RATE: u32 = 50;
    /// Protocol errors in a row before the connection is closed.
    pub const MAX_ERRORS: u32 = 20;

    pub fn rate_limited(&mut self) -> Verdict {
        self.rate += 1;
        match self.rate {
            1 => Verdict::Tell,
            n if n >= Self::MAX_RATE => Verdict::Disconnect,
            _ => Verdict::Quiet,
        }
    }

    pub fn error(&mut self) -> Verdict {
        self.errors += 1;
        if self.errors >= Self::MAX_ERRORS {
            Verdict::Disconnect
        } else {
            Verdict::Tell
        }
    }

    pub fn good(&mut self) {
        self.rate = 0;
        self.errors = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut b = TokenBucket::new(3, 10, 0);
        assert!(b.try_take(0) && b.try_take(0) && b.try_take(0));
        assert!(!b.try_take(0));
        assert!(!b.try_take(99));
        assert!(b.try_take(100));
        assert!(!b.try_take(100));
        // Refill is capped at the burst size.
        assert!((0..3).all(|_| b.try_take(10_000)));
        assert!(!b.try_take(10_000));
        // Time going backwards never adds tokens.
        assert!(!b.try_take(5));
    }

    #[test]
    fn strikes_tell_once_then_disconnect() {
        let mut s = Strikes::default();
        assert_eq!(s.rate_limited(), Verdict::Tell);
        for _ in 2..Strikes::MAX_RATE {
            assert_eq!(s.rate_limited(), Verdict::Quiet);
        }
        assert_eq!(s.rate_limited(), Verdict::Disconnect);
        s.good();
        assert_eq!(s.rate_limited(), Verdict::Tell);
        for _ in 1..Strikes::MAX_ERRORS {
            assert_eq!(s.error(), Verdict::Tell);
        }
        assert_eq!(s.error(), Verdict::Disconnect);
    }
}
