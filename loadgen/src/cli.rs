//! The command line: options every scenario shares, and one subcommand per scenario.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::scenario::churn::DropMode;

/// Load generator for the gameserver protocol (docs/PROTOCOL.md), over TLS or plaintext.
///
/// Each run prints a summary; `--out FILE.json` also writes the full result and an SVG plot
/// beside it. Accounts are `PREFIX0`, `PREFIX1`, ...: registered on first use, reused later.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Options every scenario takes.
    #[command(flatten)]
    pub common: Common,
}

/// Options every scenario takes (before or after the scenario name).
#[derive(Debug, Args)]
pub struct Common {
    /// The login service.
    #[arg(long, global = true, default_value = "127.0.0.1:7000")]
    pub login: SocketAddr,
    /// The world service.
    #[arg(long, global = true, default_value = "127.0.0.1:7001")]
    pub world: SocketAddr,
    /// Speak TLS (the server's default); without it, plaintext.
    #[arg(long, global = true)]
    pub tls: bool,
    /// The CA certificate to trust with --tls.
    #[arg(long, global = true, default_value = "certs/ca.pem")]
    pub ca: PathBuf,
    /// The name the server's certificate must carry, with --tls.
    #[arg(long, global = true, default_value = "localhost")]
    pub server_name: String,
    /// Loadgen threads, each a current-thread tokio runtime (default: one per --cores entry, else 1).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Cores to pin the threads to, e.g. `0` or `0,1` (thread i on the i-th, round robin).
    #[arg(long, global = true, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// Connections each thread opens (or accounts it provisions) at once.
    #[arg(long, global = true, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds a connection (TCP and TLS) may take.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Local addresses to connect from, round robin (e.g. 127.0.0.1,127.0.0.2), to stay under a
    /// per-address connection limit.
    #[arg(long, global = true, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Usernames are this prefix and a number.
    #[arg(long, global = true, default_value = "lg")]
    pub prefix: String,
    /// The password of every loadgen account.
    #[arg(long, global = true, default_value = "loadgen-password")]
    pub password: String,
    /// The server's process id: report its CPU time (from /proc/PID/task/*/schedstat) and memory.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Write the result as JSON here (and the plot beside it, as .svg, unless --plot says where).
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
    /// Write the SVG plot here.
    #[arg(long, global = true)]
    pub plot: Option<PathBuf>,
    /// A label for the result file, `key=value` (repeatable); `server=NAME` names the server
    /// in `loadgen table`.
    #[arg(long = "label", global = true, value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// No progress bar.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("label {s:?} is not key=value"))
}

/// Which service a connection-only scenario talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The world service (--world).
    World,
    /// The login service (--login).
    Login,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N connections echo C_ECHO; closed loop (--depth in flight each) or open loop (--rate).
    Echo {
        /// Connections.
        #[arg(long, default_value_t = 10)]
        conns: usize,
        /// Bytes of data per echo (at least 8: the send time rides in them).
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// Echoes in flight per connection (closed loop).
        #[arg(long, default_value_t = 1)]
        depth: usize,
        /// Open loop: echoes per second over all connections, sent at fixed times.
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds of load before the measured window.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Which service to echo on.
        #[arg(long, value_enum, default_value_t = Target::World)]
        service: Target,
    },
    /// Seed 003: N clients in the world each chat once; time until everyone has every message.
    Broadcast {
        /// Clients in the world.
        #[arg(long, default_value_t = 5002)]
        clients: usize,
        /// Account number of the first client.
        #[arg(long, default_value_t = 0)]
        first_account: usize,
        /// Seconds the chats may take to arrive.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
    },
    /// N players moving and chatting at fixed rates; latency of S_MOVE and S_CHAT.
    World {
        /// Players.
        #[arg(long, default_value_t = 100)]
        players: usize,
        /// Moves per second per player.
        #[arg(long, default_value_t = 5.0)]
        move_rate: f64,
        /// Chats per second per player (0 for none).
        #[arg(long, default_value_t = 0.5)]
        chat_rate: f64,
        /// Account number of the first player.
        #[arg(long, default_value_t = 0)]
        first_account: usize,
        /// Seconds of load before the measured window.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Logins and enters at a fixed rate (connect, C_LOGIN, connect, C_ENTER, leave).
    Login {
        /// Operations per second.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Accounts cycled through.
        #[arg(long, default_value_t = 200)]
        accounts: usize,
        /// Account number of the first.
        #[arg(long, default_value_t = 0)]
        first_account: usize,
        /// Operations in flight per thread before due ones are skipped (and counted).
        #[arg(long, default_value_t = 2000)]
        max_in_flight: usize,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Clients logging in, entering, chatting once and dropping, in a loop.
    Churn {
        /// Concurrent churning clients.
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Account number of the first.
        #[arg(long, default_value_t = 0)]
        first_account: usize,
        /// How clients leave.
        #[arg(long, value_enum, default_value_t = DropMode::Mixed)]
        drop: DropMode,
        /// Seconds measured.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// N idle connections after one C_PING; with --server-pid, server memory per connection.
    Idle {
        /// Connections.
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Seconds to hold them once all are open.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
        /// Seconds between "all open" and the memory sample.
        #[arg(long, default_value_t = 2.0)]
        settle: f64,
        /// Which service to connect to.
        #[arg(long, value_enum, default_value_t = Target::World)]
        service: Target,
    },
    /// Prints markdown tables comparing result files (or every *.json in the directories given).
    Table {
        /// Result files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_options_go_before_or_after_the_scenario() {
        let a = Cli::try_parse_from(["loadgen", "--tls", "echo", "--conns", "5", "--cores", "0,1"])
            .unwrap();
        assert!(a.common.tls);
        assert_eq!(a.common.cores, vec![0, 1]);
        assert!(matches!(a.scenario, Scenario::Echo { conns: 5, .. }));
    }

    #[test]
    fn labels_are_key_value() {
        let a = Cli::try_parse_from(["loadgen", "idle", "--label", "server=floor"]).unwrap();
        assert_eq!(a.common.labels, vec![("server".into(), "floor".into())]);
        assert!(Cli::try_parse_from(["loadgen", "idle", "--label", "nokey"]).is_err());
    }
}
