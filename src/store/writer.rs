//! The ordered position writer (write-behind): players' positions are handed to it and written
//! by its own thread over its own store connection, so saves never wait behind password hashing
//! on the DB pool, and logins never wait behind saves.
//!
//! - Per player, order is kept by coalescing: the writer holds only each player's latest
//!   position, and one thread writes, so an older position can never overwrite a newer one. It
//!   also keeps memory bounded by the number of players.
//! - Batches: everything waiting is written as soon as the thread is free, `batch_rows` rows per
//!   call (one multi-row statement on MySQL). Shards hand over every player each
//!   `save_interval_ms` and a leaving player at once, so a write follows each of those.
//! - While the store fails, positions stay queued (at most `max_pending` players; the depth is
//!   logged and counted) and the writer retries every `retry_ms`, so the queue drains when the
//!   store comes back. A save beyond the bound is dropped and logged with the player id; so is
//!   anything still unwritten when a shutdown's grace period ends. Nothing is dropped silently.
//! - Until a position is written, [`PositionWriter::latest`] answers with it, so a player who
//!   leaves and re-enters this process at once comes back where it left, not where the store
//!   last saw it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hashbrown::HashMap;

use super::{AccountStore, WriterConfig};
use crate::model::{AccountId, Position};

/// How long a writer whose every handle was dropped (without [`PositionWriter::shutdown`])
/// keeps trying to write what it holds.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// While the store is down, the queue depth is logged this often.
const DEPTH_LOG_EVERY: Duration = Duration::from_secs(10);

/// Counters of a [`PositionWriter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Players whose latest position is not written yet (queued or being written).
    pub pending: usize,
    /// Positions written.
    pub written: u64,
    /// Saves dropped (over the bound, or left at shutdown), each logged with its player id.
    pub dropped: u64,
    /// Write attempts that failed (and were retried).
    pub failed_writes: u64,
}

/// Handle to the position writer. Cloning is cheap; all clones feed the same thread. When the
/// last clone is dropped without a [`shutdown`](Self::shutdown), the thread writes what it holds
/// (trying for a few seconds) and exits.
#[derive(Clone)]
pub struct PositionWriter {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for PositionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PositionWriter")
            .field("stats", &self.stats())
            .finish()
    }
}

/// Owned by the handles only (the thread holds `Shared`): its drop means no handle is left.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.request_stop(DROP_GRACE);
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    max_pending: usize,
    batch_rows: usize,
    retry: Duration,
    written: AtomicU64,
    dropped: AtomicU64,
    failed_writes: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    pending: HashMap<AccountId, Position>,
    /// Taken out of `pending` by the thread, being written.
    in_flight: HashMap<AccountId, Position>,
    /// Set by a shutdown: write what is left, until this deadline.
    stop_by: Option<Instant>,
    /// The thread has exited: saves are refused (and logged).
    stopped: bool,
}

impl PositionWriter {
    /// Starts the writer thread ("db-writer") with its own `store`.
    pub fn start(store: Box<dyn AccountStore>, cfg: &WriterConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            max_pending: cfg.max_pending.max(1),
            batch_rows: cfg.batch_rows.max(1),
            retry: cfg.retry(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed_writes: AtomicU64::new(0),
            thread: Mutex::new(None),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("db-writer".into())
            .spawn(move || run(&worker, store))?;
        *lock(&shared.thread) = Some(thread);
        Ok(Self {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// Queues the players' positions, replacing older ones of the same players, and wakes the
    /// thread. Never blocks on the store (the lock guards map updates only). A player beyond
    /// `max_pending`, or any save after the writer stopped, is dropped and logged with its id.
    pub fn save(&self, positions: &[(AccountId, Position)]) {
        if positions.is_empty() {
            return;
        }
        let shared = &self.handle.shared;
        let mut state = lock(&shared.state);
        if state.stopped {
            drop(state);
            for (player, position) in positions {
                tracing::error!(player, ?position, "position writer stopped: save dropped");
            }
            shared
                .dropped
                .fetch_add(positions.len() as u64, Ordering::Relaxed);
            return;
        }
        let mut dropped = Vec::new();
        for &(player, position) in positions {
            let len = state.pending.len();
            match state.pending.get_mut(&player) {
                Some(slot) => *slot = position,
                None if len < shared.max_pending => {
                    state.pending.insert(player, position);
                }
                None => dropped.push((player, position)),
            }
        }
        let pending = state.pending.len();
        drop(state);
        shared.wake.notify_all();
        if !dropped.is_empty() {
            shared
                .dropped
                .fetch_add(dropped.len() as u64, Ordering::Relaxed);
            for (player, position) in dropped {
                tracing::warn!(
                    player,
                    ?position,
                    pending,
                    "position writer full: save dropped"
                );
            }
        }
    }

    /// The latest position of `player` not yet written, if any.
    pub fn latest(&self, player: AccountId) -> Option<Position> {
        let state = lock(&self.handle.shared.state);
        state
            .pending
            .get(&player)
            .or_else(|| state.in_flight.get(&player))
            .copied()
    }

    /// The counters now.
    pub fn stats(&self) -> WriterStats {
        let shared = &self.handle.shared;
        let state = lock(&shared.state);
        // A player in flight and pending again counts once.
        let pending = state.pending.len()
            + state
                .in_flight
                .keys()
                .filter(|id| !state.pending.contains_key(*id))
                .count();
        WriterStats {
            pending,
            written: shared.written.load(Ordering::Relaxed),
            dropped: shared.dropped.load(Ordering::Relaxed),
            failed_writes: shared.failed_writes.load(Ordering::Relaxed),
        }
    }

    /// Writes everything queued, retrying a failing store until `grace` has passed (then what
    /// is left is dropped, each player logged), and joins the thread. Later saves are refused.
    /// Idempotent.
    pub fn shutdown(&self, grace: Duration) {
        let shared = &self.handle.shared;
        shared.request_stop(grace);
        let thread = lock(&shared.thread).take();
        if let Some(thread) = thread {
            if thread.join().is_err() {
                tracing::error!("position writer thread panicked");
            }
        }
    }
}

impl Shared {
    fn request_stop(&self, grace: Duration) {
        let mut state = lock(&self.state);
        if state.stop_by.is_none() {
            state.stop_by = Some(Instant::now() + grace);
        }
        drop(state);
        self.wake.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the maps consistent; a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer thread: take a batch, write it, put it back if that failed, repeat.
fn run(shared: &Shared, mut store: Box<dyn AccountStore>) {
    let mut outage: Option<(Instant, Instant)> = None; // (since, last depth log)
    loop {
        let batch = {
            let mut state = lock(&shared.state);
            loop {
                if !state.pending.is_empty() {
                    break;
                }
                if state.stop_by.is_some() {
                    state.stopped = true;
                    return;
                }
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let ids: Vec<AccountId> = state
                .pending
                .keys()
                .take(shared.batch_rows)
                .copied()
                .collect();
            let mut batch = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(position) = state.pending.remove(&id) {
                    state.in_flight.insert(id, position);
                    batch.push((id, position));
                }
            }
            batch
        };

        let result = store.save_positions(&batch);
        let mut state = lock(&shared.state);
        match result {
            Ok(()) => {
                state.in_flight.clear();
                shared
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if let Some((since, _)) = outage.take() {
                    tracing::info!(
                        pending = state.pending.len(),
                        held_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "position writer: store back, writing held saves"
                    );
                }
            }
            Err(e) => {
                shared.failed_writes.fetch_add(1, Ordering::Relaxed);
                let in_flight = std::mem::take(&mut state.in_flight);
                for (id, position) in in_flight {
                    // A newer save that arrived meanwhile wins.
                    state.pending.entry(id).or_insert(position);
                }
                let now = Instant::now();
                let depth = state.pending.len();
                match &mut outage {
                    None => {
                        tracing::warn!(error = %e, pending = depth, "position writer: store failed; holding saves and retrying");
                        outage = Some((now, now));
                    }
                    Some((_, last_log)) if now.duration_since(*last_log) >= DEPTH_LOG_EVERY => {
                        tracing::warn!(error = %e, pending = depth, "position writer: store still failing; saves held");
                        *last_log = now;
                    }
                    Some(_) => {}
                }
                if state.stop_by.is_some_and(|by| now >= by) {
                    state.stopped = true;
                    let left = std::mem::take(&mut state.pending);
                    drop(state);
                    shared
                        .dropped
                        .fetch_add(left.len() as u64, Ordering::Relaxed);
                    for (player, position) in left {
                        tracing::error!(
                            player,
                            ?position,
                            "position writer: store still failing at shutdown; save dropped"
                        );
                    }
                    return;
                }
                // Wait out the retry interval (saves arriving meanwhile do not cut it short),
                // but not past a shutdown deadline.
                let retry_at = now + shared.retry;
                loop {
                    let until = state.stop_by.map_or(retry_at, |by| by.min(retry_at));
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    state = shared
                        .wake
                        .wait_timeout(state, until - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::store::{AccountRecord, SqliteAccountStore, StoreError};

    fn pos(x: f32) -> Position {
        Position { x, y: 0.0, z: 0.0 }
    }

    fn cfg(max_pending: usize) -> WriterConfig {
        WriterConfig {
            max_pending,
            batch_rows: 3,
            retry_ms: 1,
        }
    }

    type Batches = Arc<Mutex<Vec<Vec<(AccountId, Position)>>>>;

    /// A store that records every batch and fails while `down` is set.
    #[derive(Clone, Default)]
    struct Recording {
        batches: Batches,
        down: Arc<AtomicBool>,
    }

    impl AccountStore for Recording {
        fn create_account(&mut self, _: &str, _: &str) -> Result<AccountId, StoreError> {
            unimplemented!()
        }
        fn find_by_username(&mut self, _: &str) -> Result<Option<AccountRecord>, StoreError> {
            unimplemented!()
        }
        fn load(&mut self, _: AccountId) -> Result<Option<AccountRecord>, StoreError> {
            unimplemented!()
        }
        fn save_positions(&mut self, p: &[(AccountId, Position)]) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("down".into()));
            }
            lock(&self.batches).push(p.to_vec());
            Ok(())
        }
        fn most_recent(&mut self, _: usize) -> Result<Vec<AccountRecord>, StoreError> {
            unimplemented!()
        }
    }

    /// Waits until the writer has nothing pending (the thread's progress is only visible
    /// through its counters).
    fn wait_drained(w: &PositionWriter) {
        while w.stats().pending > 0 {
            std::thread::yield_now();
        }
    }

    #[test]
    fn saves_are_written_in_batches_and_coalesced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        let mut setup = SqliteAccountStore::open(&path).unwrap();
        let ids: Vec<_> = (0..7)
            .map(|i| setup.create_account(&format!("p{i}"), "h").unwrap())
            .collect();
        let w = PositionWriter::start(
            Box::new(SqliteAccountStore::open(&path).unwrap()),
            &cfg(100),
        )
        .unwrap();
        let batch: Vec<_> = ids.iter().map(|&id| (id, pos(id as f32))).collect();
        w.save(&batch);
        w.save(&[(ids[0], pos(100.0))]);
        w.shutdown(Duration::from_secs(5));
        for &id in &ids {
            let want = if id == ids[0] { 100.0 } else { id as f32 };
            assert_eq!(setup.load(id).unwrap().unwrap().position, pos(want));
        }
        let stats = w.stats();
        assert_eq!((stats.pending, stats.dropped), (0, 0));
        assert!(stats.written >= 7);
    }

    #[test]
    fn a_down_store_holds_saves_until_it_is_back() {
        let store = Recording::default();
        store.down.store(true, Ordering::SeqCst);
        let w = PositionWriter::start(Box::new(store.clone()), &cfg(100)).unwrap();
        w.save(&[(1, pos(1.0)), (2, pos(2.0))]);
        while w.stats().failed_writes == 0 {
            std::thread::yield_now();
        }
        w.save(&[(1, pos(10.0))]);
        assert_eq!(w.latest(1), Some(pos(10.0)));
        assert_eq!(w.latest(2), Some(pos(2.0)));
        assert_eq!(w.latest(3), None);
        assert_eq!(w.stats().pending, 2);
        store.down.store(false, Ordering::SeqCst);
        wait_drained(&w);
        let written: HashMap<_, _> = lock(&store.batches).iter().flatten().copied().collect();
        assert_eq!(written.get(&1), Some(&pos(10.0)));
        assert_eq!(written.get(&2), Some(&pos(2.0)));
        assert_eq!(w.stats().dropped, 0);
        assert_eq!(w.latest(1), None);
        w.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn per_player_order_is_kept() {
        let store = Recording::default();
        let w = PositionWriter::start(Box::new(store.clone()), &cfg(100)).unwrap();
        for i in 0..500 {
            w.save(&[(1, pos(i as f32)), (2, pos(-(i as f32)))]);
        }
        w.shutdown(Duration::from_secs(5));
        let batches = lock(&store.batches);
        for player in [1u64, 2] {
            let seen: Vec<f32> = batches
                .iter()
                .flatten()
                .filter(|(id, _)| *id == player)
                .map(|(_, p)| p.x.abs())
                .collect();
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
            assert_eq!(seen.last(), Some(&499.0));
        }
    }

    #[test]
    fn beyond_the_bound_and_after_shutdown_saves_are_dropped_and_counted() {
        let store = Recording::default();
        store.down.store(true, Ordering::SeqCst);
        let w = PositionWriter::start(Box::new(store.clone()), &cfg(2)).unwrap();
        w.save(&[(1, pos(1.0)), (2, pos(2.0)), (3, pos(3.0))]);
        assert_eq!(w.stats().dropped, 1);
        // Known players still update.
        w.save(&[(2, pos(20.0))]);
        assert_eq!(w.stats().dropped, 1);
        // The store stays down past the grace period: both are dropped, and counted.
        w.shutdown(Duration::from_millis(20));
        assert_eq!(w.stats().dropped, 3);
        assert_eq!(w.stats().pending, 0);
        w.save(&[(4, pos(4.0))]);
        assert_eq!(w.stats().dropped, 4);
        assert!(lock(&store.batches).is_empty());
    }

    #[test]
    fn dropping_every_handle_still_writes_what_was_queued() {
        let store = Recording::default();
        let w = PositionWriter::start(Box::new(store.clone()), &cfg(100)).unwrap();
        w.save(&[(7, pos(7.0))]);
        let thread = lock(&w.handle.shared.thread).take().unwrap();
        drop(w);
        thread.join().unwrap();
        assert_eq!(lock(&store.batches).concat(), vec![(7, pos(7.0))]);
    }
}
