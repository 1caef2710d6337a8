//! Versioned schema migrations for the MySQL account store.
//!
//! The database records the versions applied in `schema_migrations`; at start the store applies
//! every newer one of [`MIGRATIONS`], in order, under a MySQL named lock so that processes
//! starting together do not race. A database whose schema is newer than this build is refused.
//!
//! Hand-written rather than `refinery`: refinery 0.10 needs Rust 1.92 (this crate supports
//! 1.80), turns on the `mysql` crate's C zlib backend, and brings macros and a config layer for
//! what is here about forty lines. Add a migration by appending to [`MIGRATIONS`] with the next
//! version; never edit an applied one.

use mysql::prelude::Queryable;
use mysql::Conn;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number; versions increase by one from 1.
    pub version: u32,
    /// What it does, recorded in `schema_migrations`.
    pub name: &'static str,
    /// The statements, run in order (MySQL commits DDL one statement at a time).
    pub statements: &'static [&'static str],
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "accounts",
    // `username_key` is the lowercased username (as `username_key()` makes it) under a binary
    // collation, so uniqueness ignores case exactly as the embedded store does (a `_ci`
    // collation would also fold accents and trailing spaces, which the embedded store does not).
    statements: &["CREATE TABLE accounts (
        id                BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
        username          VARCHAR(64) NOT NULL,
        username_key      VARCHAR(64) NOT NULL,
        password_hash     VARCHAR(255) NOT NULL,
        pos_x             DOUBLE NOT NULL DEFAULT 0,
        pos_y             DOUBLE NOT NULL DEFAULT 0,
        pos_z             DOUBLE NOT NULL DEFAULT 0,
        created_at        TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
        updated_at        TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                          ON UPDATE CURRENT_TIMESTAMP(6),
        position_saved_at TIMESTAMP(6) NULL,
        PRIMARY KEY (id),
        UNIQUE KEY accounts_username_key (username_key)
    ) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin"],
}];

/// The named lock that serialises migrations across processes.
const LOCK: &str = "gameserver.schema_migrations";
/// How long a process waits for another one's migrations, in seconds.
const LOCK_WAIT_SECS: u32 = 30;

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database failed (unreachable, no privilege, bad SQL).
    #[error("migration failed: {0}")]
    Db(#[from] mysql::Error),
    /// Another process held the migration lock too long.
    #[error("another process is migrating the schema (lock not granted in {LOCK_WAIT_SECS} s)")]
    Locked,
    /// The database has migrations this build does not know.
    #[error("database schema version {found} is newer than this server's {known}")]
    TooNew {
        /// The highest version applied in the database.
        found: u32,
        /// The highest version this build knows.
        known: u32,
    },
}

/// Applies every migration of `migrations` that `conn`'s database lacks, in order. Returns the
/// versions applied now (empty when the schema was up to date).
pub fn migrate(conn: &mut Conn, migrations: &[Migration]) -> Result<Vec<u32>, MigrateError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INT UNSIGNED NOT NULL PRIMARY KEY,
            name       VARCHAR(200) NOT NULL,
            applied_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
        ) ENGINE = InnoDB",
    )?;
    let granted: Option<Option<i64>> =
        conn.exec_first("SELECT GET_LOCK(?, ?)", (LOCK, LOCK_WAIT_SECS))?;
    if granted.flatten() != Some(1) {
        return Err(MigrateError::Locked);
    }
    let applied = apply_missing(conn, migrations);
    // Released on every path; a dropped connection releases it too.
    let released = conn.exec_drop("DO RELEASE_LOCK(?)", (LOCK,));
    let applied = applied?;
    released?;
    Ok(applied)
}

fn apply_missing(conn: &mut Conn, migrations: &[Migration]) -> Result<Vec<u32>, MigrateError> {
    let current: Option<Option<u32>> =
        conn.query_first("SELECT MAX(version) FROM schema_migrations")?;
    let current = current.flatten().unwrap_or(0);
    let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    if current > known {
        return Err(MigrateError::TooNew {
            found: current,
            known,
        });
    }
    let mut applied = Vec::new();
    for m in migrations.iter().filter(|m| m.version > current) {
        for statement in m.statements {
            conn.query_drop(statement)?;
        }
        conn.exec_drop(
            "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
            (m.version, m.name),
        )?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "schema migration applied"
        );
        applied.push(m.version);
    }
    Ok(applied)
}
