//! One store test suite run against every implementation: the account stores (embedded SQLite
//! and MySQL) and the token stores (in-process and Redis), then the services on top of each
//! pairing (register, login, enter, throttling, positions). MySQL and Redis are real servers
//! (see `common::backends`); each test has its own database and key prefix.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::backends::{self, TestDb};
use gameserver::model::{AccountId, Position};
use gameserver::store::mysql::MysqlTarget;
use gameserver::store::ops::{login, redeem_for_enter, register};
use gameserver::store::redis_tokens::RedisTarget;
use gameserver::store::{
    AccountStore, Argon2Config, LoginOutcome, MemoryTokenStore, MysqlAccountStore, RedisTokenStore,
    RegisterOutcome, Services, SqliteAccountStore, StoreConfig, StoreError, StoreKind, TokenStore,
    TokensConfig, TokensKind,
};

const TINY: Argon2Config = Argon2Config {
    memory_kib: 64,
    iterations: 1,
    parallelism: 1,
};

fn pos(x: f32, y: f32, z: f32) -> Position {
    Position { x, y, z }
}

// ---------------------------------------------------------------------------------------------
// Account stores

/// Makes connections (one per thread) to one fresh account database.
type AccountsFactory = Arc<dyn Fn() -> Box<dyn AccountStore> + Send + Sync>;

/// A fresh embedded database; the directory lives as long as the returned guard.
fn sqlite_accounts() -> (AccountsFactory, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("accounts.db");
    (
        Arc::new(move || Box::new(SqliteAccountStore::open(&path).unwrap())),
        dir,
    )
}

fn mysql_config(db: &TestDb) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::Mysql,
        mysql_url: db.url.clone(),
        argon2: TINY,
        ..StoreConfig::default()
    }
}

/// A fresh MySQL database; it lives as long as the returned guard.
fn mysql_accounts(tag: &str) -> (AccountsFactory, TestDb) {
    let db = TestDb::create(tag);
    let target = Arc::new(MysqlTarget::new(&mysql_config(&db)).unwrap());
    target.check().expect("the test MySQL server is reachable");
    (
        Arc::new(move || Box::new(MysqlAccountStore::new(Arc::clone(&target)))),
        db,
    )
}

fn accounts_create_find_ignoring_case(make: &AccountsFactory) {
    let mut s = make();
    let alice = s.create_account("Alice", "hash-a").unwrap();
    let bob = s.create_account("bob", "hash-b").unwrap();
    assert!(alice >= 1 && bob > alice);
    for name in ["alice", "ALICE", "Alice", "aLiCe"] {
        let rec = s.find_by_username(name).unwrap().unwrap();
        assert_eq!(rec.id, alice);
        assert_eq!(rec.username, "Alice");
        assert_eq!(rec.password_hash, "hash-a");
        assert_eq!(rec.position, Position::default());
    }
    assert!(s.find_by_username("carol").unwrap().is_none());
    assert_eq!(s.load(bob).unwrap().unwrap().username, "bob");
    assert!(s.load(bob + 1000).unwrap().is_none());
    assert!(s.load(0).unwrap().is_none());
    assert!(s.load(u64::MAX).unwrap().is_none());
    // Another connection sees the same rows.
    assert_eq!(make().find_by_username("BOB").unwrap().unwrap().id, bob);
}

fn accounts_unique_ignoring_case(make: &AccountsFactory) {
    let mut s = make();
    let id = s.create_account("Zed", "h").unwrap();
    for clash in ["zed", "ZED", "Zed", "zEd"] {
        assert!(
            matches!(
                s.create_account(clash, "h2"),
                Err(StoreError::AccountExists)
            ),
            "{clash}"
        );
    }
    assert_eq!(
        s.find_by_username("zed").unwrap().unwrap().password_hash,
        "h"
    );
    assert!(s.create_account("zed2", "h").unwrap() > id);

    // Ten connections register the same name at once (in different cases): one wins.
    let barrier = Arc::new(Barrier::new(10));
    let results: Vec<_> = (0..10)
        .map(|i| {
            let make = Arc::clone(make);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut s = make();
                barrier.wait();
                let name = if i % 2 == 0 { "Racer" } else { "rACER" };
                s.create_account(name, "h")
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .all(|r| r.is_ok() || matches!(r, Err(StoreError::AccountExists))));
}

fn accounts_positions_saved_and_restored(make: &AccountsFactory) {
    let mut s = make();
    let a = s.create_account("a", "h").unwrap();
    let b = s.create_account("b", "h").unwrap();
    s.save_positions(&[
        (a, pos(1.5, -2.25, 3.0e6)),
        (b, pos(-0.1, 0.2, f32::MAX)),
        (a + b + 1000, pos(1.0, 1.0, 1.0)),
        (u64::MAX, pos(1.0, 1.0, 1.0)),
    ])
    .unwrap();
    let mut other = make();
    assert_eq!(
        other.load(a).unwrap().unwrap().position,
        pos(1.5, -2.25, 3.0e6)
    );
    assert_eq!(
        other.find_by_username("B").unwrap().unwrap().position,
        pos(-0.1, 0.2, f32::MAX)
    );
    // Non-finite positions are skipped, not fatal.
    s.save_positions(&[(a, pos(f32::NAN, 0.0, 0.0)), (b, pos(4.0, 5.0, 6.0))])
        .unwrap();
    assert_eq!(
        other.load(a).unwrap().unwrap().position,
        pos(1.5, -2.25, 3.0e6)
    );
    assert_eq!(other.load(b).unwrap().unwrap().position, pos(4.0, 5.0, 6.0));
    s.save_positions(&[]).unwrap();
}

fn accounts_big_position_batches(make: &AccountsFactory) {
    let mut s = make();
    let ids: Vec<AccountId> = (0..1200)
        .map(|i| s.create_account(&format!("many{i}"), "h").unwrap())
        .collect();
    let batch: Vec<_> = ids
        .iter()
        .map(|&id| (id, pos(id as f32, 1.0, -(id as f32))))
        .collect();
    s.save_positions(&batch).unwrap();
    for &id in [ids[0], ids[999], ids[1000], ids[1199]].iter() {
        assert_eq!(
            s.load(id).unwrap().unwrap().position,
            pos(id as f32, 1.0, -(id as f32))
        );
    }
    let recent = s.most_recent(3).unwrap();
    assert_eq!(recent.len(), 3);
}

#[test]
fn embedded_accounts_pass_the_suite() {
    let (make, _dir) = sqlite_accounts();
    accounts_create_find_ignoring_case(&make);
    accounts_unique_ignoring_case(&make);
    accounts_positions_saved_and_restored(&make);
    accounts_big_position_batches(&make);
}

#[test]
fn mysql_accounts_pass_the_suite() {
    let (make, db) = mysql_accounts("suite");
    accounts_create_find_ignoring_case(&make);
    accounts_unique_ignoring_case(&make);
    accounts_positions_saved_and_restored(&make);
    accounts_big_position_batches(&make);

    // The rows are really there, with the schema's timestamps.
    let mut conn = db.conn();
    use mysql::prelude::Queryable;
    let (count, saved): (u64, u64) = conn
        .query_first(
            "SELECT COUNT(*), COUNT(position_saved_at) FROM accounts \
             WHERE created_at IS NOT NULL AND updated_at IS NOT NULL",
        )
        .unwrap()
        .unwrap();
    assert!(count >= 1200 && saved >= 1200, "{count} {saved}");
    let versions: Vec<u32> = conn
        .query("SELECT version FROM schema_migrations ORDER BY version")
        .unwrap();
    assert_eq!(versions, vec![1]);
}

#[test]
fn mysql_migrations_run_once_even_when_processes_start_together() {
    let db = TestDb::create("migrate");
    let cfg = mysql_config(&db);
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let cfg = cfg.clone();
            let barrier = Arc::clone(&barrier);
            // Separate targets: like separate processes, each migrates on its own.
            std::thread::spawn(move || {
                let target = Arc::new(MysqlTarget::new(&cfg).unwrap());
                barrier.wait();
                target.check()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    use mysql::prelude::Queryable;
    let rows: Vec<(u32, String)> = db
        .conn()
        .query("SELECT version, name FROM schema_migrations")
        .unwrap();
    assert_eq!(rows, vec![(1, "accounts".to_string())]);
}

#[test]
fn mysql_refuses_a_schema_newer_than_it_knows() {
    let db = TestDb::create("newer");
    let cfg = mysql_config(&db);
    Arc::new(MysqlTarget::new(&cfg).unwrap()).check().unwrap();
    use mysql::prelude::Queryable;
    db.conn()
        .query_drop("INSERT INTO schema_migrations (version, name) VALUES (99, 'future')")
        .unwrap();
    let err = Arc::new(MysqlTarget::new(&cfg).unwrap())
        .check()
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Internal(m) if m.contains("99")),
        "{err}"
    );
    // And so does opening the stores at start.
    assert!(gameserver::store::open(&cfg, &TokensConfig::default()).is_err());
}

#[test]
fn mysql_down_is_unavailable_not_a_panic_and_says_where_without_the_password() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = StoreConfig {
        kind: StoreKind::Mysql,
        mysql_url: format!("mysql://gameserver:s3cret@127.0.0.1:{port}/gameserver"),
        ..StoreConfig::default()
    };
    let target = Arc::new(MysqlTarget::new(&cfg).unwrap());
    let mut s = MysqlAccountStore::new(Arc::clone(&target));
    for _ in 0..3 {
        match s.find_by_username("alice") {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains(&port.to_string()), "{m}");
                assert!(!m.contains("s3cret"), "{m}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    // The stores open anyway: the server starts while MySQL is down.
    let backend = gameserver::store::open(&cfg, &TokensConfig::default()).unwrap();
    backend.shutdown(Duration::from_millis(10));
}

// ---------------------------------------------------------------------------------------------
// Token stores

/// Makes handles (one per thread) on one token store. Two factories made by `two_processes`
/// share the data the way two processes would.
type TokensFactory = Arc<dyn Fn() -> Box<dyn TokenStore> + Send + Sync>;

fn memory_tokens() -> (TokensFactory, TokensFactory) {
    let shared = Arc::new(MemoryTokenStore::new());
    let one = Arc::clone(&shared);
    // One process only: both "processes" share the map.
    (
        Arc::new(move || Box::new(Arc::clone(&one))),
        Arc::new(move || Box::new(Arc::clone(&shared))),
    )
}

fn redis_config(prefix: &str) -> TokensConfig {
    TokensConfig {
        kind: TokensKind::Redis,
        redis_url: backends::redis_url(),
        redis_timeout_ms: 2000,
        key_prefix: prefix.into(),
    }
}

/// Two Redis targets (separate connections and breakers, as two processes have) on one
/// key prefix.
fn redis_tokens(tag: &str) -> (TokensFactory, TokensFactory, String) {
    let prefix = backends::key_prefix(tag);
    let make = |prefix: &str| -> TokensFactory {
        let target = Arc::new(RedisTarget::new(&redis_config(prefix), Duration::ZERO).unwrap());
        Arc::new(move || Box::new(RedisTokenStore::new(Arc::clone(&target))))
    };
    (make(&prefix), make(&prefix), prefix)
}

fn tokens_single_use(make: &TokensFactory) {
    let mut s = make();
    s.issue("t1", 7, Duration::from_secs(30)).unwrap();
    s.issue("t2", 8, Duration::from_secs(30)).unwrap();
    let r = s.redeem("t1").unwrap().unwrap();
    assert_eq!(r.account, 7);
    assert!(r.ttl_left <= Duration::from_secs(30) && r.ttl_left > Duration::from_secs(20));
    assert_eq!(s.redeem("t1").unwrap(), None);
    assert_eq!(s.redeem("unknown").unwrap(), None);
    assert_eq!(make().redeem("t2").unwrap().unwrap().account, 8);
    // A live token is never replaced.
    s.issue("t3", 1, Duration::from_secs(30)).unwrap();
    assert!(matches!(
        s.issue("t3", 2, Duration::from_secs(30)),
        Err(StoreError::Internal(_))
    ));
    assert_eq!(s.redeem("t3").unwrap().unwrap().account, 1);
    // Zero lifetime stores nothing; an absurd one is an error, not a panic.
    s.issue("t4", 1, Duration::ZERO).unwrap();
    assert_eq!(s.redeem("t4").unwrap(), None);
    assert!(s.issue("t5", 1, Duration::MAX).is_err());
}

fn tokens_expire(make: &TokensFactory) {
    let mut s = make();
    s.issue("short", 1, Duration::from_millis(300)).unwrap();
    s.issue("long", 2, Duration::from_secs(30)).unwrap();
    // Waiting out a lifetime is the behaviour under test, not a stand-in for an event.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(s.redeem("short").unwrap(), None);
    assert_eq!(s.redeem("long").unwrap().unwrap().account, 2);
}

/// 50 concurrent redemptions of one token, from two "processes": exactly one wins.
fn tokens_redeemed_once_under_concurrency(one: &TokensFactory, two: &TokensFactory) {
    for round in 0..5 {
        let token = format!("contested-{round}");
        one().issue(&token, 42, Duration::from_secs(30)).unwrap();
        let barrier = Arc::new(Barrier::new(50));
        let winners: usize = (0..50)
            .map(|i| {
                let make = Arc::clone(if i % 2 == 0 { one } else { two });
                let barrier = Arc::clone(&barrier);
                let token = token.clone();
                std::thread::spawn(move || {
                    let mut s = make();
                    barrier.wait();
                    s.redeem(&token).unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|r| r.map(|r| r.account) == Some(42))
            .count();
        assert_eq!(winners, 1, "round {round}");
    }
}

/// Failure counters: counted in a window, shared between two "processes", cleared on demand.
fn tokens_failures_shared(one: &TokensFactory, two: &TokensFactory) {
    let (mut a, mut b) = (one(), two());
    let w = Duration::from_secs(300);
    assert_eq!(a.failures("user:x").unwrap(), 0);
    assert_eq!(a.note_failure("user:x", w).unwrap(), 1);
    assert_eq!(b.note_failure("user:x", w).unwrap(), 2);
    assert_eq!(a.note_failure("user:x", w).unwrap(), 3);
    assert_eq!(b.failures("user:x").unwrap(), 3);
    assert_eq!(a.note_failure("user:y", w).unwrap(), 1);
    b.clear_failures("user:x").unwrap();
    b.clear_failures("never-seen").unwrap();
    assert_eq!(a.failures("user:x").unwrap(), 0);
    assert_eq!(a.failures("user:y").unwrap(), 1);

    // Concurrent failures from both all count.
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let make = Arc::clone(if i % 2 == 0 { one } else { two });
            std::thread::spawn(move || make().note_failure("addr:1.2.3.4", w).unwrap())
        })
        .collect();
    let counts: HashSet<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(counts, (1..=20).collect());

    // The window starts with the first failure and ends after `window`.
    let short = Duration::from_millis(300);
    assert_eq!(a.note_failure("user:w", short).unwrap(), 1);
    assert_eq!(b.note_failure("user:w", short).unwrap(), 2);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(a.failures("user:w").unwrap(), 0);
    assert_eq!(b.note_failure("user:w", short).unwrap(), 1);
}

#[test]
fn memory_tokens_pass_the_suite() {
    let (one, two) = memory_tokens();
    tokens_single_use(&one);
    tokens_expire(&one);
    tokens_redeemed_once_under_concurrency(&one, &two);
    tokens_failures_shared(&one, &two);
}

#[test]
fn redis_tokens_pass_the_suite() {
    let (one, two, prefix) = redis_tokens("suite");
    tokens_single_use(&one);
    tokens_expire(&one);
    tokens_redeemed_once_under_concurrency(&one, &two);
    tokens_failures_shared(&one, &two);

    // Tokens are Redis keys with a lifetime, gone once redeemed.
    let mut raw = backends::redis_conn(&backends::redis_url());
    one().issue("visible", 5, Duration::from_secs(30)).unwrap();
    let key = format!("{prefix}token:visible");
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut raw).unwrap();
    assert!(ttl > 25_000 && ttl <= 30_000, "{ttl}");
    two().redeem("visible").unwrap().unwrap();
    let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut raw).unwrap();
    assert_eq!(exists, 0);
    // Failure counters expire too.
    one()
        .note_failure("user:ttl", Duration::from_secs(60))
        .unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}fail:user:ttl"))
        .query(&mut raw)
        .unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
}

#[test]
fn redis_down_is_unavailable_not_a_panic_and_says_where_without_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = TokensConfig {
        kind: TokensKind::Redis,
        redis_url: format!("redis://:s3cret@127.0.0.1:{port}"),
        redis_timeout_ms: 500,
        key_prefix: "x:".into(),
    };
    let target = Arc::new(RedisTarget::new(&cfg, Duration::from_millis(50)).unwrap());
    let mut s = RedisTokenStore::new(target);
    for _ in 0..3 {
        match s.redeem("t") {
            Err(StoreError::Unavailable(m)) => {
                assert!(
                    m.contains(&port.to_string()) && !m.contains("s3cret"),
                    "{m}"
                );
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The services on each pairing of stores

fn services_for(
    store: StoreConfig,
    tokens: TokensConfig,
) -> (gameserver::store::Backend, impl Fn() -> Services) {
    let backend = gameserver::store::open(&store, &tokens).unwrap();
    let make = backend.services();
    (backend, move || make().unwrap())
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn token_of(outcome: LoginOutcome) -> String {
    match outcome {
        LoginOutcome::Ok { token, .. } => token,
        other => panic!("expected Ok, got {other:?}"),
    }
}

fn services_suite(make: &dyn Fn() -> Services, backend: &gameserver::store::Backend) {
    let (mut s1, mut s2) = (make(), make());
    let RegisterOutcome::Created(alice) = register(&mut s1, "Alice", "password1").unwrap() else {
        panic!("alice not created");
    };
    assert_eq!(
        register(&mut s2, "ALICE", "password2").unwrap(),
        RegisterOutcome::Exists
    );
    assert_eq!(
        login(&mut s2, "alice", "wrong-password", ip(1)).unwrap(),
        LoginOutcome::InvalidCredentials
    );
    assert_eq!(
        login(&mut s1, "nobody", "password1", ip(1)).unwrap(),
        LoginOutcome::InvalidCredentials
    );
    let token = token_of(login(&mut s2, "aLiCe", "password1", ip(2)).unwrap());
    let entered = redeem_for_enter(&mut s1, &token).unwrap().unwrap();
    assert_eq!((entered.id, entered.username.as_str()), (alice, "Alice"));
    assert_eq!(entered.position, Position::default());
    assert!(redeem_for_enter(&mut s2, &token).unwrap().is_none());

    // Positions go through the writer and come back on the next enter.
    backend.writer().save(&[(alice, pos(3.0, 4.0, 5.0))]);
    let token = token_of(login(&mut s1, "alice", "password1", ip(2)).unwrap());
    assert_eq!(
        redeem_for_enter(&mut s2, &token).unwrap().unwrap().position,
        pos(3.0, 4.0, 5.0)
    );
    while backend.stats().writer.pending > 0 {
        std::thread::yield_now();
    }
    assert_eq!(
        s1.accounts.load(alice).unwrap().unwrap().position,
        pos(3.0, 4.0, 5.0)
    );

    // Throttling counts across handles (threads here; processes in tests/roles.rs).
    s1.max_failed_logins = 3;
    s2.max_failed_logins = 3;
    register(&mut s1, "bob", "password1").unwrap();
    for i in 0..3 {
        let s = if i == 1 { &mut s2 } else { &mut s1 };
        assert_eq!(
            login(s, "bob", "wrong-password", ip(9)).unwrap(),
            LoginOutcome::InvalidCredentials
        );
    }
    assert_eq!(
        login(&mut s2, "bob", "password1", ip(10)).unwrap(),
        LoginOutcome::RateLimited
    );
}

#[test]
fn services_on_embedded_stores() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig {
        sqlite_path: dir.path().join("accounts.db"),
        argon2: TINY,
        ..StoreConfig::default()
    };
    let (backend, make) = services_for(store, TokensConfig::default());
    services_suite(&make, &backend);
    backend.shutdown(Duration::from_secs(5));
}

#[test]
fn services_on_mysql_and_redis() {
    let db = TestDb::create("services");
    let tokens = redis_config(&backends::key_prefix("services"));
    let (backend, make) = services_for(mysql_config(&db), tokens);
    services_suite(&make, &backend);
    backend.shutdown(Duration::from_secs(5));
    let stats = backend.stats();
    assert_eq!((stats.writer.pending, stats.writer.dropped), (0, 0));
    let cache = stats.cache.unwrap();
    assert!(cache.hits > 0 && cache.misses > 0, "{cache:?}");
}
