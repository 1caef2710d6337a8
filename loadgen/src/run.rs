//! The coordinator of a run, on the main thread: starts the workers, shows progress, opens the
//! start gate once every client is ready, marks the measured window, and samples the server.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::LoadgenError;
use crate::outcome::Outcome;
use crate::procfs::{Memory, ServerProbe};
use crate::stats::Live;
use crate::workers::{self, Gate, GateWaiter, WorkerPlan};

/// How often the coordinator looks at the workers.
const TICK: Duration = Duration::from_millis(50);

/// When the measured window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// From `warmup` after the gate opens, for `duration`.
    Timed {
        /// Load before the window (not counted).
        warmup: Duration,
        /// The window.
        duration: Duration,
    },
    /// From the gate until every worker is done; `expected` completions for the progress bar.
    UntilDone {
        /// Completions expected (`Live::done` reaches it at the end).
        expected: u64,
    },
}

/// What the coordinator needs to know of a scenario.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Clients that must report ready before the gate opens.
    pub expected_ready: u64,
    /// The measured window.
    pub window: Window,
    /// Quiet time between "all ready" and the memory sample (and the gate).
    pub settle: Duration,
    /// The server process to sample, if any.
    pub server_pid: Option<u32>,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
}

/// The server's numbers over a run.
#[derive(Debug, Clone, Copy)]
pub struct ServerNumbers {
    /// CPU time of the server's threads during the measured window.
    pub cpu_ns: u64,
    /// Memory before any client connected.
    pub before: Memory,
    /// Memory once every client was ready (after the settle time).
    pub ready: Memory,
    /// Memory at the end (its `hwm_kib` is the run's peak).
    pub end: Memory,
}

/// A finished run: every worker's outcome merged, and the server's numbers.
#[derive(Debug)]
pub struct RunResult {
    /// Merged outcome.
    pub outcome: Outcome,
    /// From the gate opening to the end of the window (timed) or of the last worker.
    pub elapsed: Duration,
    /// Sampled when `--server-pid` was given.
    pub server: Option<ServerNumbers>,
    /// CPU time of the loadgen's own threads in the measured window (is the client the limit?).
    pub loadgen_cpu_ns: u64,
}

fn bar(show: bool, len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(len),
        if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Runs `make(worker, gate)` on every worker thread and coordinates them as `spec` says.
pub fn run<F, Fut>(
    plan: &WorkerPlan,
    spec: &RunSpec,
    live: Arc<Live>,
    make: F,
) -> Result<RunResult, LoadgenError>
where
    F: Fn(usize, GateWaiter) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Outcome, LoadgenError>> + 'static,
{
    let mut probe = spec.server_pid.map(ServerProbe::start).transpose()?;
    let mut own_start = crate::procfs::own_cpu_nanos();
    let before = probe.as_ref().map(ServerProbe::memory).transpose()?;
    let (gate, waiter) = Gate::new();
    let handles = workers::spawn(plan, move |i| make(i, waiter.clone()))?;

    let setup = bar(
        spec.progress,
        spec.expected_ready,
        "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len}",
    );
    setup.set_prefix("ready");
    while live.ready.load(Ordering::Relaxed) < spec.expected_ready {
        if live.failed.load(Ordering::Relaxed) || handles.iter().any(JoinHandle::is_finished) {
            setup.abandon();
            gate.abort();
            // Workers stop at the abort; wait for them to report why.
            return Err(first_error(workers::join(handles)?).unwrap_or_else(|| {
                LoadgenError::Worker("a worker ended before the start".into())
            }));
        }
        setup.set_position(live.ready.load(Ordering::Relaxed));
        std::thread::sleep(TICK);
    }
    setup.finish_and_clear();
    std::thread::sleep(spec.settle);
    let ready = probe.as_ref().map(ServerProbe::memory).transpose()?;

    let opened = Instant::now();
    let own_cpu;
    gate.open(opened);
    let (elapsed, cpu_ns) = match spec.window {
        Window::Timed { warmup, duration } => {
            let window_start = opened + warmup;
            let window_end = window_start + duration;
            let running = bar(
                spec.progress,
                (warmup + duration).as_secs().max(1),
                "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} s  {msg}",
            );
            running.set_prefix("running");
            let mut restarted = false;
            loop {
                let now = Instant::now();
                if !restarted && now >= window_start {
                    if let Some(p) = probe.as_mut() {
                        p.restart()?;
                    }
                    own_start = crate::procfs::own_cpu_nanos();
                    restarted = true;
                }
                if now >= window_end {
                    break;
                }
                running.set_position((now - opened).as_secs());
                running.set_message(format!("{} done", live.done.load(Ordering::Relaxed)));
                let next = if restarted { window_end } else { window_start };
                std::thread::sleep(next.saturating_duration_since(now).min(TICK));
            }
            let cpu = probe
                .as_ref()
                .map(ServerProbe::cpu_since_start)
                .transpose()?;
            own_cpu = crate::procfs::own_cpu_nanos().saturating_sub(own_start);
            running.finish_and_clear();
            (duration, cpu)
        }
        Window::UntilDone { expected } => {
            if let Some(p) = probe.as_mut() {
                p.restart()?;
            }
            own_start = crate::procfs::own_cpu_nanos();
            let running = bar(
                spec.progress,
                expected,
                "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len}",
            );
            running.set_prefix("running");
            while !handles.iter().all(JoinHandle::is_finished) {
                running.set_position(live.done.load(Ordering::Relaxed));
                std::thread::sleep(TICK);
            }
            let cpu = probe
                .as_ref()
                .map(ServerProbe::cpu_since_start)
                .transpose()?;
            own_cpu = crate::procfs::own_cpu_nanos().saturating_sub(own_start);
            running.finish_and_clear();
            (opened.elapsed(), cpu)
        }
    };
    let results = workers::join(handles)?;
    let end = probe.as_ref().map(ServerProbe::memory).transpose()?;
    let mut outcome = Outcome::default();
    let mut failure = None;
    for result in results {
        match result {
            Ok(o) => outcome.merge(&o),
            Err(e) if failure.is_none() && !matches!(e, LoadgenError::Aborted) => failure = Some(e),
            Err(_) => {}
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let server = match (cpu_ns, before, ready, end) {
        (Some(cpu_ns), Some(before), Some(ready), Some(end)) => Some(ServerNumbers {
            cpu_ns,
            before,
            ready,
            end,
        }),
        _ => None,
    };
    Ok(RunResult {
        outcome,
        elapsed,
        server,
        loadgen_cpu_ns: own_cpu,
    })
}

/// The first error that is not "aborted because another failed".
fn first_error(results: Vec<Result<Outcome, LoadgenError>>) -> Option<LoadgenError> {
    let mut aborted = None;
    for r in results {
        match r {
            Err(LoadgenError::Aborted) => aborted = Some(LoadgenError::Aborted),
            Err(e) => return Some(e),
            Ok(_) => {}
        }
    }
    aborted
}
