//! Opening the configured stores: the account store (SQLite or MySQL) with the cache in front,
//! the token store (in-process or Redis), the position writer, and the factory that gives each
//! DB pool thread its own [`Services`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::cache::CacheCleaner;
use super::mysql::MysqlTarget;
use super::redis_tokens::RedisTarget;
use super::{
    AccountCache, AccountStore, CacheStats, CachedAccountStore, MemoryTokenStore,
    MysqlAccountStore, PasswordHasher, PositionWriter, RedisTokenStore, Services,
    SqliteAccountStore, StoreConfig, StoreError, StoreKind, TokenStore, TokensConfig, TokensKind,
    WriterStats,
};

type AccountsFactory = Arc<dyn Fn() -> Result<Box<dyn AccountStore>, StoreError> + Send + Sync>;
type TokensFactory = Arc<dyn Fn() -> Box<dyn TokenStore> + Send + Sync>;

/// Counters of the stores of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// The position writer's queue and counters.
    pub writer: WriterStats,
    /// The account cache's counters (`None` when it is off).
    pub cache: Option<CacheStats>,
}

/// The opened stores of one process. [`services`](Self::services) is the factory for
/// [`crate::dbpool::DbPool::start`]; [`shutdown`](Self::shutdown) flushes the writer and stops
/// the cache's cleanup thread once the pool has stopped.
pub struct Backend {
    accounts: AccountsFactory,
    tokens: TokensFactory,
    hasher: PasswordHasher,
    config: StoreConfig,
    writer: PositionWriter,
    cache: Option<Arc<AccountCache>>,
    cleaner: Mutex<Option<CacheCleaner>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("store", &self.config.kind)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Opens the stores `store` and `tokens` describe. Fails on what cannot work whatever happens
/// later (a bad URL or path, bad Argon2 parameters, a database schema newer than this build);
/// a MySQL or Redis server that cannot be reached is logged and the stores start anyway:
/// requests needing it answer `SERVER_BUSY` until it is back.
pub fn open(store: &StoreConfig, tokens: &TokensConfig) -> Result<Backend, StoreError> {
    let hasher = PasswordHasher::new(&store.argon2)?;
    let base = open_accounts(store)?;
    let cache = store
        .cache
        .enabled
        .then(|| Arc::new(AccountCache::new(&store.cache)));
    let accounts: AccountsFactory = match &cache {
        Some(cache) => {
            let cache = Arc::clone(cache);
            Arc::new(move || {
                let inner = base()?;
                Ok(Box::new(CachedAccountStore::new(inner, Arc::clone(&cache)))
                    as Box<dyn AccountStore>)
            })
        }
        None => base,
    };
    let cleaner = match &cache {
        Some(cache) => {
            let cleaner = cache
                .start_cleaner(store.cache.cleanup_interval())
                .map_err(|e| {
                    StoreError::Internal(format!("cannot start the cache cleaner: {e}"))
                })?;
            if store.cache.preload > 0 {
                preload(&accounts, store.cache.preload);
            }
            Some(cleaner)
        }
        None => None,
    };
    let tokens = open_tokens(tokens, store)?;
    let writer = PositionWriter::start(accounts()?, &store.writer)
        .map_err(|e| StoreError::Internal(format!("cannot start the position writer: {e}")))?;
    Ok(Backend {
        accounts,
        tokens,
        hasher,
        config: store.clone(),
        writer,
        cache,
        cleaner: Mutex::new(cleaner),
    })
}

fn open_accounts(cfg: &StoreConfig) -> Result<AccountsFactory, StoreError> {
    match cfg.kind {
        StoreKind::Embedded => {
            // Opened once here, so that a bad path or a failed WAL switch is reported at start.
            drop(SqliteAccountStore::open(&cfg.sqlite_path)?);
            tracing::info!(path = %cfg.sqlite_path.display(), "embedded account store ready");
            let path = cfg.sqlite_path.clone();
            Ok(Arc::new(move || {
                Ok(Box::new(SqliteAccountStore::open(&path)?) as Box<dyn AccountStore>)
            }))
        }
        StoreKind::Mysql => {
            let target = Arc::new(MysqlTarget::new(cfg)?);
            match target.check() {
                Ok(()) => tracing::info!(target = target.target(), "MySQL account store ready"),
                // The server starts anyway and answers SERVER_BUSY until MySQL is back.
                Err(StoreError::Unavailable(reason)) => tracing::warn!(
                    target = target.target(),
                    %reason,
                    "MySQL unreachable at start; starting anyway: requests that need it answer \
                     SERVER_BUSY until it is back"
                ),
                Err(e) => return Err(e),
            }
            Ok(Arc::new(move || {
                Ok(Box::new(MysqlAccountStore::new(Arc::clone(&target))) as Box<dyn AccountStore>)
            }))
        }
    }
}

fn open_tokens(cfg: &TokensConfig, store: &StoreConfig) -> Result<TokensFactory, StoreError> {
    match cfg.kind {
        TokensKind::Memory => {
            let shared = Arc::new(MemoryTokenStore::new());
            Ok(Arc::new(move || {
                Box::new(Arc::clone(&shared)) as Box<dyn TokenStore>
            }))
        }
        TokensKind::Redis => {
            let target = Arc::new(RedisTarget::new(cfg, store.retry_after_failure())?);
            match target.ping() {
                Ok(()) => tracing::info!(target = target.target(), "Redis token store ready"),
                Err(reason) => tracing::warn!(
                    target = target.target(),
                    %reason,
                    "Redis unreachable at start; starting anyway: requests that need it answer \
                     SERVER_BUSY until it is back"
                ),
            }
            Ok(Arc::new(move || {
                Box::new(RedisTokenStore::new(Arc::clone(&target))) as Box<dyn TokenStore>
            }))
        }
    }
}

/// Eager preload: reads the most recently used accounts through the cache, which keeps them.
fn preload(accounts: &AccountsFactory, limit: usize) {
    let loaded = accounts().and_then(|mut store| store.most_recent(limit));
    match loaded {
        Ok(records) => tracing::info!(accounts = records.len(), "account cache preloaded"),
        Err(e) => tracing::warn!(error = %e, "account cache preload skipped"),
    }
}

impl Backend {
    /// The factory for the DB pool: each call gives one thread its own account store (behind
    /// the shared cache) and token store handle, sharing the writer and the hasher set-up.
    pub fn services(&self) -> impl Fn() -> Result<Services, StoreError> + Send + Sync + 'static {
        let accounts = Arc::clone(&self.accounts);
        let tokens = Arc::clone(&self.tokens);
        let hasher = self.hasher.clone();
        let writer = self.writer.clone();
        let token_ttl = self.config.token_ttl();
        let max_failed_logins = self.config.max_failed_logins;
        let failed_login_window = self.config.failed_login_window();
        move || {
            Ok(Services {
                accounts: accounts()?,
                tokens: tokens(),
                hasher: hasher.clone(),
                token_ttl,
                max_failed_logins,
                failed_login_window,
                writer: Some(writer.clone()),
            })
        }
    }

    /// The position writer (shards hand it their players' positions).
    pub fn writer(&self) -> &PositionWriter {
        &self.writer
    }

    /// The writer's and the cache's counters now.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            writer: self.writer.stats(),
            cache: self.cache.as_ref().map(|c| c.stats()),
        }
    }

    /// Writes every queued position (retrying a failing store for at most `grace`), then stops
    /// the writer and the cache cleaner. Call after the DB pool has stopped. Idempotent.
    pub fn shutdown(&self, grace: Duration) {
        self.writer.shutdown(grace);
        let cleaner = self
            .cleaner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut cleaner) = cleaner {
            cleaner.stop();
        }
        let stats = self.stats();
        tracing::info!(
            written = stats.writer.written,
            dropped = stats.writer.dropped,
            cache = ?stats.cache,
            "stores closed"
        );
    }
}
