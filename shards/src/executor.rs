//! Starting one glommio executor per shard, each pinned to its core.

use std::future::Future;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

/// Where and how one shard runs.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    /// The shard's index, 0-based.
    pub id: usize,
    /// The CPU it is pinned to, or `None` to let the OS place it.
    pub core: Option<usize>,
    /// io_uring registered memory for the shard. Keep it small: locked memory is limited
    /// (`ulimit -l`), and network I/O does not use it.
    pub io_memory: usize,
}

/// A shard could not be started or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// glommio refused to build the executor (bad core id, io_uring unavailable, locked memory).
    #[error("shard {shard}: cannot start executor: {reason}")]
    Start {
        /// The shard.
        shard: usize,
        /// What glommio said.
        reason: String,
    },
    /// The shard's thread panicked or its executor failed.
    #[error("shard {shard}: {reason}")]
    Join {
        /// The shard.
        shard: usize,
        /// What happened.
        reason: String,
    },
}

/// The cores of this machine that are online, in order (one shard each by default).
pub fn online_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_else(|| vec![0])
}

/// Starts one executor thread per spec, running `make(spec)` as its main future. Returns the
/// join handles in spec order; a shard that fails to start stops nothing else, so the caller
/// should signal the started ones to shut down.
pub fn spawn_shards<G, F, T>(
    specs: &[ShardSpec],
    make: G,
) -> Result<Vec<ExecutorJoinHandle<T>>, ShardError>
where
    G: Fn(ShardSpec) -> F + Clone + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let mut handles = Vec::with_capacity(specs.len());
    for spec in specs {
        let make = make.clone();
        let run_spec = spec.clone();
        handles.push(spawn_shard(spec, move || make(run_spec))?);
    }
    Ok(handles)
}

/// Starts one shard's executor thread (named `shard-ID`, pinned to its core when it has one)
/// running `make()` as its main future, with the stall guard beside it.
pub fn spawn_shard<M, F, T>(spec: &ShardSpec, make: M) -> Result<ExecutorJoinHandle<T>, ShardError>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(spec.core.map_or(Placement::Unbound, Placement::Fixed))
        .name(&format!("shard-{}", spec.id))
        .io_memory(spec.io_memory)
        .spawn(move || async move {
            glommio::spawn_local(stall_guard()).detach();
            make().await
        })
        .map_err(|e| ShardError::Start {
            shard: spec.id,
            reason: e.to_string(),
        })
}

/// How often a shard's executor is woken even when it has nothing to do.
///
/// glommio 0.9 can put an executor to sleep while one of its tasks is ready to run: when its
/// preempt timer expires between the executor's I/O poll and its run of the task queues (a
/// thread descheduled at that moment, on a busy machine), it skips the queues and parks, and
/// nothing wakes it until some I/O or timer does (see docs/glommio-bugs.md). An always-pending
/// timer bounds that stall to this period; the wake-ups cost a few microseconds each.
pub const STALL_GUARD_PERIOD: std::time::Duration = std::time::Duration::from_millis(10);

/// Keeps a timer pending on the shard at all times (see [`STALL_GUARD_PERIOD`]).
async fn stall_guard() {
    loop {
        glommio::timer::sleep(STALL_GUARD_PERIOD).await;
    }
}

/// Waits for every shard, returning the first failure.
pub fn join_shards<T: Send + 'static>(
    handles: Vec<ExecutorJoinHandle<T>>,
) -> Result<Vec<T>, ShardError> {
    let mut out = Vec::with_capacity(handles.len());
    let mut first_error = None;
    for (shard, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(v) => out.push(v),
            Err(e) => {
                first_error.get_or_insert(ShardError::Join {
                    shard,
                    reason: e.to_string(),
                });
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Lets the shards of a pool leave together. glommio notifies a peer's executor when a channel
/// end is dropped, and that is not safe once the peer has exited; so every shard, after closing
/// its channels, arrives here and waits for the others before its executor exits.
#[derive(Debug, Clone)]
pub struct ExitGate {
    state: std::sync::Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>,
    total: usize,
}

impl ExitGate {
    /// A gate for `total` shards.
    pub fn new(total: usize) -> Self {
        Self {
            state: Default::default(),
            total,
        }
    }

    /// Arrives and waits until every shard has arrived, at most `timeout`; false on timeout
    /// (a shard that died). Blocks the calling thread: call it as a shard's very last step.
    pub fn arrive_and_wait(&self, timeout: std::time::Duration) -> bool {
        let (count, all_here) = &*self.state;
        let mut arrived = count
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *arrived += 1;
        all_here.notify_all();
        let (arrived, result) = all_here
            .wait_timeout_while(arrived, timeout, |n| *n < self.total)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(arrived);
        !result.timed_out()
    }
}

/// A small unpinned shard for the crate's own tests.
#[cfg(test)]
pub(crate) fn test_shard<M, F, T>(make: M) -> ExecutorJoinHandle<T>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let spec = ShardSpec {
        id: 0,
        core: None,
        io_memory: 64 * 1024,
    };
    spawn_shard(&spec, make).expect("a test shard starts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_shard_leaves_once_all_have_arrived() {
        let gate = ExitGate::new(3);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let gate = gate.clone();
                std::thread::spawn(move || gate.arrive_and_wait(Duration::from_secs(10)))
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
    }

    /// glommio parks with a task ready to run when its preempt timer fires at the wrong moment
    /// (docs/glommio-bugs.md). A short preempt timer makes that moment come now and then;
    /// without the guard the executor then sleeps with nothing to wake it and this test fails
    /// (1 run in 5 on a loaded machine; with a 100 µs timer 5 in 5, but a timer that short
    /// starves even a guarded executor under load, so the test would be flaky with it).
    #[test]
    fn the_stall_guard_wakes_an_executor_parked_with_a_ready_task() {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let _shard = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(64 * 1024)
            .preempt_timer(Duration::from_micros(500))
            .spawn(move || async move {
                glommio::spawn_local(stall_guard()).detach();
                for _ in 0..200 {
                    // Always ready, never waiting for I/O: only the task queue can run it.
                    glommio::spawn_local(async {
                        for _ in 0..10_000 {
                            futures_lite::future::yield_now().await;
                        }
                    })
                    .await;
                }
                let _ = done_tx.send(());
            })
            .unwrap();
        // A liveness bound, not a timing claim: the work takes a few seconds at most.
        assert!(
            done_rx.recv_timeout(Duration::from_secs(60)).is_ok(),
            "the executor stalled"
        );
    }

    #[test]
    fn a_missing_shard_times_out_instead_of_hanging() {
        let gate = ExitGate::new(2);
        assert!(!gate.arrive_and_wait(Duration::from_millis(20)));
    }
}
