//! The server's configuration: `config/default.toml` documents every key. Every section and key
//! is optional; what is left out takes its default, and an unknown key is an error (a typo must
//! not silently fall back to a default).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::protocol::DEFAULT_MAX_CLIENT_FRAME;
use crate::session::RateConfig;
use crate::store::{StoreConfig, StoreKind, TokensConfig, TokensKind};
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
    /// `[store]`: accounts, the DB pool, the cache and the position writer.
    pub store: StoreConfig,
    /// `[tokens]`: where enter tokens and failed-login counters live.
    pub tokens: TokensConfig,
    /// `[rate]`: per-session request rates.
    pub rate: RateConfig,
    /// `[log]`: what is logged.
    pub log: LogConfig,
}

/// Which services a process serves (`[server] role`, or `gameserver serve --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Only the login service: binds `login_addr` alone.
    Login,
    /// Only the world service: binds `world_addr` alone.
    World,
    /// Both services in one process (the default).
    #[default]
    Both,
}

impl Role {
    /// True when this role serves the login service.
    pub fn serves_login(self) -> bool {
        matches!(self, Role::Login | Role::Both)
    }

    /// True when this role serves the world service.
    pub fn serves_world(self) -> bool {
        matches!(self, Role::World | Role::Both)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Login => "login",
            Role::World => "world",
            Role::Both => "both",
        })
    }
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Which services this process serves; login and world may run as separate processes on
    /// shared MySQL and Redis.
    pub role: Role,
    /// Where the login service listens. Port 0 picks a free port (tests).
    pub login_addr: SocketAddr,
    /// Where the world service listens. Port 0 picks a free port (tests).
    pub world_addr: SocketAddr,
    /// The largest frame a client may send, header included (4..=65535).
    pub max_client_frame: usize,
    /// Connections one shard serves at once, both services together, counted from accept;
    /// one more gets `S_DISCONNECT{SERVER_FULL}`. Lowered at start to fit the descriptor limit.
    pub max_connections_per_shard: usize,
    /// Connections from one client address that one shard serves at once.
    pub max_connections_per_address: usize,
    /// Refused connections answered with `S_DISCONNECT{SERVER_FULL}` per second and shard,
    /// sustained; beyond it refusals are closed at once, without a TLS handshake.
    pub refusal_messages_per_sec: f64,
    /// Refusals answered with a message in a burst, and at most being answered at once.
    pub refusal_burst: u32,
    /// A connection that sends no frame for this long gets `S_DISCONNECT{IDLE_TIMEOUT}`.
    pub idle_timeout_ms: u64,
    /// Absolute deadline, from accept, for the first complete frame (after TLS).
    pub first_frame_timeout_ms: u64,
    /// World service: absolute deadline, from accept, for a successful `C_ENTER`; a connection
    /// that has not entered by then gets `S_DISCONNECT{NOT_AUTHENTICATED}`.
    pub enter_timeout_ms: u64,
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
            role: Role::Both,
            login_addr: SocketAddr::from(([127, 0, 0, 1], 7000)),
            world_addr: SocketAddr::from(([127, 0, 0, 1], 7001)),
            max_client_frame: DEFAULT_MAX_CLIENT_FRAME,
            max_connections_per_shard: 8_192,
            max_connections_per_address: 128,
            refusal_messages_per_sec: 50.0,
            refusal_burst: 50,
            idle_timeout_ms: 60_000,
            first_frame_timeout_ms: 10_000,
            enter_timeout_ms: 20_000,
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

    /// The per-connection limits and deadlines.
    pub fn conn_policy(&self) -> crate::session::ConnPolicy {
        crate::session::ConnPolicy {
            max_client_frame: self.max_client_frame,
            first_frame_timeout: self.first_frame_timeout(),
            idle_timeout: self.idle_timeout(),
            enter_timeout: Duration::from_millis(self.enter_timeout_ms),
            close_flush_timeout: self.close_flush_timeout(),
        }
    }

    /// The per-shard admission limits.
    pub fn admission_policy(&self) -> crate::session::AdmissionPolicy {
        crate::session::AdmissionPolicy {
            max_connections: self.max_connections_per_shard,
            max_per_address: self.max_connections_per_address,
            refusal_messages_per_sec: self.refusal_messages_per_sec,
            refusal_burst: self.refusal_burst,
        }
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
    /// A value is out of its range, or the settings cannot work together.
    #[error("config: {0}")]
    Invalid(String),
}

/// Environment variable that overrides `store.mysql_url`.
pub const MYSQL_URL_ENV: &str = "GAMESERVER_MYSQL_URL";
/// Environment variable that overrides `tokens.redis_url`.
pub const REDIS_URL_ENV: &str = "GAMESERVER_REDIS_URL";

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

    /// Applies the environment overrides ([`MYSQL_URL_ENV`], [`REDIS_URL_ENV`]) read through
    /// `var` (`std::env::var` in the binary); an empty value counts as unset. Returns the names
    /// of the variables applied.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Vec<&'static str> {
        let mut applied = Vec::new();
        if let Some(url) = var(MYSQL_URL_ENV).filter(|v| !v.is_empty()) {
            self.store.mysql_url = url;
            applied.push(MYSQL_URL_ENV);
        }
        if let Some(url) = var(REDIS_URL_ENV).filter(|v| !v.is_empty()) {
            self.tokens.redis_url = url;
            applied.push(REDIS_URL_ENV);
        }
        applied
    }

    /// Checks the ranges serde cannot, and that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
        if !(4..=65535).contains(&s.max_client_frame) {
            return invalid("server.max_client_frame must be 4..=65535");
        }
        if s.max_connections_per_shard == 0 || s.max_connections_per_address == 0 {
            return invalid(
                "server.max_connections_per_shard and max_connections_per_address must be at least 1",
            );
        }
        if s.refusal_messages_per_sec.is_nan() || s.refusal_messages_per_sec < 0.0 {
            return invalid("server.refusal_messages_per_sec must be 0 or more");
        }
        if s.send_queue_limit_bytes < 65535 {
            return invalid("server.send_queue_limit_bytes must hold at least one frame (65535)");
        }
        if s.idle_timeout_ms == 0
            || s.first_frame_timeout_ms == 0
            || s.enter_timeout_ms == 0
            || s.save_interval_ms == 0
        {
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
        self.validate_stores()
    }

    fn validate_stores(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let (store, tokens) = (&self.store, &self.tokens);
        if needs_shared_tokens(self.server.role) && tokens.kind == TokensKind::Memory {
            return invalid(format!(
                "server.role = \"{}\" cannot work with [tokens] kind = \"memory\": a token \
                 issued by a login process must be redeemable by a world process, so separate \
                 roles need kind = \"redis\" (or run role \"both\")",
                self.server.role
            ));
        }
        if store.kind == StoreKind::Mysql {
            if let Err(e) = crate::store::mysql::MysqlTarget::new(store) {
                return invalid(e.to_string());
            }
            if store.mysql_connect_timeout_ms == 0 || store.mysql_io_timeout_ms == 0 {
                return invalid(
                    "store.mysql_connect_timeout_ms and mysql_io_timeout_ms must be above 0".into(),
                );
            }
        }
        if tokens.kind == TokensKind::Redis {
            if let Err(e) =
                crate::store::redis_tokens::RedisTarget::new(tokens, store.retry_after_failure())
            {
                return invalid(e.to_string());
            }
        }
        let cache = &store.cache;
        if cache.enabled
            && (cache.ttl_secs == 0 || cache.max_entries == 0 || cache.cleanup_interval_ms == 0)
        {
            return invalid(
                "store.cache: ttl_secs, max_entries and cleanup_interval_ms must be above 0".into(),
            );
        }
        let writer = &store.writer;
        if writer.max_pending == 0
            || writer.retry_ms == 0
            || !(1..=crate::store::mysql::MAX_ROWS_PER_STATEMENT).contains(&writer.batch_rows)
        {
            return invalid(format!(
                "store.writer: max_pending and retry_ms must be above 0, batch_rows 1..={}",
                crate::store::mysql::MAX_ROWS_PER_STATEMENT
            ));
        }
        Ok(())
    }
}

/// Separate login and world processes must share their tokens.
fn needs_shared_tokens(role: Role) -> bool {
    role != Role::Both
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
        assert!(Config::parse("[store.writer]\nbatch_rows = 0\n").is_err());
        assert!(Config::parse("[store.cache]\nttl_secs = 0\n").is_err());
    }

    #[test]
    fn separate_roles_with_in_process_tokens_are_refused() {
        for role in ["login", "world"] {
            let err = Config::parse(&format!("[server]\nrole = \"{role}\"\n")).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("redis") && msg.contains(role), "{msg}");
            Config::parse(&format!(
                "[server]\nrole = \"{role}\"\n[tokens]\nkind = \"redis\"\n"
            ))
            .unwrap();
        }
        assert_eq!(
            Config::parse("[server]\nrole = \"both\"\n")
                .unwrap()
                .server
                .role,
            Role::Both
        );
        assert!(Config::parse("[server]\nrole = \"chat\"\n").is_err());
    }

    #[test]
    fn unusable_urls_are_refused_without_showing_the_password() {
        let err =
            Config::parse("[store]\nkind = \"mysql\"\nmysql_url = \"postgres://u:s3cret@h/db\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("mysql_url") && !err.contains("s3cret"),
            "{err}"
        );
        let err = Config::parse("[store]\nkind = \"mysql\"\nmysql_url = \"mysql://u:s3cret@h\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no database") && !err.contains("s3cret"),
            "{err}"
        );
        let err = Config::parse("[tokens]\nkind = \"redis\"\nredis_url = \"http://:s3cret@h\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redis_url") && !err.contains("s3cret"),
            "{err}"
        );
        // URLs of a backend not in use are not checked.
        Config::parse("[store]\nmysql_url = \"nonsense\"\n").unwrap();
    }

    #[test]
    fn environment_overrides_the_urls() {
        let mut config = Config::default();
        let env = |name: &str| match name {
            MYSQL_URL_ENV => Some("mysql://a:b@db:1/x".to_string()),
            REDIS_URL_ENV => Some(String::new()),
            _ => None,
        };
        assert_eq!(config.apply_env(env), vec![MYSQL_URL_ENV]);
        assert_eq!(config.store.mysql_url, "mysql://a:b@db:1/x");
        assert_eq!(config.tokens.redis_url, TokensConfig::default().redis_url);
    }

    #[test]
    fn shipped_mysql_redis_toml_parses() {
        let text = include_str!("../config/mysql-redis.toml");
        let config = Config::parse(text).unwrap();
        assert_eq!(config.store.kind, StoreKind::Mysql);
        assert_eq!(config.tokens.kind, TokensKind::Redis);
        assert_eq!(
            config.store.mysql_url,
            "mysql://gameserver:gameserver@127.0.0.1:3306/gameserver"
        );
        assert_eq!(config.tokens.redis_url, "redis://127.0.0.1:6379");
    }
}
