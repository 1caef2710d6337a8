//! A circuit breaker shared by every connection to one server (MySQL or Redis): after
//! [`TRIP_AFTER`] failures in a row (one slow call under load is not an outage), calls fail at
//! once for a short while instead of each waiting for its own timeout; then one call (and only
//! one: the others still fail at once) probes the server, so that requests answer `SERVER_BUSY` quickly and the DB pool's queue does not fill
//! up behind a dead server. It also logs the outage once when it starts and once when it ends.
//!
//! Every trip also starts a new connection *generation*: a connection opened before it is not
//! trusted afterwards (the outage most likely killed it too), so once the server is back no
//! request is spent discovering that a thread's old connection is dead.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::StoreError;

/// Failures in a row (from any connection to the server) that open the breaker.
pub(crate) const TRIP_AFTER: u32 = 2;
/// While one call probes an open breaker, the others fail at once; if the probe never reports
/// back (its thread died), another call may probe after this long.
const PROBE_GRACE: Duration = Duration::from_secs(10);

/// Outage state of one server, shared by all its connections.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// "MySQL" or "Redis", for messages.
    what: &'static str,
    /// Where the server is, without any password.
    target: String,
    retry_after: Duration,
    /// Fast path: false while the server is known to be fine.
    down: AtomicBool,
    /// Bumped by every trip; see the module doc.
    generation: AtomicU64,
    /// Failures since the last success.
    in_a_row: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Calls fail at once until then.
    open_until: Option<Instant>,
    /// Why the last attempt failed.
    reason: String,
    /// When the current outage started.
    down_since: Option<Instant>,
}

impl Breaker {
    /// A closed breaker for server `what` at `target` (already redacted).
    pub(crate) fn new(what: &'static str, target: String, retry_after: Duration) -> Self {
        Self {
            what,
            target,
            retry_after,
            down: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            in_a_row: AtomicU32::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// Where the server is (no password), for messages.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// The current connection generation: record it when opening a connection, and drop the
    /// connection once [`generation`](Self::generation) has moved past it.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `Err(Unavailable)` while calls should not even try; `Ok` when they may. While the
    /// breaker is open, one call at a time gets `Ok` after the wait (the probe); it must end in
    /// [`failed`](Self::failed) or [`succeeded`](Self::succeeded) like any call.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if !self.down.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut state = self.lock();
        let now = Instant::now();
        match state.open_until {
            Some(until) if now < until => Err(self.unavailable(&state.reason)),
            _ => {
                state.open_until = Some(now + PROBE_GRACE);
                Ok(())
            }
        }
    }

    /// Records a failed connection or call; the [`TRIP_AFTER`]th in a row opens the breaker,
    /// and the first trip of an outage is logged (with the reason, never a password: `reason`
    /// comes from the client library, which does not print credentials, and `target` is
    /// redacted). Returns the error to hand to the caller.
    pub(crate) fn failed(&self, reason: &str) -> StoreError {
        if self.in_a_row.fetch_add(1, Ordering::AcqRel) + 1 < TRIP_AFTER {
            return self.unavailable(reason);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut state = self.lock();
        let now = Instant::now();
        state.open_until = Some(now + self.retry_after);
        state.reason = reason.to_owned();
        if state.down_since.is_none() {
            state.down_since = Some(now);
            tracing::warn!(
                server = self.what,
                target = %self.target,
                reason,
                "store unreachable: requests that need it answer SERVER_BUSY until it is back"
            );
        }
        self.down.store(true, Ordering::Release);
        self.unavailable(reason)
    }

    /// Records a successful call; ends an outage (logged with its length).
    pub(crate) fn succeeded(&self) {
        if self.in_a_row.load(Ordering::Relaxed) != 0 {
            self.in_a_row.store(0, Ordering::Release);
        }
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let mut state = self.lock();
        if let Some(since) = state.down_since.take() {
            tracing::info!(
                server = self.what,
                target = %self.target,
                down_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "store reachable again"
            );
        }
        state.open_until = None;
        self.down.store(false, Ordering::Release);
    }

    fn unavailable(&self, reason: &str) -> StoreError {
        StoreError::Unavailable(format!("{} at {}: {reason}", self.what, self.target))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_opens_for_a_while_and_a_success_closes() {
        let b = Breaker::new("Test", "t:1".into(), Duration::from_secs(3600));
        b.check().unwrap();
        let before = b.generation();
        // One failure alone is not an outage.
        let e = b.failed("connection refused");
        assert!(matches!(&e, StoreError::Unavailable(m) if m.contains("connection refused")));
        b.check().unwrap();
        assert_eq!(b.generation(), before);
        b.failed("connection refused");
        assert!(b.generation() > before);
        assert!(matches!(b.check(), Err(StoreError::Unavailable(_))));
        b.succeeded();
        b.check().unwrap();
    }

    #[test]
    fn one_call_probes_after_the_wait() {
        let b = Breaker::new("Test", "t:1".into(), Duration::ZERO);
        b.failed("refused");
        b.failed("refused");
        b.check().unwrap();
        // The probe is out: others still fail at once.
        assert!(b.check().is_err());
        b.failed("refused");
        b.check().unwrap();
        b.succeeded();
        b.check().unwrap();
        b.check().unwrap();
    }

    #[test]
    fn a_success_between_failures_keeps_it_closed() {
        let b = Breaker::new("Test", "t:1".into(), Duration::from_secs(3600));
        for _ in 0..5 {
            b.failed("slow");
            b.succeeded();
        }
        b.check().unwrap();
    }
}
