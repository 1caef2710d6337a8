//! The embedded account store: one SQLite file in WAL mode, one connection
//! per DB pool thread.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};

use super::{username_key, AccountRecord, AccountStore, StoreError};
use crate::model::{AccountId, Position};

/// How long a connection waits for a lock held by another pool thread
/// before giving up with [`StoreError::Unavailable`].
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema, created on open if missing. `username_key` is the lowercased
/// username and carries the uniqueness; `username` keeps the registered
/// spelling. AUTOINCREMENT makes ids start at 1 and never be reused.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL,
    username_key  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    pos_x         REAL NOT NULL DEFAULT 0,
    pos_y         REAL NOT NULL DEFAULT 0,
    pos_z         REAL NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS accounts_username_key ON accounts (username_key);
";

/// One account by its lowercased username; rows as read by [`read_record`].
const FIND_BY_KEY: &str = "SELECT id, username, password_hash, pos_x, pos_y, pos_z \
                           FROM accounts WHERE username_key = ?1";
/// One account by id; rows as read by [`read_record`].
const FIND_BY_ID: &str = "SELECT id, username, password_hash, pos_x, pos_y, pos_z \
                          FROM accounts WHERE id = ?1";

/// [`AccountStore`] over a SQLite connection.
#[derive(Debug)]
pub struct SqliteAccountStore {
    conn: Connection,
}

impl SqliteAccountStore {
    /// Opens (or creates) the database file at `path`, creating its parent
    /// directory, switching to WAL mode, setting a busy timeout so that
    /// concurrent pool threads wait for each other instead of failing, and
    /// creating the schema if missing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = Connection::open(path).map_err(map_err)?;
        Self::init(conn, true)
    }

    /// Opens a private in-memory database with the schema; for tests and
    /// tools. Each call gives a separate, empty database.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory().map_err(map_err)?;
        Self::init(conn, false)
    }

    fn init(conn: Connection, wal: bool) -> Result<Self, StoreError> {
        conn.busy_timeout(BUSY_TIMEOUT).map_err(map_err)?;
        if wal {
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(map_err)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Internal(format!(
                    "sqlite refused WAL mode (journal_mode = {mode})"
                )));
            }
            // Safe with WAL: a crash may lose the last commits, never corrupt.
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(map_err)?;
        }
        conn.execute_batch(SCHEMA).map_err(map_err)?;
        Ok(Self { conn })
    }
}

impl AccountStore for SqliteAccountStore {
    fn create_account(
        &mut self,
        username: &str,
        password_hash: &str,
    ) -> Result<AccountId, StoreError> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO accounts (username, username_key, password_hash) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![username, username_key(username), password_hash])
            });
        match inserted {
            Ok(_) => id_from_sql(self.conn.last_insert_rowid()),
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                Err(StoreError::AccountExists)
            }
            Err(e) => Err(map_err(e)),
        }
    }

    fn find_by_username(&mut self, username: &str) -> Result<Option<AccountRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(FIND_BY_KEY).map_err(map_err)?;
        stmt.query_row([username_key(username)], read_record)
            .optional()
            .map_err(map_err)?
            .transpose()
    }

    fn load(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        // An id beyond SQLite's integer range cannot name an account.
        let Ok(id) = i64::try_from(id) else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare_cached(FIND_BY_ID).map_err(map_err)?;
        stmt.query_row([id], read_record)
            .optional()
            .map_err(map_err)?
            .transpose()
    }

    /// Non-finite positions (which validation should have stopped) are
    /// skipped with a warning rather than failing the whole batch.
    fn save_positions(&mut self, positions: &[(AccountId, Position)]) -> Result<(), StoreError> {
        if positions.is_empty() {
            return Ok(());
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "UPDATE accounts SET pos_x = ?1, pos_y = ?2, pos_z = ?3 WHERE id = ?4",
                )
                .map_err(map_err)?;
            for (id, pos) in positions {
                let Ok(sql_id) = i64::try_from(*id) else {
                    continue;
                };
                if !pos.is_finite() {
                    tracing::warn!(account = id, "not saving a non-finite position");
                    continue;
                }
                stmt.execute(params![
                    f64::from(pos.x),
                    f64::from(pos.y),
                    f64::from(pos.z),
                    sql_id
                ])
                .map_err(map_err)?;
            }
        }
        tx.commit().map_err(map_err)
    }

    /// The embedded store keeps no update time: the newest accounts first.
    fn most_recent(&mut self, limit: usize) -> Result<Vec<AccountRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, username, password_hash, pos_x, pos_y, pos_z \
                 FROM accounts ORDER BY id DESC LIMIT ?1",
            )
            .map_err(map_err)?;
        let rows = stmt
            .query_map([limit], read_record)
            .map_err(map_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err)?;
        rows.into_iter().collect()
    }
}

/// Reads one row of [`FIND_BY_KEY`] or [`FIND_BY_ID`]. The outer `Result` is SQLite's, the
/// inner one ours (an id that does not fit an [`AccountId`]).
fn read_record(row: &Row<'_>) -> rusqlite::Result<Result<AccountRecord, StoreError>> {
    let id: i64 = row.get(0)?;
    let username: String = row.get(1)?;
    let password_hash: String = row.get(2)?;
    let x: f64 = row.get(3)?;
    let y: f64 = row.get(4)?;
    let z: f64 = row.get(5)?;
    Ok(id_from_sql(id).map(|id| AccountRecord {
        id,
        username,
        password_hash,
        // Positions are stored from f32, so narrowing back is exact.
        position: Position {
            x: x as f32,
            y: y as f32,
            z: z as f32,
        },
    }))
}

fn id_from_sql(id: i64) -> Result<AccountId, StoreError> {
    AccountId::try_from(id).map_err(|_| StoreError::Internal(format!("negative account id {id}")))
}

/// Busy, locked or unopenable databases are worth retrying later; anything
/// else is internal.
fn map_err(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(x: f32, y: f32, z: f32) -> Position {
        Position { x, y, z }
    }

    #[test]
    fn create_and_find_ignoring_case() {
        let mut s = SqliteAccountStore::open_in_memory().unwrap();
        let id = s.create_account("Alice", "hash-a").unwrap();
        assert_eq!(id, 1);
        assert_eq!(s.create_account("bob", "hash-b").unwrap(), 2);

        for name in ["alice", "ALICE", "Alice", "aLiCe"] {
            let rec = s.find_by_username(name).unwrap().unwrap();
            assert_eq!(rec.id, 1);
            assert_eq!(rec.username, "Alice");
            assert_eq!(rec.password_hash, "hash-a");
            assert_eq!(rec.position, Position::default());
        }
        assert!(s.find_by_username("carol").unwrap().is_none());

        let rec = s.load(2).unwrap().unwrap();
        assert_eq!(rec.username, "bob");
        assert!(s.load(3).unwrap().is_none());
        assert!(s.load(0).unwrap().is_none());
        assert!(s.load(u64::MAX).unwrap().is_none());
    }

    #[test]
    fn duplicate_in_other_case_is_account_exists() {
        let mut s = SqliteAccountStore::open_in_memory().unwrap();
        s.create_account("Alice", "h").unwrap();
        assert!(matches!(
            s.create_account("aLICE", "h2"),
            Err(StoreError::AccountExists)
        ));
        assert!(matches!(
            s.create_account("Alice", "h2"),
            Err(StoreError::AccountExists)
        ));
        // The original is untouched and the next id is still handed out.
        assert_eq!(
            s.find_by_username("alice").unwrap().unwrap().password_hash,
            "h"
        );
        assert_eq!(s.create_account("bob", "h").unwrap(), 2);
    }

    #[test]
    fn positions_saved_and_reloaded() {
        let mut s = SqliteAccountStore::open_in_memory().unwrap();
        let a = s.create_account("a", "h").unwrap();
        let b = s.create_account("b", "h").unwrap();
        s.save_positions(&[
            (a, pos(1.5, -2.25, 3.0e6)),
            (b, pos(-0.1, 0.2, f32::MAX)),
            (999, pos(1.0, 1.0, 1.0)),
            (u64::MAX, pos(1.0, 1.0, 1.0)),
        ])
        .unwrap();
        assert_eq!(s.load(a).unwrap().unwrap().position, pos(1.5, -2.25, 3.0e6));
        assert_eq!(
            s.find_by_username("B").unwrap().unwrap().position,
            pos(-0.1, 0.2, f32::MAX)
        );
        s.save_positions(&[]).unwrap();
    }

    #[test]
    fn non_finite_positions_are_skipped_not_fatal() {
        let mut s = SqliteAccountStore::open_in_memory().unwrap();
        let a = s.create_account("a", "h").unwrap();
        let b = s.create_account("b", "h").unwrap();
        s.save_positions(&[(a, pos(f32::NAN, 0.0, 0.0)), (b, pos(4.0, 5.0, 6.0))])
            .unwrap();
        assert_eq!(s.load(a).unwrap().unwrap().position, Position::default());
        assert_eq!(s.load(b).unwrap().unwrap().position, pos(4.0, 5.0, 6.0));
    }

    #[test]
    fn data_persists_across_reopen_and_parent_dir_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("deeper").join("accounts.db");
        {
            let mut s = SqliteAccountStore::open(&path).unwrap();
            let id = s.create_account("Zed", "hz").unwrap();
            s.save_positions(&[(id, pos(7.0, 8.0, 9.0))]).unwrap();
        }
        let mut s = SqliteAccountStore::open(&path).unwrap();
        let rec = s.find_by_username("zed").unwrap().unwrap();
        assert_eq!(rec.id, 1);
        assert_eq!(rec.username, "Zed");
        assert_eq!(rec.position, pos(7.0, 8.0, 9.0));
        assert!(matches!(
            s.create_account("ZED", "h"),
            Err(StoreError::AccountExists)
        ));
        assert_eq!(s.create_account("other", "h").unwrap(), 2);
        let mode: String = s
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn two_connections_share_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("accounts.db");
        let mut one = SqliteAccountStore::open(&path).unwrap();
        let mut two = SqliteAccountStore::open(&path).unwrap();
        let id = one.create_account("shared", "h").unwrap();
        assert_eq!(two.load(id).unwrap().unwrap().username, "shared");
        assert!(matches!(
            two.create_account("SHARED", "h"),
            Err(StoreError::AccountExists)
        ));
    }
}
