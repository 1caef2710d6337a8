//! The DB thread pool: a few dedicated OS threads that run the blocking
//! store operations ([`crate::store::ops`]) for the shards.
//!
//! Shards call [`DbPool::submit`] on their hot path: it never blocks and
//! never takes a lock. It queues a boxed job on a bounded crossbeam channel
//! and hands back a [`DbReply`], a future that any executor can await.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures::channel::oneshot;
use futures::FutureExt as _;

use crate::store::{Services, StoreError};

/// Why a job did not produce an answer.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    /// The queue is full; the caller should answer "server busy".
    #[error("db pool queue full")]
    Busy,
    /// The pool is shut down, or the job was dropped without running.
    #[error("db pool stopped")]
    Stopped,
    /// The job panicked; the pool thread survived it.
    #[error("db job panicked")]
    JobPanicked,
}

type Job = Box<dyn FnOnce(&mut Services) + Send>;

/// Where a job's answer is handed to the task waiting for it.
///
/// Without a route the DB thread completes the reply itself, waking the waiter from its own
/// thread (right for executors whose wakers are meant for that, like tokio's). A glommio shard
/// routes answers through its mailbox so that its tasks are only ever woken on their own thread.
pub trait ReplyRoute: Send + Sync {
    /// Runs `handover` where the waiter can be woken; dropping it instead resolves the reply to
    /// [`PoolError::Stopped`].
    fn deliver(&self, handover: Box<dyn FnOnce() + Send>);
}

enum Msg {
    Job(Job),
    /// Ends the one worker that receives it.
    Stop,
}

/// Handle to the DB pool. Cloning is cheap (a channel sender and an
/// `Arc`); all clones drive the same threads. `Send + Sync`.
///
/// Shutdown design: each handle holds the `Sender` itself, so `submit`
/// needs no lock, and shutdown cannot simply drop "the" sender. Instead
/// [`shutdown`](Self::shutdown) sets an atomic `stopping` flag (later
/// submits fail fast with [`PoolError::Stopped`]) and then queues one
/// `Stop` message per worker behind the jobs already queued; the channel is
/// FIFO, so every earlier job is taken and run before the last worker sees
/// its `Stop`. After joining the workers, shutdown drops whatever a submit
/// racing with the flag slipped into the queue, so every [`DbReply`]
/// resolves. If every handle is dropped without a shutdown, the workers
/// drain the queue and exit on their own.
#[derive(Clone)]
pub struct DbPool {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
}

struct Shared {
    stopping: AtomicBool,
    threads: usize,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// A receiver kept for shutdown to drain jobs left behind the `Stop`s.
    leftover: Mutex<Option<Receiver<Msg>>>,
}

impl fmt::Debug for DbPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbPool")
            .field("threads", &self.shared.threads)
            .field("queued", &self.tx.len())
            .field("stopping", &self.shared.stopping.load(Ordering::Relaxed))
            .finish()
    }
}

impl DbPool {
    /// Starts `threads` named threads ("db-0", ...) sharing a queue of at
    /// most `queue_capacity` jobs. Each thread calls `make()` once to build
    /// its own [`Services`] (its own SQLite connection). Returns once every
    /// thread is ready. If any `make()` fails (or panics), or a thread
    /// cannot be spawned, start stops and joins the threads it started and
    /// returns that error. Zero threads or a zero capacity is
    /// [`StoreError::Internal`].
    pub fn start(
        threads: usize,
        queue_capacity: usize,
        make: impl Fn() -> Result<Services, StoreError> + Send + Sync + 'static,
    ) -> Result<DbPool, StoreError> {
        if threads == 0 || queue_capacity == 0 {
            return Err(StoreError::Internal(format!(
                "db pool needs at least one thread and queue slot \
                 (got {threads} threads, capacity {queue_capacity})"
            )));
        }
        let (tx, rx) = crossbeam_channel::bounded::<Msg>(queue_capacity);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(threads);
        let make = Arc::new(make);
        let mut handles = Vec::with_capacity(threads);
        let mut failure = None;

        for i in 0..threads {
            let rx = rx.clone();
            let ready = ready_tx.clone();
            let make = Arc::clone(&make);
            let spawned = thread::Builder::new()
                .name(format!("db-{i}"))
                .spawn(move || worker(&rx, ready, &*make));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    failure = Some(StoreError::Internal(format!("cannot spawn db thread: {e}")));
                    break;
                }
            }
        }
        drop(ready_tx);
        drop(make);

        if failure.is_none() {
            for _ in 0..handles.len() {
                match ready_rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                    Err(_) => {
                        failure = Some(StoreError::Internal("db thread ended during start".into()));
                        break;
                    }
                }
            }
        }

        if let Some(e) = failure {
            // With the only sender gone, ready workers see a disconnected
            // queue and return.
            drop(tx);
            for handle in handles {
                let _ = handle.join();
            }
            tracing::error!(error = %e, "db pool failed to start");
            return Err(e);
        }

        tracing::info!(threads, queue_capacity, "db pool started");
        Ok(DbPool {
            tx,
            shared: Arc::new(Shared {
                stopping: AtomicBool::new(false),
                threads,
                handles: Mutex::new(handles),
                leftover: Mutex::new(Some(rx)),
            }),
        })
    }

    /// Queues `job` without blocking or locking. A full queue gives
    /// [`PoolError::Busy`] at once, a shut-down pool
    /// [`PoolError::Stopped`]. The job runs on some pool thread with that
    /// thread's [`Services`]; its result (or [`PoolError::JobPanicked`])
    /// arrives through the returned [`DbReply`].
    pub fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Services) -> T + Send + 'static,
    ) -> Result<DbReply<T>, PoolError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(PoolError::Stopped);
        }
        self.enqueue(None, job)
    }

    /// Like [`submit`](Self::submit), but the answer is handed over through `route` (a glommio
    /// shard's mailbox), so the waiting task is woken on its own thread rather than by the DB
    /// thread.
    pub fn submit_routed<T: Send + 'static>(
        &self,
        route: Arc<dyn ReplyRoute>,
        job: impl FnOnce(&mut Services) -> T + Send + 'static,
    ) -> Result<DbReply<T>, PoolError> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return Err(PoolError::Stopped);
        }
        self.enqueue(Some(route), job)
    }

    /// [`submit`](Self::submit) without the `stopping` check.
    fn enqueue<T: Send + 'static>(
        &self,
        route: Option<Arc<dyn ReplyRoute>>,
        job: impl FnOnce(&mut Services) -> T + Send + 'static,
    ) -> Result<DbReply<T>, PoolError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let wrapped: Job = Box::new(move |services: &mut Services| {
            let outcome = catch_unwind(AssertUnwindSafe(|| job(services))).map_err(|_| {
                tracing::error!(
                    thread = thread::current().name().unwrap_or("?"),
                    "db job panicked"
                );
                PoolError::JobPanicked
            });
            // The caller may have given up waiting; that is fine.
            let handover = move || {
                let _ = reply_tx.send(outcome);
            };
            match route {
                Some(route) => route.deliver(Box::new(handover)),
                None => handover(),
            }
        });
        match self.tx.try_send(Msg::Job(wrapped)) {
            Ok(()) => Ok(DbReply { rx: reply_rx }),
            Err(TrySendError::Full(_)) => Err(PoolError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(PoolError::Stopped),
        }
    }

    /// Stops taking jobs, runs every job already queued, and joins the
    /// threads. Idempotent; concurrent callers all return once the threads
    /// are joined. Must not be called from inside a job (the calling
    /// thread is then not joined, and may wait for queue room forever if it
    /// is the only worker and the queue is full).
    pub fn shutdown(&self) {
        self.begin_shutdown();
        self.join_workers();
    }

    /// Sets the flag and queues one `Stop` per worker (blocking while the
    /// queue is full; the workers are draining it).
    fn begin_shutdown(&self) {
        if self.shared.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::info!("db pool shutting down");
        for _ in 0..self.shared.threads {
            if self.tx.send(Msg::Stop).is_err() {
                break;
            }
        }
    }

    fn join_workers(&self) {
        // Held while joining, so a second caller waits for the first.
        let mut handles = lock(&self.shared.handles);
        let me = thread::current().id();
        let mut joined_all = true;
        for handle in handles.drain(..) {
            if handle.thread().id() == me {
                joined_all = false;
                continue;
            }
            if handle.join().is_err() {
                tracing::error!("db thread panicked");
            }
        }
        if joined_all {
            if let Some(rx) = lock(&self.shared.leftover).take() {
                // Dropping a job drops its reply sender: the DbReply
                // resolves to Stopped.
                let dropped = rx.try_iter().filter(|m| matches!(m, Msg::Job(_))).count();
                if dropped > 0 {
                    tracing::warn!(dropped, "db jobs queued after shutdown were dropped");
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn worker(
    rx: &Receiver<Msg>,
    ready: Sender<Result<(), StoreError>>,
    make: &(dyn Fn() -> Result<Services, StoreError> + Send + Sync),
) {
    let made = catch_unwind(AssertUnwindSafe(make))
        .unwrap_or_else(|_| Err(StoreError::Internal("db thread set-up panicked".into())));
    let mut services = match made {
        Ok(services) => services,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    while let Ok(msg) = rx.recv() {
        match msg {
            // Jobs catch their own panics.
            Msg::Job(job) => job(&mut services),
            Msg::Stop => break,
        }
    }
}

/// The answer to a submitted job: a future resolving to the job's result,
/// [`PoolError::JobPanicked`] if it panicked, or [`PoolError::Stopped`] if
/// it was dropped without running. Awaitable from any executor (it wraps a
/// `futures` oneshot channel). Dropping it does not cancel the job.
#[must_use = "a DbReply does nothing unless awaited; the job runs anyway"]
#[derive(Debug)]
pub struct DbReply<T> {
    rx: oneshot::Receiver<Result<T, PoolError>>,
}

impl<T> Future for DbReply<T> {
    type Output = Result<T, PoolError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.rx.poll_unpin(cx) {
            Poll::Ready(Ok(outcome)) => Poll::Ready(outcome),
            Poll::Ready(Err(oneshot::Canceled)) => Poll::Ready(Err(PoolError::Stopped)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use futures::executor::block_on;

    use super::*;
    use crate::store::ops::{login, register, LoginOutcome, RegisterOutcome};
    use crate::store::{
        Argon2Config, MemoryTokenStore, PasswordHasher, SqliteAccountStore, StoreConfig,
        TokensConfig,
    };

    const TINY: Argon2Config = Argon2Config {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn memory_services() -> Result<Services, StoreError> {
        Ok(Services {
            accounts: Box::new(SqliteAccountStore::open_in_memory()?),
            tokens: Box::new(Arc::new(MemoryTokenStore::new())),
            hasher: PasswordHasher::new(&TINY)?,
            token_ttl: Duration::from_secs(30),
            max_failed_logins: 5,
            failed_login_window: Duration::from_secs(300),
            writer: None,
        })
    }

    /// A job that reports it started, then waits until the test opens the
    /// gate: it pins the pool's only thread deterministically.
    fn blocker(pool: &DbPool) -> (DbReply<()>, crossbeam_channel::Sender<()>) {
        let (started_tx, started_rx) = crossbeam_channel::bounded(1);
        let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(1);
        let reply = pool
            .submit(move |_| {
                started_tx.send(()).unwrap();
                gate_rx.recv().unwrap();
            })
            .unwrap();
        started_rx.recv().unwrap();
        (reply, gate_tx)
    }

    #[test]
    fn pool_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<DbPool>();
    }

    #[test]
    fn routed_answers_wait_for_the_route_to_hand_them_over() {
        type Handover = Box<dyn FnOnce() + Send>;
        struct Collect(Mutex<Vec<Handover>>, crossbeam_channel::Sender<()>);
        impl ReplyRoute for Collect {
            fn deliver(&self, handover: Handover) {
                self.0.lock().unwrap().push(handover);
                let _ = self.1.send(());
            }
        }
        let pool = DbPool::start(1, 4, memory_services).unwrap();
        let (delivered_tx, delivered_rx) = crossbeam_channel::unbounded();
        let route = Arc::new(Collect(Mutex::new(Vec::new()), delivered_tx));
        let mut reply = pool.submit_routed(route.clone(), |_| 7).unwrap();
        delivered_rx.recv().unwrap();
        // The job has run, but its answer waits for the route.
        assert!(futures::FutureExt::now_or_never(&mut reply).is_none());
        let handovers: Vec<Handover> = route.0.lock().unwrap().drain(..).collect();
        for handover in handovers {
            handover();
        }
        assert_eq!(block_on(reply), Ok(7));
        pool.shutdown();
    }

    #[test]
    fn jobs_run_on_named_threads_and_answer() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = StoreConfig {
            sqlite_path: dir.path().join("accounts.db"),
            argon2: TINY,
            ..StoreConfig::default()
        };
        let backend = crate::store::open(&cfg, &TokensConfig::default()).unwrap();
        let pool = DbPool::start(3, 32, backend.services()).unwrap();

        let created = block_on(pool.submit(|s| register(s, "Alice", "pw")).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(created, RegisterOutcome::Created(1));

        let replies: Vec<_> = (0..20)
            .map(|_| {
                pool.submit(|s| {
                    let name = thread::current().name().map(str::to_owned);
                    let out = login(s, "alice", "pw", "127.0.0.1".parse().unwrap());
                    (name, out)
                })
                .unwrap()
            })
            .collect();
        for reply in replies {
            let (name, out) = block_on(reply).unwrap();
            assert!(name.unwrap().starts_with("db-"));
            assert!(matches!(out, Ok(LoginOutcome::Ok { account_id: 1, .. })));
        }
        pool.shutdown();
    }

    #[test]
    fn full_queue_is_busy_at_once() {
        let pool = DbPool::start(1, 2, memory_services).unwrap();
        let (blocked, gate) = blocker(&pool);
        let a = pool.submit(|_| 1).unwrap();
        let b = pool.submit(|_| 2).unwrap();
        assert_eq!(pool.submit(|_| 3).unwrap_err(), PoolError::Busy);
        gate.send(()).unwrap();
        block_on(blocked).unwrap();
        assert_eq!(block_on(a), Ok(1));
        assert_eq!(block_on(b), Ok(2));
        assert_eq!(block_on(pool.submit(|_| 4).unwrap()), Ok(4));
        pool.shutdown();
    }

    #[test]
    fn shutdown_runs_queued_jobs_then_refuses() {
        let pool = DbPool::start(1, 8, memory_services).unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let (blocked, gate) = blocker(&pool);
        let queued: Vec<_> = (0..3)
            .map(|i| {
                let ran = Arc::clone(&ran);
                pool.submit(move |_| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    i
                })
                .unwrap()
            })
            .collect();

        pool.begin_shutdown();
        assert_eq!(pool.submit(|_| ()).unwrap_err(), PoolError::Stopped);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        gate.send(()).unwrap();
        pool.shutdown();

        assert_eq!(ran.load(Ordering::SeqCst), 3);
        block_on(blocked).unwrap();
        for (i, reply) in queued.into_iter().enumerate() {
            assert_eq!(block_on(reply), Ok(i));
        }
        assert_eq!(pool.clone().submit(|_| ()).unwrap_err(), PoolError::Stopped);
        pool.shutdown();
    }

    #[test]
    fn job_slipping_in_after_stop_resolves_stopped() {
        let pool = DbPool::start(1, 8, memory_services).unwrap();
        let (blocked, gate) = blocker(&pool);
        pool.begin_shutdown();
        // What a submit racing with the flag could do: queue behind the Stop.
        let late = pool.enqueue(None, |_| ()).unwrap();
        gate.send(()).unwrap();
        pool.shutdown();
        block_on(blocked).unwrap();
        assert_eq!(block_on(late), Err(PoolError::Stopped));
    }

    #[test]
    fn panicking_job_answers_and_pool_keeps_serving() {
        let pool = DbPool::start(1, 4, memory_services).unwrap();
        let reply = pool.submit(|_| -> u32 { panic!("boom") }).unwrap();
        assert_eq!(block_on(reply), Err(PoolError::JobPanicked));
        let reply = pool
            .submit(|s| s.accounts.create_account("after", "h"))
            .unwrap();
        assert_eq!(block_on(reply).unwrap().unwrap(), 1);
        pool.shutdown();
    }

    #[test]
    fn failing_make_fails_start_and_stops_started_threads() {
        let tokens = Arc::new(MemoryTokenStore::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let make = {
            let tokens = Arc::clone(&tokens);
            let calls = Arc::clone(&calls);
            move || {
                if calls.fetch_add(1, Ordering::SeqCst) == 1 {
                    return Err(StoreError::Unavailable("no db for you".into()));
                }
                let mut s = memory_services()?;
                s.tokens = Box::new(Arc::clone(&tokens));
                Ok(s)
            }
        };
        let err = DbPool::start(3, 4, make).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(m) if m == "no db for you"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Every Services built and the factory itself are gone: the threads
        // that succeeded were stopped and joined.
        assert_eq!(Arc::strong_count(&tokens), 1);
    }

    #[test]
    fn panicking_make_fails_start() {
        let err = DbPool::start(2, 4, || -> Result<Services, StoreError> { panic!("setup") })
            .unwrap_err();
        assert!(matches!(err, StoreError::Internal(_)));
    }

    #[test]
    fn zero_threads_or_capacity_is_an_error() {
        assert!(DbPool::start(0, 4, memory_services).is_err());
        assert!(DbPool::start(1, 0, memory_services).is_err());
    }

    #[test]
    fn dropped_handles_let_workers_finish_queued_jobs() {
        let pool = DbPool::start(1, 4, memory_services).unwrap();
        let (blocked, gate) = blocker(&pool);
        let queued = pool.submit(|_| 7).unwrap();
        drop(pool);
        gate.send(()).unwrap();
        block_on(blocked).unwrap();
        assert_eq!(block_on(queued), Ok(7));
    }
}
