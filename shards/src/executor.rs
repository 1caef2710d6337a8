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
        let placement = spec.core.map_or(Placement::Unbound, Placement::Fixed);
        let make = make.clone();
        let run_spec = spec.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{}", spec.id))
            .io_memory(spec.io_memory)
            .spawn(move || make(run_spec))
            .map_err(|e| ShardError::Start {
                shard: spec.id,
                reason: e.to_string(),
            })?;
        handles.push(handle);
    }
    Ok(handles)
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

    #[test]
    fn a_missing_shard_times_out_instead_of_hanging() {
        let gate = ExitGate::new(2);
        assert!(!gate.arrive_and_wait(Duration::from_millis(20)));
    }
}
