//! The account lookup cache (seed 000's design): cache-aside with lazy load, a TTL, a sliding
//! TTL, optional eager preload, a cleanup thread that wakes at once on shutdown, and hit, miss
//! and eviction counters.
//!
//! Where it lives: one per process, shared by the DB threads and the position writer (it sits
//! in front of each thread's [`AccountStore`] as a [`CachedAccountStore`]). Not per shard:
//! shards never look accounts up, the DB threads do. Not in Redis: a Redis round trip costs
//! about what a MySQL primary-key lookup costs on the same network, so it would save MySQL
//! load but not latency, and it would add a second thing to keep coherent. The README's
//! architecture section says more.
//!
//! What it covers: lookups by username ([`AccountStore::find_by_username`], the login path).
//! Every write through a [`CachedAccountStore`] that touches a cached account keeps it
//! coherent, after the write: a registration invalidates its name; a position save updates the
//! entries it touches in place (write-through: invalidating would empty the cache of exactly the
//! players who reconnect, since every player's position is saved when it leaves); a failed save
//! leaves them as they are (the position writer retries it, and its success updates them; a
//! failing store must not empty the cache it is the fallback for). A lookup that raced with any
//! of these does not put what it read back. Loading by id for entering the world
//! ([`AccountStore::load`]) always reads the store: another world process may have saved the
//! position since, and a process-local cache cannot know.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::{username_key, AccountRecord, AccountStore, CacheConfig, StoreError};
use crate::model::{AccountId, Position};

/// Lock shards: DB threads rarely wait for each other.
const SHARDS: usize = 16;

type Clock = Box<dyn Fn() -> Instant + Send + Sync>;

/// The counters of an [`AccountCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that went to the store.
    pub misses: u64,
    /// Entries removed because they expired or made room for others.
    pub evictions: u64,
    /// Entries now held.
    pub entries: usize,
}

struct Entry {
    record: AccountRecord,
    expires: Instant,
}

/// Cached accounts by username key, shared by the threads of one process.
pub struct AccountCache {
    ttl: Duration,
    sliding: bool,
    per_shard: usize,
    shards: Box<[Mutex<HashMap<String, Entry>>]>,
    /// Which key holds each cached id (for invalidation by id).
    keys_of_ids: Mutex<HashMap<AccountId, String>>,
    /// Bumped by every invalidation: a lookup that started before one does not fill the cache.
    epoch: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    clock: Clock,
    hasher: hashbrown::DefaultHashBuilder,
}

impl std::fmt::Debug for AccountCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountCache")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl AccountCache {
    /// An empty cache with the TTL, sliding and size of `cfg`, on the system clock.
    pub fn new(cfg: &CacheConfig) -> Self {
        Self::with_clock(cfg, Instant::now)
    }

    /// An empty cache reading time from `clock` (which must never go backwards).
    pub fn with_clock(
        cfg: &CacheConfig,
        clock: impl Fn() -> Instant + Send + Sync + 'static,
    ) -> Self {
        Self {
            ttl: cfg.ttl(),
            sliding: cfg.sliding,
            per_shard: cfg.max_entries.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            keys_of_ids: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            clock: Box::new(clock),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    /// The counters now.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: self.shards.iter().map(|s| lock(s).len()).sum(),
        }
    }

    /// The account cached under `key` (a [`username_key`]) if live, counted as a hit (and its
    /// life extended when sliding) or a miss.
    pub fn get(&self, key: &str) -> Option<AccountRecord> {
        let now = (self.clock)();
        let mut shard = lock(self.shard(key));
        let live = match shard.get_mut(key) {
            Some(entry) if entry.expires > now => {
                if self.sliding {
                    entry.expires = now + self.ttl;
                }
                Some(entry.record.clone())
            }
            Some(_) => {
                let expired = shard.remove(key);
                drop(shard);
                self.evictions.fetch_add(1, Ordering::Relaxed);
                if let Some(e) = expired {
                    self.forget_id(e.record.id, key);
                }
                None
            }
            None => None,
        };
        let counter = if live.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        live
    }

    /// The current invalidation epoch: take it before reading the store, hand it to
    /// [`put`](Self::put) after.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches `record` under its username key, unless an invalidation happened since `epoch`
    /// (then what was read may be stale). A full shard drops expired entries first, then
    /// evicts an arbitrary one.
    pub fn put(&self, record: AccountRecord, epoch: u64) {
        if self.epoch() != epoch {
            return;
        }
        let key = username_key(&record.username);
        let id = record.id;
        let now = (self.clock)();
        let mut evicted = Vec::new();
        {
            let mut shard = lock(self.shard(&key));
            if !shard.contains_key(&key) && shard.len() >= self.per_shard {
                shard.retain(|k, e| {
                    let keep = e.expires > now;
                    if !keep {
                        evicted.push((e.record.id, k.clone()));
                    }
                    keep
                });
                if shard.len() >= self.per_shard {
                    let victim = shard.keys().next().cloned();
                    if let Some(e) = victim.as_ref().and_then(|k| shard.remove(k)) {
                        evicted.push((e.record.id, username_key(&e.record.username)));
                    }
                }
            }
            shard.insert(
                key.clone(),
                Entry {
                    record,
                    expires: now + self.ttl,
                },
            );
        }
        self.evictions
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        for (id, k) in evicted {
            self.forget_id(id, &k);
        }
        lock(&self.keys_of_ids).insert(id, key);
    }

    /// Drops the entry under `key` (after a write to that account).
    pub fn invalidate_key(&self, key: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(e) = lock(self.shard(key)).remove(key) {
            self.forget_id(e.record.id, key);
        }
    }

    /// Drops the entries of `ids` (after a write to those accounts).
    pub fn invalidate_ids(&self, ids: impl IntoIterator<Item = AccountId>) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let keys: Vec<(AccountId, String)> = {
            let mut map = lock(&self.keys_of_ids);
            ids.into_iter()
                .filter_map(|id| map.remove(&id).map(|k| (id, k)))
                .collect()
        };
        for (id, key) in keys {
            let mut shard = lock(self.shard(&key));
            if shard.get(&key).is_some_and(|e| e.record.id == id) {
                shard.remove(&key);
            }
        }
    }

    /// Sets the position of the cached entries of these accounts (after they were saved).
    pub fn update_positions(&self, positions: &[(AccountId, Position)]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let keys: Vec<(AccountId, Position, String)> = {
            let map = lock(&self.keys_of_ids);
            positions
                .iter()
                .filter_map(|(id, p)| map.get(id).map(|k| (*id, *p, k.clone())))
                .collect()
        };
        for (id, position, key) in keys {
            if let Some(entry) = lock(self.shard(&key)).get_mut(&key) {
                if entry.record.id == id {
                    entry.record.position = position;
                }
            }
        }
    }

    /// Removes every expired entry; returns how many.
    pub fn cleanup(&self) -> usize {
        let now = (self.clock)();
        let mut evicted = Vec::new();
        for shard in self.shards.iter() {
            lock(shard).retain(|k, e| {
                let keep = e.expires > now;
                if !keep {
                    evicted.push((e.record.id, k.clone()));
                }
                keep
            });
        }
        let n = evicted.len();
        self.evictions.fetch_add(n as u64, Ordering::Relaxed);
        for (id, k) in evicted {
            self.forget_id(id, &k);
        }
        n
    }

    /// Starts the cleanup thread: every `interval` it removes expired entries. It stops when
    /// the returned [`CacheCleaner`] is stopped or dropped (at once, not at its next tick), or
    /// when the cache is gone.
    pub fn start_cleaner(self: &Arc<Self>, interval: Duration) -> std::io::Result<CacheCleaner> {
        let stop = Arc::new(StopSignal::default());
        let cache: Weak<Self> = Arc::downgrade(self);
        let signal = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("cache-cleanup".into())
            .spawn(move || {
                while !signal.wait(interval) {
                    let Some(cache) = cache.upgrade() else { break };
                    let removed = cache.cleanup();
                    if removed > 0 {
                        tracing::debug!(removed, stats = ?cache.stats(), "cache cleanup");
                    }
                }
            })?;
        Ok(CacheCleaner {
            stop,
            handle: Some(handle),
        })
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Entry>> {
        let hash = self.hasher.hash_one(key);
        // The modulo keeps the index in range whatever the hash.
        &self.shards[(hash as usize) % SHARDS]
    }

    fn forget_id(&self, id: AccountId, key: &str) {
        let mut map = lock(&self.keys_of_ids);
        if map.get(&id).is_some_and(|k| k == key) {
            map.remove(&id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent; a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A flag with a condition variable: the cleaner sleeps on it and wakes at once when set.
#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopSignal {
    /// Waits up to `timeout`; true once stopped.
    fn wait(&self, timeout: Duration) -> bool {
        let guard = lock(&self.stopped);
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *guard
    }

    fn stop(&self) {
        *lock(&self.stopped) = true;
        self.wake.notify_all();
    }
}

/// The running cleanup thread of an [`AccountCache`]; stops it (and joins it) when stopped or
/// dropped.
pub struct CacheCleaner {
    stop: Arc<StopSignal>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for CacheCleaner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheCleaner")
            .field("running", &self.handle.is_some())
            .finish()
    }
}

impl CacheCleaner {
    /// Wakes the thread, which exits at once, and joins it. Idempotent.
    pub fn stop(&mut self) {
        self.stop.stop();
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("cache cleanup thread panicked");
            }
        }
    }
}

impl Drop for CacheCleaner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An [`AccountStore`] with the shared [`AccountCache`] in front (see the module doc for what
/// it covers).
pub struct CachedAccountStore {
    inner: Box<dyn AccountStore>,
    cache: Arc<AccountCache>,
}

impl CachedAccountStore {
    /// `inner` behind `cache`.
    pub fn new(inner: Box<dyn AccountStore>, cache: Arc<AccountCache>) -> Self {
        Self { inner, cache }
    }
}

impl AccountStore for CachedAccountStore {
    fn create_account(
        &mut self,
        username: &str,
        password_hash: &str,
    ) -> Result<AccountId, StoreError> {
        let created = self.inner.create_account(username, password_hash);
        self.cache.invalidate_key(&username_key(username));
        created
    }

    fn find_by_username(&mut self, username: &str) -> Result<Option<AccountRecord>, StoreError> {
        let key = username_key(username);
        if let Some(hit) = self.cache.get(&key) {
            return Ok(Some(hit));
        }
        let epoch = self.cache.epoch();
        let found = self.inner.find_by_username(username)?;
        if let Some(record) = &found {
            self.cache.put(record.clone(), epoch);
        }
        Ok(found)
    }

    /// Always the store: see the module doc.
    fn load(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        self.inner.load(id)
    }

    fn save_positions(&mut self, positions: &[(AccountId, Position)]) -> Result<(), StoreError> {
        self.inner.save_positions(positions)?;
        // Non-finite positions were skipped by the store: not copied either.
        let saved: Vec<_> = positions
            .iter()
            .filter(|(_, p)| p.is_finite())
            .copied()
            .collect();
        self.cache.update_positions(&saved);
        Ok(())
    }

    /// Reads from the store and caches what it read (eager preload).
    fn most_recent(&mut self, limit: usize) -> Result<Vec<AccountRecord>, StoreError> {
        let epoch = self.cache.epoch();
        let records = self.inner.most_recent(limit)?;
        for record in &records {
            self.cache.put(record.clone(), epoch);
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::store::SqliteAccountStore;

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
            self.millis
                .fetch_add(u64::try_from(d.as_millis()).unwrap(), Ordering::SeqCst);
        }
        fn now(&self) -> Instant {
            self.base + Duration::from_millis(self.millis.load(Ordering::SeqCst))
        }
    }

    fn cfg(ttl_secs: u64, sliding: bool, max_entries: usize) -> CacheConfig {
        CacheConfig {
            enabled: true,
            ttl_secs,
            sliding,
            max_entries,
            preload: 0,
            cleanup_interval_ms: 10,
        }
    }

    fn cache(c: &CacheConfig) -> (Arc<AccountCache>, ManualClock) {
        let clock = ManualClock::new();
        let c2 = clock.clone();
        (
            Arc::new(AccountCache::with_clock(c, move || c2.now())),
            clock,
        )
    }

    fn rec(id: AccountId, name: &str) -> AccountRecord {
        AccountRecord {
            id,
            username: name.into(),
            password_hash: format!("hash-{id}"),
            position: Position::default(),
        }
    }

    #[test]
    fn lazy_load_then_hits_and_counters() {
        let (cache, _) = cache(&cfg(60, false, 100));
        let mut inner = SqliteAccountStore::open_in_memory().unwrap();
        inner.create_account("Alice", "h").unwrap();
        let mut s = CachedAccountStore::new(Box::new(inner), cache.clone());
        assert!(s.find_by_username("alice").unwrap().is_some());
        assert_eq!(cache.stats().misses, 1);
        for name in ["ALICE", "alice", "Alice"] {
            assert_eq!(s.find_by_username(name).unwrap().unwrap().username, "Alice");
        }
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (3, 1, 1));
        // Unknown names are not cached: a registration elsewhere must be seen at once.
        assert!(s.find_by_username("bob").unwrap().is_none());
        assert!(s.find_by_username("bob").unwrap().is_none());
        assert_eq!(cache.stats().misses, 3);
    }

    #[test]
    fn entries_expire_and_sliding_keeps_used_ones() {
        let (fixed, clock) = cache(&cfg(10, false, 100));
        fixed.put(rec(1, "a"), fixed.epoch());
        clock.advance(Duration::from_secs(9));
        assert!(fixed.get("a").is_some());
        clock.advance(Duration::from_secs(1));
        assert!(fixed.get("a").is_none());
        assert_eq!(fixed.stats().evictions, 1);

        let (sliding, clock) = cache(&cfg(10, true, 100));
        sliding.put(rec(1, "a"), sliding.epoch());
        for _ in 0..5 {
            clock.advance(Duration::from_secs(9));
            assert!(sliding.get("a").is_some());
        }
        clock.advance(Duration::from_secs(10));
        assert!(sliding.get("a").is_none());
    }

    #[test]
    fn cleanup_removes_expired_entries() {
        let (c, clock) = cache(&cfg(10, false, 100));
        c.put(rec(1, "a"), c.epoch());
        c.put(rec(2, "b"), c.epoch());
        clock.advance(Duration::from_secs(5));
        c.put(rec(3, "c"), c.epoch());
        clock.advance(Duration::from_secs(5));
        assert_eq!(c.cleanup(), 2);
        let stats = c.stats();
        assert_eq!((stats.entries, stats.evictions), (1, 2));
        assert!(c.get("c").is_some());
    }

    #[test]
    fn a_full_cache_evicts_to_make_room() {
        let (c, _) = cache(&cfg(60, false, SHARDS));
        for i in 0..(SHARDS as u64 * 4) {
            c.put(rec(i, &format!("user{i}")), c.epoch());
        }
        let stats = c.stats();
        assert!(stats.entries <= SHARDS, "{stats:?}");
        assert_eq!(stats.evictions as usize, SHARDS * 4 - stats.entries);
        assert!(lock(&c.keys_of_ids).len() <= SHARDS);
    }

    #[test]
    fn writes_keep_what_they_cover_coherent() {
        let (cache, _) = cache(&cfg(60, false, 100));
        let mut inner = SqliteAccountStore::open_in_memory().unwrap();
        let id = inner.create_account("Alice", "h").unwrap();
        let mut s = CachedAccountStore::new(Box::new(inner), cache.clone());
        s.find_by_username("alice").unwrap();
        assert_eq!(cache.stats().entries, 1);
        let moved = Position {
            x: 1.0,
            y: 2.0,
            z: 3.0,
        };
        // A position save updates the entry in place: still a hit, with the new position.
        s.save_positions(&[(id, moved)]).unwrap();
        let hits = cache.stats().hits;
        assert_eq!(
            s.find_by_username("ALICE").unwrap().unwrap().position,
            moved
        );
        assert_eq!(cache.stats().hits, hits + 1);
        // Dropping by id (what a changed account would need).
        cache.invalidate_ids([id]);
        assert_eq!(cache.stats().entries, 0);
        s.find_by_username("alice").unwrap();
        assert_eq!(cache.stats().entries, 1);
        // Registering a clashing name goes to the store, and drops the entry.
        assert!(matches!(
            s.create_account("aLiCe", "h2"),
            Err(StoreError::AccountExists)
        ));
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn a_lookup_racing_a_write_does_not_fill_the_cache() {
        let (c, _) = cache(&cfg(60, false, 100));
        let before = c.epoch();
        c.invalidate_ids([1]);
        c.put(rec(1, "a"), before);
        assert!(c.get("a").is_none());
        let before = c.epoch();
        c.update_positions(&[(1, Position::default())]);
        c.put(rec(1, "a"), before);
        assert!(c.get("a").is_none());
        c.put(rec(1, "a"), c.epoch());
        assert!(c.get("a").is_some());
    }

    #[test]
    fn preload_fills_the_cache() {
        let (cache, _) = cache(&cfg(60, false, 100));
        let mut inner = SqliteAccountStore::open_in_memory().unwrap();
        for i in 0..5 {
            inner.create_account(&format!("u{i}"), "h").unwrap();
        }
        let mut s = CachedAccountStore::new(Box::new(inner), cache.clone());
        let got = s.most_recent(3).unwrap();
        assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![5, 4, 3]);
        assert_eq!(cache.stats().entries, 3);
        assert!(cache.get("u4").is_some());
        assert!(cache.get("u0").is_none());
    }

    #[test]
    fn the_cleaner_runs_and_stops_at_once() {
        let (c, clock) = cache(&cfg(1, false, 100));
        c.put(rec(1, "a"), c.epoch());
        clock.advance(Duration::from_secs(2));
        // An interval far longer than any test: stopping must not wait for it.
        let mut cleaner = c.start_cleaner(Duration::from_secs(3600)).unwrap();
        // Returns at once (else this test would hang for an hour).
        cleaner.stop();
        assert!(cleaner.handle.is_none());

        let mut fast = c.start_cleaner(Duration::from_millis(1)).unwrap();
        while c.stats().entries > 0 {
            std::thread::yield_now();
        }
        fast.stop();
        assert_eq!(c.stats().evictions, 1);
    }
}
