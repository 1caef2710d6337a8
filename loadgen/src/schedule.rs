//! Open-loop schedules: sends happen at fixed intended times whether or not answers have come,
//! and latency is measured from the intended time, so a stalled server shows up as latency
//! instead of hiding as a lower send rate (coordinated omission).

use std::time::{Duration, Instant};

/// Send `k` (0-based) is due at `first + k * interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    first: Instant,
    interval: Duration,
}

impl Schedule {
    /// `rate` sends per second starting at `start`, shifted by `phase` of one interval (0..1) so
    /// that many schedules of the same rate do not all fire at once.
    pub fn new(start: Instant, rate: f64, phase: f64) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        Some(Self {
            first: start + interval.mul_f64(phase.clamp(0.0, 1.0)),
            interval,
        })
    }

    /// When send `k` is due.
    pub fn due(&self, k: u64) -> Instant {
        let nanos = self.interval.as_nanos().saturating_mul(u128::from(k));
        self.first + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How many sends are due at `now` (sends `0..n` have intended times at or before it).
    pub fn due_by(&self, now: Instant) -> u64 {
        if now < self.first {
            return 0;
        }
        let elapsed = (now - self.first).as_nanos();
        u64::try_from(elapsed / self.interval.as_nanos().max(1) + 1).unwrap_or(u64::MAX)
    }
}

/// Spreads `n` schedules over one interval: schedule `i` gets phase `i / n`.
pub fn phase(i: usize, n: usize) -> f64 {
    if n == 0 {
        0.0
    } else {
        i as f64 / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_are_due_at_fixed_intervals() {
        let start = Instant::now();
        let s = Schedule::new(start, 100.0, 0.0).unwrap();
        assert_eq!(s.due(0), start);
        assert_eq!(s.due(3), start + Duration::from_millis(30));
    }

    #[test]
    fn due_by_counts_every_send_whose_time_has_come() {
        let start = Instant::now();
        let s = Schedule::new(start, 100.0, 0.5).unwrap();
        assert_eq!(s.due_by(start), 0);
        assert_eq!(s.due_by(start + Duration::from_millis(5)), 1);
        assert_eq!(s.due_by(start + Duration::from_micros(14_999)), 1);
        assert_eq!(s.due_by(start + Duration::from_millis(15)), 2);
        // a stalled sender that wakes late owes every send it missed
        assert_eq!(s.due_by(start + Duration::from_millis(1005)), 101);
    }

    #[test]
    fn due_and_due_by_agree() {
        let start = Instant::now();
        let s = Schedule::new(start, 333.0, 0.25).unwrap();
        for k in 0..1000 {
            assert_eq!(s.due_by(s.due(k)), k + 1, "send {k}");
        }
    }

    #[test]
    fn a_rate_that_is_not_positive_is_refused() {
        let now = Instant::now();
        assert!(Schedule::new(now, 0.0, 0.0).is_none());
        assert!(Schedule::new(now, -1.0, 0.0).is_none());
        assert!(Schedule::new(now, f64::NAN, 0.0).is_none());
    }

    #[test]
    fn phases_spread_over_one_interval() {
        assert_eq!(phase(0, 4), 0.0);
        assert_eq!(phase(3, 4), 0.75);
        assert_eq!(phase(0, 0), 0.0);
    }
}
