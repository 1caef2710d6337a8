//! The server's configuration: `config/default.toml` documents every key. Every section and key
//! is optional; what is left out takes its default, and an unknown key is an error (a typo must
//! not silently fall back to a default).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::DEFAULT_MAX_CLIENT_FRAME;
use crate::session::RateConfig;
use crate::store::StoreConfig;
use crate::tls::TlsConfig;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: addresses and connection policy.
    pub server: ServerConfig,
    /// `[shards]`: how many shards and on which cores.
    pub shards: ShardsConfig,
    /// `[tls]`: certificates.
    pub tls: TlsConfig,
    /// `[store]`: accounts, tokens and the DB pool.
    pub store: StoreConfig,
    /// `[rate]`: per-session request rates.
    pub rate: RateConfig,
    /// `[log]`: what is logged.
    pub log: LogConfig,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where the login service listens. Port 0 picks a free port (tests).
    pub login_addr: SocketAddr,
    /// Where the world service listens. Port 0 picks a free port (tests).
    pub world_addr: SocketAddr,
    /// The largest frame a client may send, header included (4..=65535).
    pub max_client_frame: usize,
    /// Connections one shard serves at once, both services together; one more gets
    /// `S_DISCONNECT{SERVER_FULL}`.
    pub max_connections_per_shard: usize,
    /// A connection that sends no frame for this long gets `S_DISCONNECT{IDLE_TIMEOUT}`.
    pub idle_timeout_ms: u64,
    /// Absolute deadline, from accept, for the first complete frame (after TLS).
    pub first_frame_timeout_ms: u64,
    /// Bytes waiting to be sent to one connection above which it is a slow consumer.
    pub send_queue_limit_bytes: usize,
    /// How long a closing connection may take to write its last frames.
    pub close_flush_timeout_ms: u64,
    /// On SIGTERM/SIGINT: how long connections get to close before the process exits anyway.
    pub shutdown_grace_ms: u64,
    /// How often each shard saves the positions of its players.
    pub save_interval_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            login_addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            world_addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            max_client_frame: DEFAULT_MAX_CLIENT_FRAME,
            max_connections_per_shard: 10_000,
            idle_timeout_ms: 60_000,
            first_frame_timeout_ms: 10_000,
            send_queue_limit_bytes: 1 << 20,
            close_flush_timeout_ms: 2_000,
            shutdown_grace_ms: 5_000,
            save_interval_ms: 30_000,
        }
    }
}

impl ServerConfig {
    /// `idle_timeout_ms` as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    /// `first_frame_timeout_ms` as a duration.
    pub fn first_frame_timeout(&self) -> Duration {
        Duration::from_millis(self.first_frame_timeout_ms)
    }
    /// `close_flush_timeout_ms` as a duration.
    pub fn close_flush_timeout(&self) -> Duration {
        Duration::from_millis(self.close_flush_timeout_ms)
    }
    /// `shutdown_grace_ms` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    /// `save_interval_ms` as a duration.
    pub fn save_interval(&self) -> Duration {
        Duration::from_millis(self.save_interval_ms)
    }
}

/// `[shards]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShardsConfig {
    /// How many shards; 0 means one per online core.
    pub count: usize,
    /// The cores to pin shards to, in shard order; empty means the first online cores.
    pub cores: Vec<usize>,
    /// Pin each shard to its core. Off lets the OS place the threads (for a machine shared
    /// with a load generator, say).
    pub pin: bool,
    /// io_uring registered memory per shard, in KiB (kept small: `ulimit -l` is often 8 MiB).
    pub io_memory_kib: usize,
    /// Capacity of each cross-shard channel, in events.
    pub mesh_capacity: usize,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        Self {
            count: 0,
            cores: Vec::new(),
            pin: true,
            io_memory_kib: 512,
            mesh_capacity: 4096,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `gameserver=debug`, ...). `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
        }
    }
}

/// The configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What TOML said, with line and column.
        message: String,
    },
    /// A value is out of its range.
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the ranges serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !(4..=65535).contains(&s.max_client_frame) {
            return invalid("server.max_client_frame must be 4..=65535");
        }
        if s.max_connections_per_shard == 0 {
            return invalid("server.max_connections_per_shard must be at least 1");
        }
        if s.send_queue_limit_bytes < 65535 {
            return invalid("server.send_queue_limit_bytes must hold at least one frame (65535)");
        }
        if s.idle_timeout_ms == 0 || s.first_frame_timeout_ms == 0 || s.save_interval_ms == 0 {
            return invalid("server timeouts and save_interval_ms must be above 0");
        }
        if s.login_addr == s.world_addr && s.login_addr.port() != 0 {
            return invalid("server.login_addr and server.world_addr must differ");
        }
        if self.shards.mesh_capacity == 0 {
            return invalid("shards.mesh_capacity must be at least 1");
        }
        if self.store.db_threads == 0 || self.store.queue_capacity == 0 {
            return invalid("store.db_threads and store.queue_capacity must be at least 1");
        }
        if self.rate.chat_per_sec <= 0.0 || self.rate.move_per_sec <= 0.0 {
            return invalid("rate.chat_per_sec and rate.move_per_sec must be above 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn shipped_default_toml_parses_and_matches_the_built_in_defaults() {
        let text = include_str!("../config/default.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        let err = Config::parse("[server]\nidle_timeout = 5\n").unwrap_err();
        assert!(err.to_string().contains("idle_timeout"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert!(Config::parse("[server]\nmax_client_frame = 3\n").is_err());
        assert!(Config::parse("[server]\nsend_queue_limit_bytes = 10\n").is_err());
        assert!(Config::parse("[store]\ndb_threads = 0\n").is_err());
    }
}
