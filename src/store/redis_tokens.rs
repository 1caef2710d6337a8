//! The Redis [`TokenStore`]: enter tokens and failed-login counters in a Redis server shared by
//! every login and world process.
//!
//! - A token is `SET <prefix>token:<token> "<account>" PX <ttl> NX`, redeemed with one `GETDEL`,
//!   which Redis runs atomically: of any number of concurrent redemptions, from any number of
//!   processes, exactly one gets the account.
//! - A failure counter is `<prefix>fail:<key>`, counted by a small Lua script (`INCR`, and
//!   `PEXPIRE` when the count starts a window) in one round trip and atomically, so two login
//!   processes share one count.
//!
//! Each DB thread has its own instance and so its own connection, used by that thread alone.
//! Every call has a timeout (connect, write, read). A connection that failed or timed out is
//! dropped, never reused: the sync `redis::Connection` matches replies to requests by order, so
//! a late reply to a timed-out request would otherwise be read as the answer to the next one.
//! The next call opens a new connection; while the server is down, calls fail at once for
//! `retry_after_failure` between attempts (see `breaker`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{Client, Connection, RedisError};

use super::breaker::Breaker;
use super::{Redeemed, StoreError, TokenStore, TokensConfig};
use crate::model::AccountId;

/// `INCR` the counter; when this failure starts a window (or the key somehow lost its expiry),
/// set the window. Returns the count.
const NOTE_FAILURE: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
";

/// What the Redis token stores of one process share: the server's address, the breaker and
/// the settings. Build once, then [`RedisTokenStore::new`] per DB thread.
pub struct RedisTarget {
    client: Client,
    timeout: Duration,
    prefix: String,
    breaker: Breaker,
    note_failure: redis::Script,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("target", &self.breaker.target())
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisTarget {
    /// Checks the URL and settings of `cfg`; connects to nothing. `retry_after_failure` is how
    /// long calls fail at once after a failed one.
    pub fn new(cfg: &TokensConfig, retry_after_failure: Duration) -> Result<Self, StoreError> {
        let client = Client::open(cfg.redis_url.as_str()).map_err(|e| {
            StoreError::Internal(format!(
                "tokens.redis_url ({}) is not usable: {e}",
                super::redact_url(&cfg.redis_url)
            ))
        })?;
        if cfg.redis_timeout_ms == 0 {
            return Err(StoreError::Internal(
                "tokens.redis_timeout_ms must be above 0".into(),
            ));
        }
        let target = client.get_connection_info().addr.to_string();
        Ok(Self {
            client,
            timeout: cfg.redis_timeout(),
            prefix: cfg.key_prefix.clone(),
            breaker: Breaker::new("Redis", target, retry_after_failure),
            note_failure: redis::Script::new(NOTE_FAILURE),
        })
    }

    /// Where the server is (no password), for logs.
    pub fn target(&self) -> &str {
        self.breaker.target()
    }

    /// Opens a connection now and pings it: `Ok` if the server answers. A failure is logged
    /// once as the start of an outage (and later calls fail fast for a moment).
    pub fn ping(self: &Arc<Self>) -> Result<(), StoreError> {
        RedisTokenStore::new(Arc::clone(self))
            .call(|c| redis::cmd("PING").query::<String>(c).map(drop))
    }
}

/// One DB thread's handle on the Redis token store: its own connection, opened on first use
/// and after any failure.
pub struct RedisTokenStore {
    target: Arc<RedisTarget>,
    /// The connection and the breaker generation it was opened in.
    conn: Option<(Connection, u64)>,
}

impl std::fmt::Debug for RedisTokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTokenStore")
            .field("target", &self.target)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl RedisTokenStore {
    /// A store on `target`, not connected yet.
    pub fn new(target: Arc<RedisTarget>) -> Self {
        Self { target, conn: None }
    }

    fn token_key(&self, token: &str) -> String {
        format!("{}token:{token}", self.target.prefix)
    }

    fn failure_key(&self, key: &str) -> String {
        format!("{}fail:{key}", self.target.prefix)
    }

    /// Runs one call on this thread's connection, connecting first if needed. Any error drops
    /// the connection (see the module doc) and counts against the breaker.
    fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        self.target.breaker.check()?;
        let generation = self.target.breaker.generation();
        if self.conn.as_ref().is_some_and(|(_, g)| *g != generation) {
            // Opened before a failure: most likely dead too.
            self.conn = None;
        }
        let conn = match self.conn.as_mut() {
            Some((conn, _)) => conn,
            None => {
                let conn = self.connect().map_err(|e| self.failed(&e))?;
                &mut self.conn.insert((conn, generation)).0
            }
        };
        match f(conn) {
            Ok(v) => {
                self.target.breaker.succeeded();
                Ok(v)
            }
            Err(e) => {
                self.conn = None;
                if e.kind() == redis::ErrorKind::TypeError {
                    // The server answered, with something this code cannot read.
                    self.target.breaker.succeeded();
                    Err(StoreError::Internal(format!("redis: {e}")))
                } else {
                    Err(self.failed(&e))
                }
            }
        }
    }

    fn connect(&self) -> redis::RedisResult<Connection> {
        let t = self.target.timeout;
        let conn = self.target.client.get_connection_with_timeout(t)?;
        conn.set_read_timeout(Some(t))?;
        conn.set_write_timeout(Some(t))?;
        Ok(conn)
    }

    fn failed(&self, e: &RedisError) -> StoreError {
        self.target.breaker.failed(&e.to_string())
    }
}

/// Milliseconds since the Unix epoch, for the expiry stored with a token.
fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> Result<u64, StoreError> {
    u64::try_from(d.as_millis())
        .ok()
        .filter(|ms| *ms <= i64::MAX as u64 / 2)
        .ok_or_else(|| StoreError::Internal(format!("expiry {d:?} out of range")))
}

impl TokenStore for RedisTokenStore {
    /// The value is `<account>:<expiry in Unix ms>`: the expiry lets a redemption report the
    /// time left without a second call.
    fn issue(&mut self, token: &str, account: AccountId, ttl: Duration) -> Result<(), StoreError> {
        let ms = millis(ttl)?;
        if ms == 0 {
            return Ok(());
        }
        let key = self.token_key(token);
        let value = format!("{account}:{}", unix_millis(SystemTime::now()) + ms);
        let stored: Option<String> = self.call(|c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("PX")
                .arg(ms)
                .arg("NX")
                .query(c)
        })?;
        match stored {
            Some(_) => Ok(()),
            None => Err(StoreError::Internal("token already issued".into())),
        }
    }

    fn redeem(&mut self, token: &str) -> Result<Option<Redeemed>, StoreError> {
        let key = self.token_key(token);
        let value: Option<String> = self.call(|c| redis::cmd("GETDEL").arg(&key).query(c))?;
        let Some(value) = value else {
            return Ok(None);
        };
        let parsed = value.split_once(':').and_then(|(account, expires)| {
            Some((account.parse::<u64>().ok()?, expires.parse::<u64>().ok()?))
        });
        let Some((account, expires)) = parsed else {
            return Err(StoreError::Internal(
                "unreadable token entry in redis".into(),
            ));
        };
        let now = unix_millis(SystemTime::now());
        Ok(Some(Redeemed {
            account,
            ttl_left: Duration::from_millis(expires.saturating_sub(now)),
        }))
    }

    fn note_failure(&mut self, key: &str, window: Duration) -> Result<u32, StoreError> {
        let window_ms = millis(window)?.max(1);
        let key = self.failure_key(key);
        let target = Arc::clone(&self.target);
        let count: i64 = self.call(|c| target.note_failure.key(&key).arg(window_ms).invoke(c))?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    fn failures(&mut self, key: &str) -> Result<u32, StoreError> {
        let key = self.failure_key(key);
        let count: Option<i64> = self.call(|c| redis::cmd("GET").arg(&key).query(c))?;
        Ok(count.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)))
    }

    fn clear_failures(&mut self, key: &str) -> Result<(), StoreError> {
        let key = self.failure_key(key);
        self.call(|c| redis::cmd("DEL").arg(&key).query::<i64>(c).map(drop))
    }
}
