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
