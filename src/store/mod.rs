//! Account and token storage: the traits the services code against, their
//! errors and configuration, and the implementations: embedded (SQLite
//! accounts, in-process tokens) and production (MySQL accounts, Redis
//! tokens), the account cache and the ordered position writer.
//!
//! Everything here is blocking and runs on the DB pool threads
//! ([`crate::dbpool`]) or the store's own threads, never on a shard.

use std::time::Duration;

use crate::model::{AccountId, Position};

pub mod backend;
mod breaker;
pub mod cache;
pub mod config;
pub mod memory_tokens;
pub mod migrations;
pub mod mysql;
pub mod ops;
pub mod password;
pub mod redis_tokens;
pub mod sqlite;
pub mod writer;

pub use backend::{open, Backend, StoreStats};
pub use cache::{AccountCache, CacheStats, CachedAccountStore};
pub use config::{
    redact_url, Argon2Config, CacheConfig, StoreConfig, StoreKind, TokensConfig, TokensKind,
    WriterConfig,
};
pub use memory_tokens::MemoryTokenStore;
pub use mysql::MysqlAccountStore;
pub use ops::{LoginOutcome, RegisterOutcome, Services};
pub use password::{new_token, PasswordHasher};
pub use redis_tokens::RedisTokenStore;
pub use sqlite::SqliteAccountStore;
pub use writer::{PositionWriter, WriterStats};

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

    /// Reads up to `limit` accounts, the most recently created or updated
    /// first (an account cache in front keeps what it reads: eager preload).
    fn most_recent(&mut self, limit: usize) -> Result<Vec<AccountRecord>, StoreError>;
}

/// A token that was redeemed: whose it was and how long it had left, so that
/// a redemption whose enter then failed can be put back
/// ([`TokenStore::issue`] with `ttl_left`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redeemed {
    /// The account the token was issued for.
    pub account: AccountId,
    /// How long the token had left to live when it was redeemed.
    pub ttl_left: Duration,
}

/// Short-lived enter tokens and failed-login counters. One instance per DB
/// pool thread (`&mut self`, like [`AccountStore`]); the instances of one
/// process share their data (in-process map) or a server (Redis), so a token
/// issued through one is redeemed exactly once through any of them.
pub trait TokenStore: Send {
    /// Stores `token` for `account`, valid for `ttl` (a zero `ttl` stores
    /// nothing). A token that is already live is not replaced:
    /// [`StoreError::Internal`] (192 random bits never clash; this makes sure
    /// a clash could not hand one account's token to another).
    fn issue(&mut self, token: &str, account: AccountId, ttl: Duration) -> Result<(), StoreError>;

    /// Redeems a token: single use, so a live token is removed and returned
    /// with its account; an expired or unknown token gives `None`. Of any
    /// number of concurrent redemptions of one token, exactly one gets it.
    fn redeem(&mut self, token: &str) -> Result<Option<Redeemed>, StoreError>;

    /// Records one failure under `key` and returns the number of failures
    /// counted in the current window, this one included. A new window of
    /// length `window` starts with the first failure after the previous
    /// window ended.
    fn note_failure(&mut self, key: &str, window: Duration) -> Result<u32, StoreError>;

    /// Number of failures counted under `key` in its current window (0 if
    /// none or the window has ended).
    fn failures(&mut self, key: &str) -> Result<u32, StoreError>;

    /// Forgets the failures counted under `key`.
    fn clear_failures(&mut self, key: &str) -> Result<(), StoreError>;
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
    fn username_key_ignores_case() {
        assert_eq!(username_key("AliCe"), username_key("aLICE"));
    }
}
