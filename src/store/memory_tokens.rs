//! The in-process [`TokenStore`]: a mutex-guarded map with expiry, bounded
//! in size, shared by the DB threads through an `Arc` (the store the
//! embedded default uses; one process only). Only DB pool threads touch it,
//! never a shard, so the mutex is never held across a shard's event loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{Redeemed, StoreError, TokenStore};
use crate::model::AccountId;

/// Default bound on live tokens, and separately on failure counters.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

/// A map never sweeps below this size: sweeping tiny maps buys nothing.
const MIN_SWEEP_THRESHOLD: usize = 1024;

type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

/// In-memory tokens and failed-login counters with expiry.
///
/// Memory stays bounded: expired entries are swept whenever a map has
/// doubled since its last sweep, and each map holds at most `capacity`
/// live entries; beyond that, new tokens and new failure keys are refused
/// with [`StoreError::Unavailable`].
pub struct MemoryTokenStore {
    inner: Mutex<Inner>,
    clock: Clock,
}

impl std::fmt::Debug for MemoryTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemoryTokenStore")
            .field("tokens", &inner.tokens.len())
            .field("failures", &inner.failures.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    tokens: ExpiringMap<AccountId>,
    failures: ExpiringMap<u32>,
}

impl Default for MemoryTokenStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryTokenStore {
    /// An empty store with [`DEFAULT_CAPACITY`] and the system clock.
    pub fn new() -> Self {
        Self::with_clock(DEFAULT_CAPACITY, Instant::now)
    }

    /// An empty store holding at most `capacity` tokens and `capacity`
    /// failure counters, reading time from `clock` (which must never go
    /// backwards).
    pub fn with_clock(
        capacity: usize,
        clock: impl Fn() -> Instant + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                tokens: ExpiringMap::new(capacity),
                failures: ExpiringMap::new(capacity),
            }),
            clock: Box::new(clock),
        }
    }

    /// Every critical section leaves the maps consistent (no code in them
    /// can panic half-way through an update), so a poisoned lock is safe to
    /// keep using.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryTokenStore {
    /// [`TokenStore::issue`] on the shared map.
    pub fn issue(&self, token: &str, account: AccountId, ttl: Duration) -> Result<(), StoreError> {
        if ttl.is_zero() {
            return Ok(());
        }
        let now = (self.clock)();
        let expires = deadline(now, ttl)?;
        let mut inner = self.lock();
        if inner.tokens.get_live_mut(token, now).is_some() {
            return Err(StoreError::Internal("token already issued".into()));
        }
        inner.tokens.insert(token, account, expires, now)
    }

    /// [`TokenStore::redeem`] on the shared map.
    pub fn redeem(&self, token: &str) -> Result<Option<Redeemed>, StoreError> {
        let now = (self.clock)();
        Ok(self
            .lock()
            .tokens
            .remove_live(token, now)
            .map(|(account, expires)| Redeemed {
                account,
                ttl_left: expires.duration_since(now),
            }))
    }

    /// [`TokenStore::note_failure`] on the shared map.
    pub fn note_failure(&self, key: &str, window: Duration) -> Result<u32, StoreError> {
        let now = (self.clock)();
        let mut inner = self.lock();
        if let Some(count) = inner.failures.get_live_mut(key, now) {
            *count = count.saturating_add(1);
            return Ok(*count);
        }
        let expires = deadline(now, window)?;
        inner.failures.insert(key, 1, expires, now)?;
        Ok(1)
    }

    /// [`TokenStore::failures`] on the shared map.
    pub fn failures(&self, key: &str) -> Result<u32, StoreError> {
        let now = (self.clock)();
        Ok(self
            .lock()
            .failures
            .get_live_mut(key, now)
            .map_or(0, |c| *c))
    }

    /// [`TokenStore::clear_failures`] on the shared map.
    pub fn clear_failures(&self, key: &str) -> Result<(), StoreError> {
        self.lock().failures.remove(key);
        Ok(())
    }
}

/// Each DB thread holds a clone of the `Arc`: all of them share one map.
impl TokenStore for Arc<MemoryTokenStore> {
    fn issue(&mut self, token: &str, account: AccountId, ttl: Duration) -> Result<(), StoreError> {
        MemoryTokenStore::issue(self, token, account, ttl)
    }

    fn redeem(&mut self, token: &str) -> Result<Option<Redeemed>, StoreError> {
        MemoryTokenStore::redeem(self, token)
    }

    fn note_failure(&mut self, key: &str, window: Duration) -> Result<u32, StoreError> {
        MemoryTokenStore::note_failure(self, key, window)
    }

    fn failures(&mut self, key: &str) -> Result<u32, StoreError> {
        MemoryTokenStore::failures(self, key)
    }

    fn clear_failures(&mut self, key: &str) -> Result<(), StoreError> {
        MemoryTokenStore::clear_failures(self, key)
    }
}

fn deadline(now: Instant, ttl: Duration) -> Result<Instant, StoreError> {
    now.checked_add(ttl)
        .ok_or_else(|| StoreError::Internal(format!("expiry {ttl:?} out of range")))
}

/// A map whose entries are live until their expiry instant (exclusive).
struct ExpiringMap<V> {
    entries: HashMap<String, (V, Instant)>,
    capacity: usize,
    /// Sweep when the map reaches this size.
    sweep_at: usize,
    /// No entry expires before this instant (a lower bound, kept exact at
    /// each sweep); lets a full map refuse inserts without a futile sweep.
    soonest_expiry: Option<Instant>,
}

impl<V> ExpiringMap<V> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            sweep_at: MIN_SWEEP_THRESHOLD,
            soonest_expiry: None,
        }
    }

    /// Inserts or replaces `key`. A new key needs room: the map sweeps
    /// expired entries if it has doubled since the last sweep or is full,
    /// and refuses the key if it is still full.
    fn insert(
        &mut self,
        key: &str,
        value: V,
        expires: Instant,
        now: Instant,
    ) -> Result<(), StoreError> {
        if let Some(slot) = self.entries.get_mut(key) {
            *slot = (value, expires);
        } else {
            let len = self.entries.len();
            let may_have_expired = self.soonest_expiry.is_some_and(|t| t <= now);
            if (len >= self.sweep_at || len >= self.capacity) && may_have_expired {
                self.sweep(now);
            }
            if self.entries.len() >= self.capacity {
                return Err(StoreError::Unavailable("token store full".into()));
            }
            self.entries.insert(key.to_owned(), (value, expires));
        }
        self.soonest_expiry = Some(self.soonest_expiry.map_or(expires, |t| t.min(expires)));
        Ok(())
    }

    fn sweep(&mut self, now: Instant) {
        self.entries.retain(|_, (_, exp)| *exp > now);
        self.soonest_expiry = self.entries.values().map(|(_, exp)| *exp).min();
        self.sweep_at = self
            .entries
            .len()
            .saturating_mul(2)
            .max(MIN_SWEEP_THRESHOLD);
    }

    /// Removes `key`, returning its value and expiry if it was still live.
    fn remove_live(&mut self, key: &str, now: Instant) -> Option<(V, Instant)> {
        self.entries.remove(key).filter(|(_, exp)| *exp > now)
    }

    /// The value of `key` if live; an expired entry is dropped.
    fn get_live_mut(&mut self, key: &str, now: Instant) -> Option<&mut V> {
        let expired = self.entries.get(key).is_some_and(|(_, exp)| *exp <= now);
        if expired {
            self.entries.remove(key);
            return None;
        }
        self.entries.get_mut(key).map(|(v, _)| v)
    }

    fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A clock that only moves when the test says so.
    #[derive(Clone)]
    struct ManualClock {
        base: Instant,
        millis: Arc<AtomicU64>,
    }

    impl ManualClock {
        fn new() -> Self {
            Self {
                base: Instant::now(),
                millis: Arc::new(AtomicU64::new(0)),
            }
        }
        fn advance(&self, d: Duration) {
            let ms = u64::try_from(d.as_millis()).unwrap();
            self.millis.fetch_add(ms, Ordering::SeqCst);
        }
        fn now(&self) -> Instant {
            self.base + Duration::from_millis(self.millis.load(Ordering::SeqCst))
        }
    }

    fn store(capacity: usize) -> (MemoryTokenStore, ManualClock) {
        let clock = ManualClock::new();
        let c = clock.clone();
        (
            MemoryTokenStore::with_clock(capacity, move || c.now()),
            clock,
        )
    }

    const TTL: Duration = Duration::from_secs(30);

    /// Whose token `token` was, redeeming it.
    fn who(s: &MemoryTokenStore, token: &str) -> Option<AccountId> {
        s.redeem(token).unwrap().map(|r| r.account)
    }

    #[test]
    fn redeemed_tokens_tell_their_time_left_and_can_be_put_back() {
        let (s, clock) = store(10);
        s.issue("t", 9, TTL).unwrap();
        clock.advance(Duration::from_secs(10));
        let r = s.redeem("t").unwrap().unwrap();
        assert_eq!(r.account, 9);
        assert_eq!(r.ttl_left, Duration::from_secs(20));
        s.issue("t", r.account, r.ttl_left).unwrap();
        clock.advance(Duration::from_secs(20));
        assert_eq!(who(&s, "t"), None);
    }

    #[test]
    fn tokens_are_single_use() {
        let (s, _) = store(10);
        s.issue("t1", 7, TTL).unwrap();
        s.issue("t2", 8, TTL).unwrap();
        assert_eq!(who(&s, "t1"), Some(7));
        assert_eq!(who(&s, "t1"), None);
        assert_eq!(who(&s, "unknown"), None);
        assert_eq!(who(&s, "t2"), Some(8));
    }

    #[test]
    fn tokens_expire() {
        let (s, clock) = store(10);
        s.issue("a", 1, TTL).unwrap();
        s.issue("b", 2, TTL).unwrap();
        clock.advance(TTL - Duration::from_millis(1));
        assert_eq!(who(&s, "a"), Some(1));
        clock.advance(Duration::from_millis(1));
        assert_eq!(who(&s, "b"), None);
        s.issue("zero", 3, Duration::ZERO).unwrap();
        assert_eq!(who(&s, "zero"), None);
    }

    #[test]
    fn failures_count_within_window_then_reset() {
        let (s, clock) = store(10);
        let w = Duration::from_secs(300);
        assert_eq!(s.failures("user:a").unwrap(), 0);
        assert_eq!(s.note_failure("user:a", w).unwrap(), 1);
        clock.advance(Duration::from_secs(100));
        assert_eq!(s.note_failure("user:a", w).unwrap(), 2);
        assert_eq!(s.note_failure("user:b", w).unwrap(), 1);
        clock.advance(Duration::from_secs(199));
        assert_eq!(s.note_failure("user:a", w).unwrap(), 3);
        assert_eq!(s.failures("user:a").unwrap(), 3);
        // The window started at the first failure: 300 s after it, all gone.
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.failures("user:a").unwrap(), 0);
        assert_eq!(s.note_failure("user:a", w).unwrap(), 1);
        // user:b's window started 100 s later and is still open.
        assert_eq!(s.failures("user:b").unwrap(), 1);
    }

    #[test]
    fn clear_failures_forgets_the_key_only() {
        let (s, _) = store(10);
        let w = Duration::from_secs(60);
        s.note_failure("k", w).unwrap();
        s.note_failure("k", w).unwrap();
        s.note_failure("other", w).unwrap();
        s.clear_failures("k").unwrap();
        s.clear_failures("never-seen").unwrap();
        assert_eq!(s.failures("k").unwrap(), 0);
        assert_eq!(s.failures("other").unwrap(), 1);
    }

    #[test]
    fn full_store_refuses_new_tokens_until_some_expire() {
        let (s, clock) = store(3);
        s.issue("a", 1, TTL).unwrap();
        s.issue("b", 2, TTL).unwrap();
        clock.advance(Duration::from_secs(10));
        s.issue("c", 3, TTL).unwrap();
        assert!(matches!(
            s.issue("d", 4, TTL),
            Err(StoreError::Unavailable(msg)) if msg == "token store full"
        ));
        // A live token is never replaced.
        assert!(matches!(
            s.issue("c", 4, TTL),
            Err(StoreError::Internal(msg)) if msg == "token already issued"
        ));
        // A redeemed token frees its slot.
        assert_eq!(who(&s, "a"), Some(1));
        s.issue("d", 4, TTL).unwrap();
        assert!(s.issue("e", 5, TTL).is_err());
        // Once "b" expires, a sweep makes room.
        clock.advance(Duration::from_secs(20));
        s.issue("e", 5, TTL).unwrap();
        assert_eq!(who(&s, "b"), None);
        assert_eq!(who(&s, "c"), Some(3));
        assert_eq!(who(&s, "d"), Some(4));
        assert_eq!(who(&s, "e"), Some(5));
    }

    #[test]
    fn failure_counters_are_bounded_too() {
        let (s, clock) = store(2);
        let w = Duration::from_secs(60);
        s.note_failure("a", w).unwrap();
        s.note_failure("b", w).unwrap();
        assert!(matches!(
            s.note_failure("c", w),
            Err(StoreError::Unavailable(_))
        ));
        // Existing keys still count.
        assert_eq!(s.note_failure("a", w).unwrap(), 2);
        clock.advance(w);
        assert_eq!(s.note_failure("c", w).unwrap(), 1);
    }

    #[test]
    fn expired_entries_are_swept_as_the_map_grows() {
        let (s, clock) = store(DEFAULT_CAPACITY);
        for i in 0..MIN_SWEEP_THRESHOLD {
            s.issue(&format!("old-{i}"), 1, TTL).unwrap();
        }
        clock.advance(TTL);
        // Reaching the threshold sweeps every expired entry.
        s.issue("fresh", 2, TTL).unwrap();
        assert_eq!(s.lock().tokens.len(), 1);
        assert_eq!(who(&s, "fresh"), Some(2));
    }

    #[test]
    fn huge_ttl_is_an_error_not_a_panic() {
        let (s, _) = store(10);
        assert!(s.issue("t", 1, Duration::MAX).is_err());
        assert!(s.note_failure("k", Duration::MAX).is_err());
    }
}
