//! `gameserver`: run the server (`serve`, the default) or the terminal client (`client`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gameserver::config::{Config, Role};

/// A thread-per-core game server: login and world services over TLS.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file for `serve` when no subcommand is given.
    #[arg(long, global = false)]
    config: Option<PathBuf>,
    /// Role for `serve` when no subcommand is given.
    #[arg(long, value_enum, global = false)]
    role: Option<Role>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the login and world services (the default).
    Serve {
        /// Config file; without it, `config/default.toml` if present, else built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve only the login service, only the world service, or both (overrides
        /// `[server] role`). Separate roles need `[tokens] kind = "redis"`.
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
    /// An interactive terminal client: register, log in, enter the world, chat.
    Client(gameserver::client::cli::ClientArgs),
}

/// Where the config comes from when no `--config` is given.
const DEFAULT_CONFIG: &str = "config/default.toml";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Client(args)) => match gameserver::client::cli::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Serve { config, role }) => serve(config.or(cli.config), role.or(cli.role)),
        None => serve(cli.config, cli.role),
    }
}

fn serve(path: Option<PathBuf>, role: Option<Role>) -> ExitCode {
    let (mut config, source) = match load_config(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(role) = role {
        config.server.role = role;
    }
    let overridden = config.apply_env(|name| std::env::var(name).ok());
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    init_logging(&config.log.filter);
    tracing::info!(config = %source, role = %config.server.role, env = ?overridden, "configuration loaded");
    let handle = match gameserver::server::start(config) {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!(error = %e, "server failed to start");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = watch_signals(handle.shutdown_trigger()) {
        tracing::error!(error = %e, "cannot install signal handlers");
        handle.shutdown();
    }
    match handle.wait() {
        Ok(()) => {
            tracing::info!("server stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<PathBuf>) -> Result<(Config, String), gameserver::config::ConfigError> {
    match path {
        Some(path) => Ok((Config::load(&path)?, path.display().to_string())),
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => Ok((
            Config::load(std::path::Path::new(DEFAULT_CONFIG))?,
            DEFAULT_CONFIG.to_string(),
        )),
        None => Ok((Config::default(), "built-in defaults".to_string())),
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}

/// SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once.
fn watch_signals(trigger: shards::shutdown::ShutdownTrigger) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal,
                        "shutdown requested: draining (again to exit at once)"
                    );
                    trigger.fire();
                } else {
                    tracing::warn!(signal, "second signal: exiting now");
                    std::process::exit(1);
                }
            }
        })?;
    Ok(())
}
