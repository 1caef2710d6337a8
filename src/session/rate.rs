//! Token buckets for per-session request rates, driven by the time the caller passes in.

use std::time::Instant;

use serde::Deserialize;

/// Config section `[rate]`: per-session request rates of the world service.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// `C_CHAT` per second, sustained.
    pub chat_per_sec: f64,
    /// `C_CHAT` allowed in a burst.
    pub chat_burst: u32,
    /// `C_MOVE` per second, sustained.
    pub move_per_sec: f64,
    /// `C_MOVE` allowed in a burst.
    pub move_burst: u32,
    /// Refused requests tolerated in a burst before the session is disconnected with
    /// `RATE_LIMITED`; the allowance refills at one per second.
    pub max_violations: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            chat_per_sec: 5.0,
            chat_burst: 10,
            move_per_sec: 30.0,
            move_burst: 60,
            max_violations: 20,
        }
    }
}

/// A token bucket: `burst` tokens at most, refilled at `per_sec`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_sec: f64, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_sec: per_sec.max(0.0),
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token if there is one; false when the rate is exceeded.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_millis(400)));
        assert!(b.try_take(t0 + Duration::from_millis(500)));
        assert!(!b.try_take(t0 + Duration::from_millis(500)));
        // never more than the burst, however long the pause
        let later = t0 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }
}
