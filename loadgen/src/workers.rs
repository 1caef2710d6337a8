//! Loadgen threads: each runs its own current-thread tokio runtime (optionally pinned to a core)
//! and its share of the connections; a start gate lets every client begin the measured phase at
//! the same instant.

use std::future::Future;
use std::ops::Range;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::watch;

use crate::error::LoadgenError;

/// How many threads, and the cores they are pinned to (thread `i` on `cores[i % len]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerPlan {
    /// Threads.
    pub threads: usize,
    /// Cores to pin to; empty leaves placement to the OS.
    pub cores: Vec<usize>,
}

impl WorkerPlan {
    /// The core of thread `i`, if pinned.
    pub fn core_of(&self, i: usize) -> Option<usize> {
        (!self.cores.is_empty()).then(|| self.cores[i % self.cores.len()])
    }
}

/// The part of `0..total` worker `w` of `workers` takes: contiguous, sizes differing by at most one.
pub fn share(total: usize, workers: usize, w: usize) -> Range<usize> {
    let workers = workers.max(1);
    let base = total / workers;
    let extra = total % workers;
    let start = w * base + w.min(extra);
    let len = base + usize::from(w < extra);
    start..(start + len).min(total)
}

/// Starts one thread per worker, each running `make(i)` to completion on its own runtime.
pub fn spawn<T, F, Fut>(plan: &WorkerPlan, make: F) -> Result<Vec<JoinHandle<T>>, LoadgenError>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = T> + 'static,
{
    let mut handles = Vec::with_capacity(plan.threads);
    for i in 0..plan.threads.max(1) {
        let core = plan.core_of(i);
        let make = make.clone();
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                        eprintln!("warning: cannot pin loadgen thread {i} to core {core}");
                    }
                }
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    // Without a runtime the thread can do nothing; the OS refused an epoll fd.
                    Err(e) => panic!("cannot build a tokio runtime: {e}"),
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, make(i))
            })
            .map_err(|e| LoadgenError::Worker(format!("cannot start a thread: {e}")))?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Joins the workers, turning a panic into an error.
pub fn join<T>(handles: Vec<JoinHandle<T>>) -> Result<Vec<T>, LoadgenError> {
    handles
        .into_iter()
        .map(|h| {
            h.join().map_err(|panic| {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                LoadgenError::Worker(text)
            })
        })
        .collect()
}

/// What the clients wait for before the measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// Not yet.
    Closed,
    /// Begin; the measured window starts at this instant.
    Open(Instant),
    /// Something failed: stop.
    Abort,
}

/// The coordinator's side of the start gate.
#[derive(Debug)]
pub struct Gate {
    tx: watch::Sender<GateState>,
}

/// A client's side of the start gate.
#[derive(Debug, Clone)]
pub struct GateWaiter {
    rx: watch::Receiver<GateState>,
}

impl Gate {
    /// A closed gate and a waiter to clone into every worker.
    pub fn new() -> (Self, GateWaiter) {
        let (tx, rx) = watch::channel(GateState::Closed);
        (Self { tx }, GateWaiter { rx })
    }

    /// Lets everyone start; the window starts at `at`.
    pub fn open(&self, at: Instant) {
        self.tx.send_replace(GateState::Open(at));
    }

    /// Tells everyone waiting to give up.
    pub fn abort(&self) {
        self.tx.send_replace(GateState::Abort);
    }
}

impl GateWaiter {
    /// Resolves once the gate is aborted (never, if it opens).
    /// A dropped coordinator counts as an abort.
    pub async fn aborted(&mut self) {
        let _ = self.rx.wait_for(|s| *s == GateState::Abort).await;
    }

    /// Waits until the gate opens; the start instant, or [`LoadgenError::Aborted`].
    pub async fn wait(&mut self) -> Result<Instant, LoadgenError> {
        let state = self
            .rx
            .wait_for(|s| *s != GateState::Closed)
            .await
            .map(|s| *s)
            .unwrap_or(GateState::Abort);
        match state {
            GateState::Open(at) => Ok(at),
            _ => Err(LoadgenError::Aborted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_everything_once_and_differ_by_at_most_one() {
        for total in [0usize, 1, 2, 7, 10, 5002] {
            for workers in 1..=5 {
                let parts: Vec<_> = (0..workers).map(|w| share(total, workers, w)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts.last().unwrap().end, total);
                for pair in parts.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let lens: Vec<_> = parts.iter().map(|p| p.len()).collect();
                let (min, max) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(max - min <= 1, "{total} over {workers}: {lens:?}");
            }
        }
    }

    #[test]
    fn threads_are_pinned_round_robin() {
        let plan = WorkerPlan {
            threads: 3,
            cores: vec![0, 1],
        };
        assert_eq!(
            (0..3).map(|i| plan.core_of(i)).collect::<Vec<_>>(),
            vec![Some(0), Some(1), Some(0)]
        );
        let unpinned = WorkerPlan {
            threads: 2,
            cores: vec![],
        };
        assert_eq!(unpinned.core_of(1), None);
    }

    #[test]
    fn gate_wakes_waiters_on_every_runtime() {
        let (gate, waiter) = Gate::new();
        let at = Instant::now();
        let handles = spawn(
            &WorkerPlan {
                threads: 2,
                cores: vec![],
            },
            move |_| {
                let mut w = waiter.clone();
                async move { w.wait().await.ok() }
            },
        )
        .unwrap();
        gate.open(at);
        assert_eq!(join(handles).unwrap(), vec![Some(at), Some(at)]);
    }

    #[test]
    fn aborted_gate_is_an_error() {
        let (gate, mut waiter) = Gate::new();
        gate.abort();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(waiter.wait()),
            Err(LoadgenError::Aborted)
        ));
    }
}
