//! Account and token storage: the traits the services code against, their
//! errors and configuration, and the embedded implementations.
//!
//! Everything here is blocking and runs on the DB pool threads
//! ([`crate::dbpool`]), never on a shard.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::model::{AccountId, Position};

pub mod memory_tokens;
pub mod ops;
pub mod password;
pub mod sqlite;

pub use memory_tokens::MemoryTokenStore;
pub use ops::{open_embedded, LoginOutcome, RegisterOutcome, Services};
pub use password::{new_token, PasswordHasher};
pub use sqlite::SqliteAccountStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An account with this username (compared case-insensitively) exists.
    #[error("account already exists")]
    AccountExists,
    /// The store cannot serve right now (locked, full, unreachable); a
    /// retry later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug, corrupt data or invalid configuration.
    #[error("store error: {0}")]
    Internal(String),
}

/// Which account store backs the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite file for accounts, in-process map for tokens and failure
    /// counters.
    #[default]
    Embedded,
}

/// The `[store]` config section. Every field has a default, unknown fields
/// are rejected.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Which store implementation to use.
    pub kind: StoreKind,
    /// Path of the SQLite accounts database; its parent directory is
    /// created on open.
    pub sqlite_path: PathBuf,
    /// Number of DB pool threads (each with its own connection).
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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Embedded,
            sqlite_path: PathBuf::from("data/accounts.db"),
            db_threads: 4,
            queue_capacity: 1024,
            request_timeout_ms: 2000,
            token_ttl_secs: 30,
            max_failed_logins: 5,
            failed_login_window_secs: 300,
            argon2: Argon2Config::default(),
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

/// One stored account.
#[derive(Debug, Clone)]
pub struct AccountRecord {
    /// Unique id, assigned by the store; the first account gets 1.
    pub id: AccountId,
    /// The username as it was registered (case preserved), for display.
    pub username: String,
    /// Argon2 PHC string of the password.
    pub password_hash: String,
    /// Last saved position; a new account is at the origin.
    pub position: Position,
}

/// Persistent accounts. One instance per DB pool thread; it is only ever
/// used from that thread, hence `&mut self`.
pub trait AccountStore: Send {
    /// Creates an account at the origin and returns its new id.
    /// Returns [`StoreError::AccountExists`] if the username clashes with an
    /// existing one, ignoring case.
    fn create_account(
        &mut self,
        username: &str,
        password_hash: &str,
    ) -> Result<AccountId, StoreError>;

    /// Finds an account by username, ignoring case.
    fn find_by_username(&mut self, username: &str) -> Result<Option<AccountRecord>, StoreError>;

    /// Loads an account by id; `None` if there is none.
    fn load(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError>;

    /// Saves the positions of the given accounts in one transaction: either
    /// all are written or none. Ids without an account are ignored.
    fn save_positions(&mut self, positions: &[(AccountId, Position)]) -> Result<(), StoreError>;
}

/// Short-lived enter tokens and failed-login counters, shared by all DB pool
/// threads.
pub trait TokenStore: Send + Sync {
    /// Stores `token` for `account`, valid for `ttl`. Replaces any previous
    /// entry with the same token.
    fn issue(&self, token: &str, account: AccountId, ttl: Duration) -> Result<(), StoreError>;

    /// Redeems a token: single use, so a live token is removed and its
    /// account returned; an expired or unknown token gives `None`.
    fn redeem(&self, token: &str) -> Result<Option<AccountId>, StoreError>;

    /// Records one failure under `key` and returns the number of failures
    /// counted in the current window, this one included. A new window of
    /// length `window` starts with the first failure after the previous
    /// window ended.
    fn note_failure(&self, key: &str, window: Duration) -> Result<u32, StoreError>;

    /// Number of failures counted under `key` in its current window (0 if
    /// none or the window has ended).
    fn failures(&self, key: &str) -> Result<u32, StoreError>;

    /// Forgets the failures counted under `key`.
    fn clear_failures(&self, key: &str) -> Result<(), StoreError>;
}

/// The case-insensitive form of a username, used as its unique key by the
/// stores and in rate-limit keys.
pub fn username_key(username: &str) -> String {
    username.to_lowercase()
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
    }

    #[test]
    fn fields_override_defaults() {
        let cfg: StoreConfig = toml::from_str(
            "kind = \"embedded\"\nsqlite_path = \"x/y.db\"\ndb_threads = 2\n\
             [argon2]\nmemory_kib = 64\n",
        )
        .unwrap();
        assert_eq!(cfg.sqlite_path, PathBuf::from("x/y.db"));
        assert_eq!(cfg.db_threads, 2);
        assert_eq!(cfg.queue_capacity, 1024);
        assert_eq!(cfg.argon2.memory_kib, 64);
        assert_eq!(cfg.argon2.iterations, 2);
    }

    #[test]
    fn unknown_fields_and_kinds_are_rejected() {
        assert!(toml::from_str::<StoreConfig>("db_thread = 2").is_err());
        assert!(toml::from_str::<StoreConfig>("kind = \"mysql\"").is_err());
        assert!(toml::from_str::<StoreConfig>("[argon2]\nmemory = 1").is_err());
    }

    #[test]
    fn username_key_ignores_case() {
        assert_eq!(username_key("AliCe"), username_key("aLICE"));
    }
}
