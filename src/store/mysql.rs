//! The MySQL (or MariaDB) account store: one connection per DB thread, the seed's 1:1
//! session-thread mapping.
//!
//! Every connection has connect, read and write timeouts. A connection that failed is dropped
//! and a new one opened by the next call, so the store heals on its own when the server comes
//! back; meanwhile calls fail at once for `retry_after_failure` between attempts (see
//! `breaker`), which the services answer with `SERVER_BUSY`. The first connection of a process
//! brings the schema up to date (see [`super::migrations`]). Queries are parameterised, always.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, TxOpts};

use super::breaker::Breaker;
use super::migrations::{migrate, MigrateError, MIGRATIONS};
use super::{username_key, AccountRecord, AccountStore, StoreConfig, StoreError};
use crate::model::{AccountId, Position};

/// Rows in one multi-row position statement at most (4 placeholders each, far below MySQL's
/// 65,535).
pub const MAX_ROWS_PER_STATEMENT: usize = 1000;

/// MySQL server error: duplicate key.
const ER_DUP_ENTRY: u16 = 1062;
/// Server errors after which the server is not serving (too many connections, shutting down,
/// connection killed, read-only, lock wait timeout, deadlock): worth retrying later.
const UNAVAILABLE_CODES: &[u16] = &[1040, 1053, 1205, 1213, 1290, 1836, 1927];

const SELECT_ACCOUNT: &str =
    "SELECT id, username, password_hash, pos_x, pos_y, pos_z FROM accounts";

type Row = (u64, String, String, f64, f64, f64);

/// What the MySQL stores of one process share: connection options, the breaker, and whether
/// the schema is known to be up to date. Build once, then [`MysqlAccountStore::new`] per thread.
pub struct MysqlTarget {
    opts: Opts,
    breaker: Breaker,
    migrated: AtomicBool,
    /// One thread of this process migrates; the others wait for it.
    migrating: Mutex<()>,
}

impl std::fmt::Debug for MysqlTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlTarget")
            .field("target", &self.breaker.target())
            .finish_non_exhaustive()
    }
}

impl MysqlTarget {
    /// Checks `cfg.mysql_url` and builds the connection options (timeouts from `cfg`, always
    /// over TCP: the driver would otherwise switch to the server's Unix socket when the host is
    /// local). Connects to nothing.
    pub fn new(cfg: &StoreConfig) -> Result<Self, StoreError> {
        let redacted = super::redact_url(&cfg.mysql_url);
        let opts = Opts::from_url(&cfg.mysql_url).map_err(|e| {
            StoreError::Internal(format!("store.mysql_url ({redacted}) is not usable: {e}"))
        })?;
        if opts.get_db_name().map_or(true, str::is_empty) {
            return Err(StoreError::Internal(format!(
                "store.mysql_url ({redacted}) names no database"
            )));
        }
        let target = format!(
            "{}:{}/{}",
            opts.get_ip_or_hostname(),
            opts.get_tcp_port(),
            opts.get_db_name().unwrap_or_default()
        );
        let opts = OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .tcp_connect_timeout(Some(cfg.mysql_connect_timeout()))
            .read_timeout(Some(cfg.mysql_io_timeout()))
            .write_timeout(Some(cfg.mysql_io_timeout()));
        Ok(Self {
            opts: opts.into(),
            breaker: Breaker::new("MySQL", target, cfg.retry_after_failure()),
            migrated: AtomicBool::new(false),
            migrating: Mutex::new(()),
        })
    }

    /// Where the server is (`host:port/database`, no credentials), for logs.
    pub fn target(&self) -> &str {
        self.breaker.target()
    }

    /// Connects now and brings the schema up to date. `Unavailable` when the server cannot be
    /// reached (the server may start anyway); `Internal` when it answered but cannot be used
    /// (a schema newer than this build, say).
    pub fn check(self: &Arc<Self>) -> Result<(), StoreError> {
        MysqlAccountStore::new(Arc::clone(self))
            .run(|c| c.query_drop("DO 1"))
            .map(drop)
    }

    fn connect(&self) -> Result<Conn, StoreError> {
        let mut conn =
            Conn::new(self.opts.clone()).map_err(|e| self.breaker.failed(&e.to_string()))?;
        if !self.migrated.load(Ordering::Acquire) {
            let _one = self
                .migrating
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !self.migrated.load(Ordering::Acquire) {
                let migrated = migrate(&mut conn, MIGRATIONS);
                if !matches!(&migrated, Err(MigrateError::Db(e)) if is_connectivity(e)) {
                    // Answered: the server is up, whatever it said.
                    self.breaker.succeeded();
                }
                match migrated {
                    Ok(_) => self.migrated.store(true, Ordering::Release),
                    Err(MigrateError::Db(e)) if is_connectivity(&e) => {
                        return Err(self.breaker.failed(&e.to_string()))
                    }
                    Err(e @ MigrateError::Locked) => {
                        return Err(StoreError::Unavailable(e.to_string()))
                    }
                    Err(e) => return Err(StoreError::Internal(e.to_string())),
                }
            }
        }
        Ok(conn)
    }
}

/// One DB thread's MySQL connection, opened on first use and after any failure.
pub struct MysqlAccountStore {
    target: Arc<MysqlTarget>,
    /// The connection and the breaker generation it was opened in.
    conn: Option<(Conn, u64)>,
}

impl std::fmt::Debug for MysqlAccountStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlAccountStore")
            .field("target", &self.target)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl MysqlAccountStore {
    /// A store on `target`, not connected yet.
    pub fn new(target: Arc<MysqlTarget>) -> Self {
        Self { target, conn: None }
    }

    /// Runs `f` on this thread's connection, connecting first if needed. A duplicate key is
    /// [`StoreError::AccountExists`]; any other error drops the connection.
    fn run<T>(&mut self, f: impl FnOnce(&mut Conn) -> mysql::Result<T>) -> Result<T, StoreError> {
        self.target.breaker.check()?;
        let generation = self.target.breaker.generation();
        if self.conn.as_ref().is_some_and(|(_, g)| *g != generation) {
            // Opened before a failure: most likely dead too.
            self.conn = None;
        }
        let conn = match self.conn.as_mut() {
            Some((conn, _)) => conn,
            None => &mut self.conn.insert((self.target.connect()?, generation)).0,
        };
        let result = f(conn);
        match &result {
            Err(e) if is_connectivity(e) => {}
            // Answered, with data or with an error: the server is up.
            _ => self.target.breaker.succeeded(),
        }
        match result {
            Ok(v) => Ok(v),
            Err(mysql::Error::MySqlError(e)) if e.code == ER_DUP_ENTRY => {
                Err(StoreError::AccountExists)
            }
            Err(e) => {
                self.conn = None;
                if is_connectivity(&e) {
                    Err(self.target.breaker.failed(&e.to_string()))
                } else if matches!(&e, mysql::Error::MySqlError(s) if UNAVAILABLE_CODES.contains(&s.code))
                {
                    Err(StoreError::Unavailable(format!("MySQL: {e}")))
                } else {
                    Err(StoreError::Internal(format!("MySQL: {e}")))
                }
            }
        }
    }
}

/// The connection itself failed (refused, reset, timed out, protocol out of step).
fn is_connectivity(e: &mysql::Error) -> bool {
    e.is_connectivity_error()
        || matches!(e, mysql::Error::MySqlError(s) if matches!(s.code, 1040 | 1053 | 1927))
}

fn record(row: Row) -> AccountRecord {
    let (id, username, password_hash, x, y, z) = row;
    AccountRecord {
        id,
        username,
        password_hash,
        // Positions are stored from f32, so narrowing back is exact.
        position: Position {
            x: x as f32,
            y: y as f32,
            z: z as f32,
        },
    }
}

/// `UPDATE ... JOIN (rows)`: one statement for `rows` positions; ids without an account match
/// nothing.
fn position_update(rows: usize) -> String {
    let mut sql = String::from("UPDATE accounts AS a JOIN (SELECT ? AS id, ? AS x, ? AS y, ? AS z");
    for _ in 1..rows {
        sql.push_str(" UNION ALL SELECT ?, ?, ?, ?");
    }
    sql.push_str(
        ") AS v ON a.id = v.id \
         SET a.pos_x = v.x, a.pos_y = v.y, a.pos_z = v.z, a.position_saved_at = NOW(6)",
    );
    sql
}

fn position_params(rows: &[(AccountId, Position)]) -> Vec<mysql::Value> {
    let mut params = Vec::with_capacity(rows.len() * 4);
    for (id, pos) in rows {
        params.push((*id).into());
        params.push(f64::from(pos.x).into());
        params.push(f64::from(pos.y).into());
        params.push(f64::from(pos.z).into());
    }
    params
}

impl AccountStore for MysqlAccountStore {
    fn create_account(
        &mut self,
        username: &str,
        password_hash: &str,
    ) -> Result<AccountId, StoreError> {
        let key = username_key(username);
        self.run(|c| {
            c.exec_drop(
                "INSERT INTO accounts (username, username_key, password_hash) VALUES (?, ?, ?)",
                (username, &key, password_hash),
            )?;
            Ok(c.last_insert_id())
        })
    }

    fn find_by_username(&mut self, username: &str) -> Result<Option<AccountRecord>, StoreError> {
        let key = username_key(username);
        let sql = format!("{SELECT_ACCOUNT} WHERE username_key = ?");
        let row: Option<Row> = self.run(|c| c.exec_first(&sql, (&key,)))?;
        Ok(row.map(record))
    }

    fn load(&mut self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        let sql = format!("{SELECT_ACCOUNT} WHERE id = ?");
        let row: Option<Row> = self.run(|c| c.exec_first(&sql, (id,)))?;
        Ok(row.map(record))
    }

    /// One multi-row statement per [`MAX_ROWS_PER_STATEMENT`] rows, in one transaction when
    /// there are several. Non-finite positions (which validation should have stopped) are
    /// skipped with a warning rather than failing the whole batch.
    fn save_positions(&mut self, positions: &[(AccountId, Position)]) -> Result<(), StoreError> {
        let rows: Vec<(AccountId, Position)> = positions
            .iter()
            .filter(|(id, pos)| {
                let ok = pos.is_finite();
                if !ok {
                    tracing::warn!(account = id, "not saving a non-finite position");
                }
                ok
            })
            .copied()
            .collect();
        if rows.is_empty() {
            return Ok(());
        }
        self.run(|c| {
            if rows.len() <= MAX_ROWS_PER_STATEMENT {
                return c.exec_drop(position_update(rows.len()), position_params(&rows));
            }
            let mut tx = c.start_transaction(TxOpts::default())?;
            for chunk in rows.chunks(MAX_ROWS_PER_STATEMENT) {
                tx.exec_drop(position_update(chunk.len()), position_params(chunk))?;
            }
            tx.commit()
        })
    }

    fn most_recent(&mut self, limit: usize) -> Result<Vec<AccountRecord>, StoreError> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let sql = format!("{SELECT_ACCOUNT} ORDER BY updated_at DESC, id DESC LIMIT ?");
        let rows: Vec<Row> = self.run(|c| c.exec(&sql, (limit,)))?;
        Ok(rows.into_iter().map(record).collect())
    }
}
