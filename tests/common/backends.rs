//! Real MySQL (MariaDB) and Redis servers for the tests: found through environment variables
//! that `scripts/test` sets after starting throwaway servers (a developer may point them at
//! servers of their own). Without them, a test that needs a server fails and says so. Each test
//! gets a database and a Redis key prefix of its own, so tests run in parallel.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use mysql::prelude::Queryable;

/// `mysql://user:password@host:port` of a server where the tests may create databases.
pub const MYSQL_ENV: &str = "GAMESERVER_TEST_MYSQL_URL";
/// `redis://host:port` of a Redis server the tests may write to.
pub const REDIS_ENV: &str = "GAMESERVER_TEST_REDIS_URL";
/// Path of a `redis-server` binary (a test starts and restarts a Redis of its own).
pub const REDIS_SERVER_ENV: &str = "GAMESERVER_TEST_REDIS_SERVER";

fn required(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this test needs a real server. Run scripts/test, which starts \
             throwaway MariaDB and Redis servers and sets GAMESERVER_TEST_MYSQL_URL, \
             GAMESERVER_TEST_REDIS_URL and GAMESERVER_TEST_REDIS_SERVER (or set them to servers \
             of your own)"
        ),
    }
}

/// The MySQL server URL, without a database.
pub fn mysql_server_url() -> String {
    required(MYSQL_ENV).trim_end_matches('/').to_string()
}

/// The Redis server URL.
pub fn redis_url() -> String {
    required(REDIS_ENV)
}

/// The `redis-server` binary.
pub fn redis_server_bin() -> PathBuf {
    PathBuf::from(required(REDIS_SERVER_ENV))
}

/// A name unique to this test process and call: `<tag>_<pid>_<n>`.
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database of its own on the test MySQL server, dropped with this value.
pub struct TestDb {
    /// `mysql://.../<database>`, for `store.mysql_url`.
    pub url: String,
    /// The database's name.
    pub name: String,
}

impl TestDb {
    /// Creates a fresh, empty database named after `tag`.
    pub fn create(tag: &str) -> Self {
        let name = unique(&format!("gs_{tag}"));
        let mut conn = server_conn();
        conn.query_drop(format!("CREATE DATABASE `{name}`"))
            .expect("create the test database");
        Self {
            url: format!("{}/{name}", mysql_server_url()),
            name,
        }
    }

    /// A connection to this database, to look at rows directly.
    pub fn conn(&self) -> mysql::Conn {
        let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&self.url).unwrap())
            .prefer_socket(false);
        mysql::Conn::new(opts).expect("connect to the test database")
    }

    /// The saved position of account `id` (`None` if there is no such account).
    pub fn position(&self, id: u64) -> Option<(f64, f64, f64)> {
        self.conn()
            .exec_first(
                "SELECT pos_x, pos_y, pos_z FROM accounts WHERE id = ?",
                (id,),
            )
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(url) = std::env::var(MYSQL_ENV) {
            let opts = mysql::Opts::from_url(&url).unwrap();
            if let Ok(mut conn) =
                mysql::Conn::new(mysql::OptsBuilder::from_opts(opts).prefer_socket(false))
            {
                let _ = conn.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name));
            }
        }
    }
}

fn server_conn() -> mysql::Conn {
    let url = mysql_server_url();
    let opts = mysql::Opts::from_url(&url).expect("GAMESERVER_TEST_MYSQL_URL parses");
    mysql::Conn::new(mysql::OptsBuilder::from_opts(opts).prefer_socket(false))
        .expect("connect to the test MySQL server (GAMESERVER_TEST_MYSQL_URL)")
}

/// A Redis key prefix of its own for one test.
pub fn key_prefix(tag: &str) -> String {
    format!("test:{}:", unique(tag))
}

/// A plain Redis connection, to look at keys directly.
pub fn redis_conn(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .unwrap()
        .get_connection()
        .expect("connect to the test Redis server")
}
