//! The `[store]` and `[tokens]` config sections: which backends, where they are, and the DB
//! pool, cache and position-writer settings. Every field has a default (the values in
//! `config/default.toml`); unknown fields are rejected.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Which account store backs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A SQLite file (one process, nothing to install).
    #[default]
    Embedded,
    /// A MySQL or MariaDB server at `mysql_url`, shared by every process.
    Mysql,
}

/// Which token store holds enter tokens and failed-login counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokensKind {
    /// An in-process map: only the process that issued a token can redeem it.
    #[default]
    Memory,
    /// A Redis server at `redis_url`, shared by every login and world process.
    Redis,
}

/// The `[store]` config section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Which store implementation to use.
    pub kind: StoreKind,
    /// Path of the SQLite accounts database (`kind = "embedded"`); its parent directory is
    /// created on open.
    pub sqlite_path: PathBuf,
    /// `mysql://user:password@host:port/database` (`kind = "mysql"`). `GAMESERVER_MYSQL_URL`
    /// overrides it. Never logged with its password.
    pub mysql_url: String,
    /// How long opening a MySQL connection may take.
    pub mysql_connect_timeout_ms: u64,
    /// How long one read or write on a MySQL connection may block.
    pub mysql_io_timeout_ms: u64,
    /// After a connection to MySQL or Redis failed, requests fail at once (`SERVER_BUSY`) for
    /// this long before the next attempt to reconnect.
    pub retry_after_failure_ms: u64,
    /// Number of DB pool threads (each with its own connections).
    pub db_threads: usize,
    /// Bound of the DB pool queue; a full queue rejects new jobs at once.
    pub queue_capacity: usize,
    /// How long a shard waits for a DB answer before replying SERVER_BUSY.
    pub request_timeout_ms: u64,
    /// Lifetime of an enter token issued by a login.
    pub token_ttl_secs: u32,
    /// Failed logins allowed per username and per address within
    /// `failed_login_window_secs` before further logins are refused
    /// without checking the password; 0 disables the limit.
    pub max_failed_logins: u32,
    /// Length of the failed-login counting window.
    pub failed_login_window_secs: u32,
    /// Password hashing cost.
    pub argon2: Argon2Config,
    /// The account lookup cache.
    pub cache: CacheConfig,
    /// The position write-behind.
    pub writer: WriterConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Embedded,
            sqlite_path: PathBuf::from("data/accounts.db"),
            mysql_url: "mysql://gameserver:gameserver@127.0.0.1:3306/gameserver".into(),
            mysql_connect_timeout_ms: 1000,
            mysql_io_timeout_ms: 3000,
            retry_after_failure_ms: 500,
            db_threads: 4,
            queue_capacity: 1024,
            request_timeout_ms: 2000,
            token_ttl_secs: 30,
            max_failed_logins: 5,
            failed_login_window_secs: 300,
            argon2: Argon2Config::default(),
            cache: CacheConfig::default(),
            writer: WriterConfig::default(),
        }
    }
}

impl StoreConfig {
    /// The token lifetime as a [`Duration`].
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.token_ttl_secs))
    }

    /// The failed-login window as a [`Duration`].
    pub fn failed_login_window(&self) -> Duration {
        Duration::from_secs(u64::from(self.failed_login_window_secs))
    }

    /// The shard-side DB request timeout as a [`Duration`].
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// `mysql_connect_timeout_ms` as a [`Duration`].
    pub fn mysql_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.mysql_connect_timeout_ms)
    }

    /// `mysql_io_timeout_ms` as a [`Duration`].
    pub fn mysql_io_timeout(&self) -> Duration {
        Duration::from_millis(self.mysql_io_timeout_ms)
    }

    /// `retry_after_failure_ms` as a [`Duration`].
    pub fn retry_after_failure(&self) -> Duration {
        Duration::from_millis(self.retry_after_failure_ms)
    }
}

/// Argon2id cost parameters (the `[store.argon2]` config section). Defaults
/// follow the OWASP recommendation (19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Config {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            memory_kib: 19456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// The `[store.cache]` section: the account lookup cache in front of the account store.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Cache account lookups by username at all.
    pub enabled: bool,
    /// How long an entry lives after it was loaded (or last used, with `sliding`).
    pub ttl_secs: u64,
    /// Every hit extends the entry's life to `ttl_secs` from now.
    pub sliding: bool,
    /// Entries held at most; beyond, loading one evicts another.
    pub max_entries: usize,
    /// Accounts loaded into the cache at start (most recently updated first); 0 = none.
    pub preload: usize,
    /// How often the cleanup thread removes expired entries.
    pub cleanup_interval_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 300,
            sliding: true,
            max_entries: 100_000,
            preload: 0,
            cleanup_interval_ms: 10_000,
        }
    }
}

impl CacheConfig {
    /// `ttl_secs` as a [`Duration`].
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs)
    }

    /// `cleanup_interval_ms` as a [`Duration`].
    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_millis(self.cleanup_interval_ms)
    }
}

/// The `[store.writer]` section: the ordered position writer (write-behind).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WriterConfig {
    /// Players whose latest position may wait to be written (while the store is down, say).
    /// A save for one more player is dropped, and logged with the player id.
    pub max_pending: usize,
    /// Rows written by one statement at most.
    pub batch_rows: usize,
    /// While the store fails, how long the writer waits before trying again.
    pub retry_ms: u64,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_pending: 100_000,
            batch_rows: 500,
            retry_ms: 500,
        }
    }
}

impl WriterConfig {
    /// `retry_ms` as a [`Duration`].
    pub fn retry(&self) -> Duration {
        Duration::from_millis(self.retry_ms)
    }
}

/// The `[tokens]` config section: where enter tokens and failed-login counters live.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// Which token store to use.
    pub kind: TokensKind,
    /// `redis://[:password@]host:port[/db]` (`kind = "redis"`). `GAMESERVER_REDIS_URL`
    /// overrides it. Never logged with its password.
    pub redis_url: String,
    /// How long one Redis call (connect, send, reply) may take.
    pub redis_timeout_ms: u64,
    /// Prefix of every Redis key this server writes (`<prefix>token:...`, `<prefix>fail:...`).
    pub key_prefix: String,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            kind: TokensKind::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_timeout_ms: 1000,
            key_prefix: "gameserver:".into(),
        }
    }
}

impl TokensConfig {
    /// `redis_timeout_ms` as a [`Duration`].
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

/// The password-free form of a connection URL, for logs: `scheme://user:***@host...`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable url>".into();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // Drop any query too: `?password=` is a valid way to pass one.
    let path = path.split('?').next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => format!("{scheme}://{authority}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_defaults() {
        let cfg: StoreConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, StoreConfig::default());
        assert_eq!(cfg.kind, StoreKind::Embedded);
        assert_eq!(cfg.sqlite_path, PathBuf::from("data/accounts.db"));
        assert_eq!(cfg.db_threads, 4);
        assert_eq!(cfg.queue_capacity, 1024);
        assert_eq!(cfg.request_timeout(), Duration::from_millis(2000));
        assert_eq!(cfg.token_ttl(), Duration::from_secs(30));
        assert_eq!(cfg.max_failed_logins, 5);
        assert_eq!(cfg.failed_login_window(), Duration::from_secs(300));
        assert_eq!(cfg.argon2.memory_kib, 19456);
        assert_eq!(cfg.argon2.iterations, 2);
        assert_eq!(cfg.argon2.parallelism, 1);
        assert!(cfg.cache.enabled);
        assert_eq!(cfg.writer.batch_rows, 500);
        let tokens: TokensConfig = toml::from_str("").unwrap();
        assert_eq!(tokens.kind, TokensKind::Memory);
    }

    #[test]
    fn fields_override_defaults() {
        let cfg: StoreConfig = toml::from_str(
            "kind = \"mysql\"\nsqlite_path = \"x/y.db\"\ndb_threads = 2\n\
             [argon2]\nmemory_kib = 64\n[cache]\nttl_secs = 5\n[writer]\nretry_ms = 7\n",
        )
        .unwrap();
        assert_eq!(cfg.kind, StoreKind::Mysql);
        assert_eq!(cfg.sqlite_path, PathBuf::from("x/y.db"));
        assert_eq!(cfg.db_threads, 2);
        assert_eq!(cfg.queue_capacity, 1024);
        assert_eq!(cfg.argon2.memory_kib, 64);
        assert_eq!(cfg.argon2.iterations, 2);
        assert_eq!(cfg.cache.ttl(), Duration::from_secs(5));
        assert!(cfg.cache.sliding);
        assert_eq!(cfg.writer.retry(), Duration::from_millis(7));
        let tokens: TokensConfig =
            toml::from_str("kind = \"redis\"\nredis_url = \"redis://h:1\"").unwrap();
        assert_eq!(tokens.kind, TokensKind::Redis);
        assert_eq!(tokens.redis_url, "redis://h:1");
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        assert!(toml::from_str::<StoreConfig>("db_thread = 2").is_err());
        assert!(toml::from_str::<StoreConfig>("kind = \"postgres\"").is_err());
        assert!(toml::from_str::<StoreConfig>("[argon2]\nmemory = 1").is_err());
        assert!(toml::from_str::<StoreConfig>("[cache]\nttl = 1").is_err());
        assert!(toml::from_str::<TokensConfig>("kind = \"memcached\"").is_err());
    }

    #[test]
    fn redacted_urls_hold_no_password() {
        assert_eq!(
            redact_url("mysql://gameserver:s3cret@127.0.0.1:3306/gameserver"),
            "mysql://gameserver:***@127.0.0.1:3306/gameserver"
        );
        assert_eq!(
            redact_url("redis://:s3cret@localhost:6379/2"),
            "redis://:***@localhost:6379/2"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("mysql://u@h/db?password=s3cret"),
            "mysql://u:***@h/db"
        );
        assert!(!redact_url("mysql://a:p@ss@h/db").contains("p@ss"));
        assert_eq!(redact_url("s3cret"), "<unparsable url>");
    }
}
