//! Store numbers in the style of seed 000: 500,000 accounts in MySQL (seeded by bulk insert with
//! one precomputed Argon2id hash), then
//! (a) the same lookup repeated (a cache hit), (b) random lookups (cache misses), each with and
//!     without the account cache, and lookups with and without the username index;
//! (c) registration- and position-save-heavy writes, with and without the cache;
//! and world entries per second (`C_ENTER`) through a real server with tokens in Redis.
//! Average, p50, p99 and operations per second.
//!
//! Needs a MySQL (MariaDB) and a Redis server: `scripts/bench-stores` starts throwaway ones and
//! runs `cargo bench --bench stores`; or set `GAMESERVER_TEST_MYSQL_URL` (a server URL, no
//! database) and `GAMESERVER_TEST_REDIS_URL` yourself. It creates and drops the database
//! `gs_bench_stores`. The load shares the machine's cores with MySQL, Redis and the server, so
//! these are numbers to compare between runs on one machine, not capacities.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use gameserver::client::Connection;
use gameserver::config::Config;
use gameserver::model::{AccountId, Position};
use gameserver::protocol::{pb, ServerMessage};
use gameserver::store::mysql::MysqlTarget;
use gameserver::store::redis_tokens::RedisTarget;
use gameserver::store::{
    new_token, AccountCache, AccountStore, Argon2Config, CacheConfig, CachedAccountStore,
    MysqlAccountStore, PasswordHasher, RedisTokenStore, StoreConfig, StoreKind, TokenStore,
    TokensConfig, TokensKind,
};
use mysql::prelude::Queryable;
use rand::Rng;

const ACCOUNTS: u64 = 500_000;
const DB: &str = "gs_bench_stores";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!("{name} is not set: run scripts/bench-stores (it starts MySQL and Redis)");
        std::process::exit(2)
    })
}

struct Sample {
    name: String,
    nanos: Vec<u64>,
    wall: Duration,
    ops: u64,
}

impl Sample {
    fn row(&self) -> String {
        let mut sorted = self.nanos.clone();
        sorted.sort_unstable();
        let pct = |p: f64| {
            let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
            sorted.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        let avg = sorted.iter().sum::<u64>() as f64 / sorted.len().max(1) as f64 / 1000.0;
        format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
            self.name,
            self.ops,
            avg,
            pct(0.5),
            pct(0.99),
            self.ops as f64 / self.wall.as_secs_f64()
        )
    }

    fn avg_micros(&self) -> f64 {
        self.nanos.iter().sum::<u64>() as f64 / self.nanos.len().max(1) as f64 / 1000.0
    }
}

/// Times `op` `n` times, one after another.
fn time(name: &str, n: u64, mut op: impl FnMut(u64)) -> Sample {
    let mut nanos = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        op(i);
        nanos.push(t.elapsed().as_nanos() as u64);
    }
    Sample {
        name: name.into(),
        nanos,
        wall: start.elapsed(),
        ops: n,
    }
}

fn store_config(server_url: &str) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::Mysql,
        mysql_url: format!("{server_url}/{DB}"),
        mysql_io_timeout_ms: 600_000,
        ..StoreConfig::default()
    }
}

fn seed(server_url: &str) -> (Arc<MysqlTarget>, Duration) {
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(server_url).unwrap())
        .prefer_socket(false);
    let mut admin = mysql::Conn::new(opts).expect("connect to MySQL");
    admin
        .query_drop(format!("DROP DATABASE IF EXISTS {DB}"))
        .unwrap();
    admin.query_drop(format!("CREATE DATABASE {DB}")).unwrap();
    let target = Arc::new(MysqlTarget::new(&store_config(server_url)).unwrap());
    target.check().expect("schema created");

    // One real Argon2id hash (default cost), shared by every seeded account.
    let hash = PasswordHasher::new(&Argon2Config::default())
        .unwrap()
        .hash("password123")
        .unwrap();
    let opts = mysql::OptsBuilder::from_opts(
        mysql::Opts::from_url(&format!("{server_url}/{DB}")).unwrap(),
    )
    .prefer_socket(false);
    let mut conn = mysql::Conn::new(opts).unwrap();
    let start = Instant::now();
    const ROWS: u64 = 2000;
    let mut first = 1;
    while first <= ACCOUNTS {
        let last = (first + ROWS - 1).min(ACCOUNTS);
        let mut sql =
            String::from("INSERT INTO accounts (username, username_key, password_hash) VALUES ");
        let mut params: Vec<mysql::Value> = Vec::new();
        for i in first..=last {
            if i > first {
                sql.push(',');
            }
            sql.push_str("(?, ?, ?)");
            params.push(format!("User{i}").into());
            params.push(format!("user{i}").into());
            params.push(hash.as_str().into());
        }
        conn.exec_drop(sql, params).unwrap();
        first = last + 1;
    }
    (target, start.elapsed())
}

fn cache_config() -> CacheConfig {
    CacheConfig {
        max_entries: 100_000,
        ..CacheConfig::default()
    }
}

fn plain(target: &Arc<MysqlTarget>) -> Box<dyn AccountStore> {
    Box::new(MysqlAccountStore::new(Arc::clone(target)))
}

fn cached(target: &Arc<MysqlTarget>) -> (Box<dyn AccountStore>, Arc<AccountCache>) {
    let cache = Arc::new(AccountCache::new(&cache_config()));
    (
        Box::new(CachedAccountStore::new(plain(target), Arc::clone(&cache))),
        cache,
    )
}

fn random_name(rng: &mut impl Rng) -> String {
    format!("user{}", rng.gen_range(1..=ACCOUNTS))
}

fn lookups(target: &Arc<MysqlTarget>, out: &mut Vec<Sample>) -> f64 {
    let n = 20_000;
    let mut s = plain(target);
    let miss = time("(a) same lookup, no cache (MySQL, indexed)", n, |_| {
        s.find_by_username("user250000").unwrap().unwrap();
    });
    let (mut c, cache) = cached(target);
    let hit = time("(a) same lookup, cache (hits)", n * 10, |_| {
        c.find_by_username("user250000").unwrap().unwrap();
    });
    assert_eq!(cache.stats().misses, 1);
    let ratio = miss.avg_micros() / hit.avg_micros();
    out.push(miss);
    out.push(hit);

    let mut rng = rand::thread_rng();
    out.push(time("(b) random lookups, no cache", n, |_| {
        s.find_by_username(&random_name(&mut rng)).unwrap().unwrap();
    }));
    let (mut c, cache) = cached(target);
    out.push(time(
        "(b) random lookups, cache (cold, 100k entries)",
        n,
        |_| {
            c.find_by_username(&random_name(&mut rng)).unwrap().unwrap();
        },
    ));
    let stats = cache.stats();
    println!(
        "  random with cache: hits {} misses {} evictions {}",
        stats.hits, stats.misses, stats.evictions
    );
    ratio
}

fn without_index(target: &Arc<MysqlTarget>, server_url: &str, out: &mut Vec<Sample>) {
    let opts = mysql::OptsBuilder::from_opts(
        mysql::Opts::from_url(&format!("{server_url}/{DB}")).unwrap(),
    )
    .prefer_socket(false);
    let mut admin = mysql::Conn::new(opts).unwrap();
    admin
        .query_drop("ALTER TABLE accounts DROP INDEX accounts_username_key")
        .unwrap();
    let mut s = plain(target);
    let mut rng = rand::thread_rng();
    out.push(time(
        "(b) random lookups, no cache, NO username index",
        50,
        |_| {
            s.find_by_username(&random_name(&mut rng)).unwrap().unwrap();
        },
    ));
    admin
        .query_drop("ALTER TABLE accounts ADD UNIQUE KEY accounts_username_key (username_key)")
        .unwrap();
}

fn writes(target: &Arc<MysqlTarget>, out: &mut Vec<Sample>) {
    let hash = PasswordHasher::new(&Argon2Config::default())
        .unwrap()
        .hash("password123")
        .unwrap();
    let n = 5_000;
    let mut s = plain(target);
    out.push(time("(c) registrations (insert), no cache", n, |i| {
        s.create_account(&format!("new_plain_{i}"), &hash).unwrap();
    }));
    let (mut c, _) = cached(target);
    out.push(time("(c) registrations (insert), cache", n, |i| {
        c.create_account(&format!("new_cached_{i}"), &hash).unwrap();
    }));

    let mut rng = rand::thread_rng();
    let batch = |rng: &mut rand::rngs::ThreadRng| -> Vec<(AccountId, Position)> {
        (0..500)
            .map(|_| {
                (
                    rng.gen_range(1..=ACCOUNTS),
                    Position {
                        x: rng.gen(),
                        y: rng.gen(),
                        z: rng.gen(),
                    },
                )
            })
            .collect()
    };
    let batches = 400;
    let mut sample = time(
        "(c) position saves, 500-row statements, no cache",
        batches,
        |_| {
            s.save_positions(&batch(&mut rng)).unwrap();
        },
    );
    sample.ops *= 500;
    sample.name.push_str(" (ops = rows; latency per statement)");
    out.push(sample);
    let (mut c, cache) = cached(target);
    // Warm the cache with the accounts the saves touch, so that invalidation has work to do.
    for i in 1..=50_000 {
        c.find_by_username(&format!("user{i}")).unwrap();
    }
    let mut sample = time(
        "(c) position saves, 500-row statements, cache",
        batches,
        |_| {
            c.save_positions(&batch(&mut rng)).unwrap();
        },
    );
    sample.ops *= 500;
    sample.name.push_str(" (ops = rows; latency per statement)");
    out.push(sample);
    println!("  cache after saves: {:?}", cache.stats());
    let mut single = plain(target);
    let mut sample = time(
        "(c) position saves, one row per statement, no cache",
        5_000,
        |_| {
            single.save_positions(&batch(&mut rng)[..1]).unwrap();
        },
    );
    sample.name.push_str(" (for comparison)");
    out.push(sample);
}

/// Enters with every token of `tokens` through the world service at `world`: 4 client threads,
/// each with `window` connections in flight; returns `C_ENTER{OK}`/s.
fn measure_entries(
    world: std::net::SocketAddr,
    tokens: Vec<String>,
    window: usize,
    what: &str,
    out: &mut Vec<Sample>,
) -> f64 {
    let total = tokens.len() as u64;
    let threads = 4; // each with `window` connections in flight
    let per_thread = total / threads;
    let tokens = Arc::new(tokens);
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let clients: Vec<_> = (0..threads)
        .map(|t| {
            let (tokens, done, refused, barrier) = (
                Arc::clone(&tokens),
                Arc::clone(&done),
                Arc::clone(&refused),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                let mut nanos = Vec::new();
                barrier.wait();
                let mine = &tokens[(t * per_thread) as usize..((t + 1) * per_thread) as usize];
                for chunk in mine.chunks(window) {
                    let started = Instant::now();
                    let mut conns: Vec<Connection> = chunk
                        .iter()
                        .map(|_| Connection::connect(world, None, Duration::from_secs(30)).unwrap())
                        .collect();
                    for (c, token) in conns.iter_mut().zip(chunk) {
                        c.send(&pb::CEnter {
                            token: token.clone(),
                        })
                        .unwrap();
                    }
                    for c in &mut conns {
                        loop {
                            match c.recv_timeout(Duration::from_secs(30)) {
                                Ok(ServerMessage::Enter(e)) => {
                                    if e.result != pb::Result::Ok as i32 {
                                        refused.fetch_add(1, Ordering::Relaxed);
                                    }
                                    break;
                                }
                                Ok(_) => continue,
                                Err(e) => panic!("no S_ENTER: {e}"),
                            }
                        }
                    }
                    let per = started.elapsed().as_nanos() as u64 / chunk.len() as u64;
                    nanos.extend(std::iter::repeat(per).take(chunk.len()));
                    done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    drop(conns);
                }
                nanos
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut nanos = Vec::new();
    for c in clients {
        nanos.extend(c.join().unwrap());
    }
    let wall = start.elapsed();
    let refused = refused.load(Ordering::SeqCst);
    if refused > 0 {
        println!("  window {window}: {refused} of {total} C_ENTER not OK (SERVER_BUSY)");
    }
    let rate = (total - refused) as f64 / wall.as_secs_f64();
    out.push(Sample {
        name: format!(
            "C_ENTER through the server ({what}), {threads} clients x {window} connections in flight (latency: per entry within a window)"
        ),
        nanos,
        wall,
        ops: total,
    });
    rate
}

/// `C_ENTER` per second through a real 2-shard server (plaintext, so that TLS handshakes do not
/// dominate), tokens in Redis, accounts in MySQL. Tokens are put into Redis beforehand (a
/// login costs an Argon2 hash, which is not what this measures); every client connection
/// enters once and closes.
fn entries(server_url: &str, redis_url: &str, window: usize, out: &mut Vec<Sample>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("bench:{}:", std::process::id());
    let mut config = Config::default();
    config.server.login_addr = "127.0.0.1:0".parse().unwrap();
    config.server.world_addr = "127.0.0.1:0".parse().unwrap();
    config.server.max_connections_per_shard = 100_000;
    config.shards.count = 2;
    config.shards.pin = false;
    config.shards.io_memory_kib = 64;
    config.tls.enabled = false;
    config.tls.cert_path = dir.path().join("server.pem");
    config.tls.key_path = dir.path().join("server.key");
    config.tls.ca_path = dir.path().join("ca.pem");
    config.store = store_config(server_url);
    config.store.db_threads = 8;
    config.store.queue_capacity = 8192;
    config.store.mysql_io_timeout_ms = 3000;
    config.tokens = TokensConfig {
        kind: TokensKind::Redis,
        redis_url: redis_url.into(),
        key_prefix: prefix.clone(),
        ..TokensConfig::default()
    };
    let server = gameserver::server::start(config.clone()).expect("server starts");
    let world = server.world_addr();

    let total: u64 = 40_000;
    let target = Arc::new(RedisTarget::new(&config.tokens, Duration::from_millis(500)).unwrap());
    let tokens: Vec<String> = {
        let mut s = RedisTokenStore::new(Arc::clone(&target));
        (0..total)
            .map(|i| {
                let t = new_token();
                s.issue(&t, 1 + (i % ACCOUNTS), Duration::from_secs(600))
                    .unwrap();
                t
            })
            .collect()
    };
    let rate = measure_entries(
        world,
        tokens,
        window,
        "tokens in Redis, accounts in MySQL",
        out,
    );
    server.shutdown();
    server.wait().unwrap();
    rate
}

/// What one `C_ENTER` costs the stores, without the server: 8 threads (as many as the server's
/// DB threads below) each redeeming pre-issued Redis tokens and loading the account from MySQL
/// (`ops::redeem_for_enter`).
fn enter_path(server_url: &str, redis_url: &str, out: &mut Vec<Sample>) -> f64 {
    let tokens_cfg = TokensConfig {
        kind: TokensKind::Redis,
        redis_url: redis_url.into(),
        key_prefix: format!("bench:path:{}:", std::process::id()),
        ..TokensConfig::default()
    };
    let backend = gameserver::store::open(&store_config(server_url), &tokens_cfg).unwrap();
    let make = backend.services();
    let threads = 8u64;
    let per_thread = 5_000u64;
    let barrier = Arc::new(Barrier::new(threads as usize + 1));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let mut s = make().unwrap();
            let barrier = Arc::clone(&barrier);
            let tokens: Vec<String> = (0..per_thread)
                .map(|i| {
                    let token = new_token();
                    let id = 1 + (t * per_thread + i) % ACCOUNTS;
                    s.tokens
                        .issue(&token, id, Duration::from_secs(600))
                        .unwrap();
                    token
                })
                .collect();
            std::thread::spawn(move || {
                barrier.wait();
                let mut nanos = Vec::with_capacity(tokens.len());
                for token in &tokens {
                    let t0 = Instant::now();
                    gameserver::store::ops::redeem_for_enter(&mut s, token)
                        .unwrap()
                        .unwrap();
                    nanos.push(t0.elapsed().as_nanos() as u64);
                }
                nanos
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut nanos = Vec::new();
    for w in workers {
        nanos.extend(w.join().unwrap());
    }
    let wall = start.elapsed();
    let ops = threads * per_thread;
    out.push(Sample {
        name: format!("enter path on the stores alone: GETDEL + load by id, {threads} threads"),
        nanos,
        wall,
        ops,
    });
    backend.shutdown(Duration::from_secs(5));
    ops as f64 / wall.as_secs_f64()
}

/// The same entries on the embedded stores (SQLite, in-process tokens), as a baseline for what
/// the server itself costs. Tokens come from real logins (Argon2 at a tiny cost), made before
/// the measured part.
fn entries_embedded(window: usize, out: &mut Vec<Sample>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.login_addr = "127.0.0.1:0".parse().unwrap();
    config.server.world_addr = "127.0.0.1:0".parse().unwrap();
    config.server.max_connections_per_shard = 100_000;
    config.shards.count = 2;
    config.shards.pin = false;
    config.shards.io_memory_kib = 64;
    config.tls.enabled = false;
    config.tls.cert_path = dir.path().join("server.pem");
    config.tls.key_path = dir.path().join("server.key");
    config.tls.ca_path = dir.path().join("ca.pem");
    config.store.sqlite_path = dir.path().join("accounts.db");
    config.store.db_threads = 8;
    config.store.queue_capacity = 8192;
    config.store.max_failed_logins = 0;
    config.store.token_ttl_secs = 600;
    config.store.argon2 = Argon2Config {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let server = gameserver::server::start(config).expect("server starts");
    let (login, world) = (server.login_addr(), server.world_addr());
    let per_thread = 2_500;
    let tokens: Vec<String> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Connection::connect(login, None, Duration::from_secs(30)).unwrap();
                let mut tokens = Vec::new();
                for i in 0..per_thread {
                    let name = format!("e{t}x{i}");
                    c.send(&pb::CRegister {
                        username: name.clone(),
                        password: "password123".into(),
                    })
                    .unwrap();
                    c.recv_timeout(Duration::from_secs(30)).unwrap();
                    c.send(&pb::CLogin {
                        username: name,
                        password: "password123".into(),
                    })
                    .unwrap();
                    match c.recv_timeout(Duration::from_secs(30)).unwrap() {
                        ServerMessage::Login(l) if l.result == pb::Result::Ok as i32 => {
                            tokens.push(l.token)
                        }
                        other => panic!("login: {other:?}"),
                    }
                }
                tokens
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let rate = measure_entries(world, tokens, window, "embedded stores, baseline", out);
    server.shutdown();
    server.wait().unwrap();
    rate
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    let server_url = env("GAMESERVER_TEST_MYSQL_URL")
        .trim_end_matches('/')
        .to_string();
    let redis_url = env("GAMESERVER_TEST_REDIS_URL");
    println!("seeding {ACCOUNTS} accounts...");
    let (target, seeded) = seed(&server_url);
    println!(
        "seeded {ACCOUNTS} accounts in {:.1} s ({:.0} rows/s)",
        seeded.as_secs_f64(),
        ACCOUNTS as f64 / seeded.as_secs_f64()
    );
    let mut out = Vec::new();
    let ratio = lookups(&target, &mut out);
    without_index(&target, &server_url, &mut out);
    writes(&target, &mut out);
    let store_rate = enter_path(&server_url, &redis_url, &mut out);
    let mut rates = Vec::new();
    for window in [4, 16, 64] {
        rates.push((window, entries(&server_url, &redis_url, window, &mut out)));
    }
    let baseline = entries_embedded(4, &mut out);

    println!();
    println!("| scenario | ops | avg µs | p50 µs | p99 µs | ops/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for s in &out {
        println!("{}", s.row());
    }
    let indexed = out
        .iter()
        .find(|s| s.name.starts_with("(b) random lookups, no cache") && !s.name.contains("NO"))
        .map(Sample::avg_micros)
        .unwrap_or(0.0);
    let unindexed = out
        .iter()
        .find(|s| s.name.contains("NO username index"))
        .map(Sample::avg_micros)
        .unwrap_or(0.0);
    println!();
    println!("cache hit vs MySQL lookup (same account), average latency: {ratio:.0}x");
    println!(
        "username index: random lookup {indexed:.0} µs with, {unindexed:.0} µs without ({:.0}x)",
        unindexed / indexed
    );
    println!("enter path on the stores alone (GETDEL + load): {store_rate:.0}/s");
    for (window, rate) in rates {
        println!(
            "world entries, {} connections in flight: {rate:.0} C_ENTER/s",
            window * 4
        );
    }
    println!("world entries on the embedded stores, 16 in flight: {baseline:.0} C_ENTER/s");

    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&server_url).unwrap())
        .prefer_socket(false);
    let mut admin = mysql::Conn::new(opts).unwrap();
    admin
        .query_drop(format!("DROP DATABASE IF EXISTS {DB}"))
        .unwrap();
}
