//! `loadgen`: drives a gameserver (or any server of docs/PROTOCOL.md) with one of the
//! scenarios and reports throughput, latency percentiles and, given `--server-pid`, the
//! server's CPU time and memory. See `loadgen --help`.

mod accounts;
mod cli;
mod clock;
mod conn;
mod error;
mod outcome;
mod plot;
mod procfs;
mod report;
mod run;
mod scenario;
mod schedule;
mod stats;
mod table;
mod workers;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::accounts::Accounts;
use crate::cli::{Cli, Common, Scenario, Target};
use crate::conn::Connector;
use crate::error::LoadgenError;
use crate::outcome::Outcome;
use crate::report::{Report, ReportMeta};
use crate::run::{RunSpec, Window};
use crate::scenario::Ctx;
use crate::stats::Live;
use crate::workers::{GateWaiter, WorkerPlan};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_cli(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn secs(value: f64, what: &str) -> Result<Duration, LoadgenError> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| LoadgenError::Args(format!("{what} must be a number of seconds ≥ 0")))
}

fn at_least_one(value: usize, what: &str) -> Result<usize, LoadgenError> {
    if value == 0 {
        Err(LoadgenError::Args(format!("{what} must be at least 1")))
    } else {
        Ok(value)
    }
}

fn run_cli(cli: Cli) -> Result<(), LoadgenError> {
    let common = cli.common;
    if let Scenario::Table { paths } = &cli.scenario {
        let reports = read_reports(paths)?;
        say(&table::render(&reports));
        return Ok(());
    }
    let timeout = secs(common.connect_timeout, "--connect-timeout")?;
    let connector = if common.tls {
        Connector::tls(&common.ca, &common.server_name, timeout)?
    } else {
        Connector::plain(timeout)
    }
    .with_sources(common.source_ips.clone());
    let threads = common.threads.unwrap_or(common.cores.len().max(1)).max(1);
    let plan = WorkerPlan {
        threads,
        cores: common.cores.clone(),
    };
    let live = Arc::new(Live::default());
    let ctx = Ctx {
        connector,
        accounts: Accounts {
            login: common.login,
            world: common.world,
            prefix: common.prefix.clone(),
            password: common.password.clone(),
        },
        live: live.clone(),
        threads,
        connect_concurrency: at_least_one(common.connect_concurrency, "--connect-concurrency")?,
    };
    // Fix the epoch before any worker stamps a message.
    clock::epoch();
    let mut meta = ReportMeta {
        scenario: String::new(),
        unit: String::new(),
        params: BTreeMap::new(),
        labels: common.labels.iter().cloned().collect(),
        tls: common.tls,
        threads,
        cores: common.cores.clone(),
        clients: 0,
        server_pid: common.server_pid,
        window_override: None,
    };
    let mut spec = RunSpec {
        expected_ready: 0,
        window: Window::UntilDone { expected: 0 },
        settle: Duration::ZERO,
        server_pid: common.server_pid,
        progress: !common.no_progress,
    };
    let param = |pairs: &[(&str, serde_json::Value)]| -> BTreeMap<String, serde_json::Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let result = match cli.scenario {
        Scenario::Echo {
            conns,
            payload,
            depth,
            rate,
            warmup,
            duration,
            service,
        } => {
            let params = scenario::echo::EchoParams {
                conns: at_least_one(conns, "--conns")?,
                payload,
                depth: at_least_one(depth, "--depth")?,
                rate,
                warmup: secs(warmup, "--warmup")?,
                duration: secs(duration, "--duration")?,
                on_login: service == Target::Login,
            };
            meta.scenario = "echo".into();
            meta.unit = "messages".into();
            meta.clients = conns as u64;
            meta.params = param(&[
                ("conns", conns.into()),
                ("payload", payload.max(8).into()),
                ("depth", depth.into()),
                ("rate", rate.map_or(serde_json::Value::Null, Into::into)),
                (
                    "mode",
                    if rate.is_some() { "open" } else { "closed" }.into(),
                ),
                ("warmup_secs", warmup.into()),
                ("duration_secs", duration.into()),
                ("service", format!("{service:?}").to_lowercase().into()),
            ]);
            spec.expected_ready = conns as u64;
            spec.window = Window::Timed {
                warmup: params.warmup,
                duration: params.duration,
            };
            execute(&plan, &spec, live, move |w, gate| {
                scenario::echo::worker(w, ctx.clone(), params.clone(), gate)
            })?
        }
        Scenario::Broadcast {
            clients,
            first_account,
            timeout,
        } => {
            let params = scenario::broadcast::BroadcastParams {
                clients: at_least_one(clients, "--clients")?,
                first_account,
                timeout: secs(timeout, "--timeout")?,
            };
            meta.scenario = "broadcast".into();
            meta.unit = "deliveries".into();
            meta.clients = clients as u64;
            meta.params = param(&[
                ("clients", clients.into()),
                ("first_account", first_account.into()),
                (
                    "expected_deliveries",
                    (clients as u64 * clients as u64).into(),
                ),
            ]);
            spec.expected_ready = clients as u64;
            spec.window = Window::UntilDone {
                expected: clients as u64 * clients as u64,
            };
            let result = execute(&plan, &spec, live, move |w, gate| {
                scenario::broadcast::worker(w, ctx.clone(), params.clone(), gate)
            })?;
            if let Some(us) = result.outcome.maxima.get("completion_us") {
                meta.window_override = Some(Duration::from_micros(*us));
            }
            result
        }
        Scenario::World {
            players,
            move_rate,
            chat_rate,
            first_account,
            warmup,
            duration,
        } => {
            let params = scenario::world::WorldParams {
                players: at_least_one(players, "--players")?,
                first_account,
                move_rate,
                chat_rate,
                warmup: secs(warmup, "--warmup")?,
                duration: secs(duration, "--duration")?,
            };
            meta.scenario = "world".into();
            meta.unit = "deliveries".into();
            meta.clients = players as u64;
            meta.params = param(&[
                ("players", players.into()),
                ("move_rate", move_rate.into()),
                ("chat_rate", chat_rate.into()),
                ("warmup_secs", warmup.into()),
                ("duration_secs", duration.into()),
            ]);
            spec.expected_ready = players as u64;
            spec.window = Window::Timed {
                warmup: params.warmup,
                duration: params.duration,
            };
            execute(&plan, &spec, live, move |w, gate| {
                scenario::world::worker(w, ctx.clone(), params.clone(), gate)
            })?
        }
        Scenario::Login {
            rate,
            accounts,
            first_account,
            max_in_flight,
            duration,
        } => {
            let params = scenario::login::LoginParams {
                rate,
                duration: secs(duration, "--duration")?,
                accounts: at_least_one(accounts, "--accounts")?,
                first_account,
                max_in_flight: at_least_one(max_in_flight, "--max-in-flight")?,
            };
            meta.scenario = "login".into();
            meta.unit = "logins".into();
            meta.params = param(&[
                ("rate", rate.into()),
                ("accounts", accounts.into()),
                ("duration_secs", duration.into()),
            ]);
            spec.expected_ready = accounts as u64;
            spec.window = Window::Timed {
                warmup: Duration::ZERO,
                duration: params.duration,
            };
            execute(&plan, &spec, live, move |w, gate| {
                scenario::login::worker(w, ctx.clone(), params.clone(), gate)
            })?
        }
        Scenario::Churn {
            clients,
            first_account,
            drop,
            duration,
        } => {
            let params = scenario::churn::ChurnParams {
                clients: at_least_one(clients, "--clients")?,
                first_account,
                duration: secs(duration, "--duration")?,
                drop,
            };
            meta.scenario = "churn".into();
            meta.unit = "cycles".into();
            meta.params = param(&[
                ("clients", clients.into()),
                ("drop", format!("{drop:?}").to_lowercase().into()),
                ("duration_secs", duration.into()),
            ]);
            spec.expected_ready = clients as u64;
            spec.window = Window::Timed {
                warmup: Duration::ZERO,
                duration: params.duration,
            };
            execute(&plan, &spec, live, move |w, gate| {
                scenario::churn::worker(w, ctx.clone(), params.clone(), gate)
            })?
        }
        Scenario::Idle {
            conns,
            hold,
            settle,
            service,
        } => {
            let params = scenario::idle::IdleParams {
                conns: at_least_one(conns, "--conns")?,
                hold: secs(hold, "--hold")?,
                on_login: service == Target::Login,
            };
            meta.scenario = "idle".into();
            meta.unit = "connections".into();
            meta.clients = conns as u64;
            meta.params = param(&[
                ("conns", conns.into()),
                ("hold_secs", hold.into()),
                ("service", format!("{service:?}").to_lowercase().into()),
            ]);
            spec.expected_ready = conns as u64;
            spec.settle = secs(settle, "--settle")?;
            spec.window = Window::Timed {
                warmup: Duration::ZERO,
                duration: params.hold,
            };
            execute(&plan, &spec, live, move |w, gate| {
                scenario::idle::worker(w, ctx.clone(), params.clone(), gate)
            })?
        }
        Scenario::Table { .. } => unreachable!("handled above"),
    };
    let report = Report::new(meta, &result);
    let written = write_outputs(&common, &report)?;
    say(&report.human());
    for line in written {
        say(&line);
    }
    Ok(())
}

/// Prints to stdout; a closed stdout (`| head`) must not lose the result files.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
}

fn execute<F, Fut>(
    plan: &WorkerPlan,
    spec: &RunSpec,
    live: Arc<Live>,
    make: F,
) -> Result<run::RunResult, LoadgenError>
where
    F: Fn(usize, GateWaiter) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<Outcome, LoadgenError>> + 'static,
{
    run::run(plan, spec, live, make)
}

/// Writes the JSON result and the plot; the lines that say where.
fn write_outputs(common: &Common, report: &Report) -> Result<Vec<String>, LoadgenError> {
    let mut written = Vec::new();
    if let Some(out) = &common.out {
        report.write_json(out)?;
        written.push(format!("  result: {}", out.display()));
    }
    let plot = common
        .plot
        .clone()
        .or_else(|| common.out.as_ref().map(|p| p.with_extension("svg")));
    if let Some(plot) = plot {
        plot::write_svg(report, &plot)?;
        written.push(format!("  plot:   {}", plot.display()));
    }
    Ok(written)
}

/// Every report in `paths`: files as given, directories by their `*.json` files, sorted.
fn read_reports(paths: &[PathBuf]) -> Result<Vec<Report>, LoadgenError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| LoadgenError::Output {
                path: p.clone(),
                reason: e.to_string(),
            })?;
            let mut found: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "json"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    files
        .iter()
        .map(|f| Report::read_json(Path::new(f)))
        .collect()
}
