//! Outages of MySQL and Redis under a running server, through a fault-injecting proxy (cut:
//! connections reset and refused; stall: connections open, nothing passes): logins and
//! registrations answer `SERVER_BUSY` within 2 s, the world keeps serving chat and moves, and
//! once the link heals everything works again without a restart and every accepted position is
//! in MySQL. Then Redis killed and restarted under load: calls fail fast, recover on their own,
//! and no reply is ever matched to the wrong request.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backends::{self, TestDb};
use common::proxy::FaultProxy;
use common::*;
use gameserver::client::Connection;
use gameserver::protocol::pb::{self, Result as Code};
use gameserver::protocol::ServerMessage;
use gameserver::store::redis_tokens::RedisTarget;
use gameserver::store::{
    RedisTokenStore, StoreError, StoreKind, TokenStore, TokensConfig, TokensKind,
};

/// The bound PROTOCOL.md sets on a `SERVER_BUSY` answer in these tests.
const BUSY_WITHIN: Duration = Duration::from_secs(2);
const PASSWORD: &str = "password123";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Cut,
    Stall,
}

fn inject(proxy: &FaultProxy, fault: Fault) {
    match fault {
        Fault::Cut => proxy.cut(),
        Fault::Stall => proxy.stall(),
    }
}

fn addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = host_port.split('/').next().unwrap();
    host_port.parse().expect("a 127.0.0.1:port URL")
}

/// Sends `C_LOGIN` on `conn` and returns the answer, which must come within `within`.
fn login_within(conn: &mut Connection, name: &str, within: Duration) -> pb::SLogin {
    conn.send(&pb::CLogin {
        username: name.into(),
        password: PASSWORD.into(),
    })
    .unwrap();
    match conn.recv_timeout(within) {
        Ok(ServerMessage::Login(l)) => l,
        other => panic!("login {name}: no S_LOGIN within {within:?}: {other:?}"),
    }
}

fn register_within(conn: &mut Connection, name: &str, within: Duration) -> pb::SRegister {
    conn.send(&pb::CRegister {
        username: name.into(),
        password: PASSWORD.into(),
    })
    .unwrap();
    match conn.recv_timeout(within) {
        Ok(ServerMessage::Register(r)) => r,
        other => panic!("register {name}: no S_REGISTER within {within:?}: {other:?}"),
    }
}

fn enter_within(conn: &mut Connection, token: &str, within: Duration) -> pb::SEnter {
    conn.send(&pb::CEnter {
        token: token.into(),
    })
    .unwrap();
    loop {
        match conn.recv_timeout(within) {
            Ok(ServerMessage::Enter(e)) => return e,
            Ok(_) => continue,
            Err(e) => panic!("no S_ENTER within {within:?}: {e}"),
        }
    }
}

/// Logs in on `conn` until the answer is `OK` (the store is back); panics after `WAIT`.
fn login_until_ok(conn: &mut Connection, name: &str) -> pb::SLogin {
    let deadline = Instant::now() + WAIT;
    loop {
        let l = login_within(conn, name, WAIT);
        if l.result == Code::Ok as i32 {
            return l;
        }
        assert_eq!(l.result, Code::ServerBusy as i32, "login {name}: {l:?}");
        assert!(
            Instant::now() < deadline,
            "login {name} still busy after {WAIT:?}"
        );
        // The server answers busy at once while its breaker is open: ask again a little later.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn expect_chat(p: &mut Player, from: u64, text: &str) {
    p.expect(&format!("chat {text:?} from {from}"), |m| match m {
        ServerMessage::Chat(c) if c.player_id == from && c.text == text => Some(()),
        _ => None,
    });
}

fn expect_move(p: &mut Player, from: u64, x: f32) {
    p.expect(&format!("move of {from} to x={x}"), |m| match m {
        ServerMessage::Move(mv) if mv.player_id == from && mv.x == x => Some(()),
        _ => None,
    });
}

fn expect_despawn(p: &mut Player, id: u64) {
    p.expect(&format!("despawn of {id}"), |m| match m {
        ServerMessage::Despawn(d) if d.player_ids.contains(&id) => Some(()),
        _ => None,
    });
}

/// Waits until the server's position writer satisfies `ok` (its progress is visible only
/// through its counters).
fn wait_writer(
    server: &TestServer,
    what: &str,
    ok: impl Fn(&gameserver::store::WriterStats) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = server.handle().store_stats().writer;
        if ok(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "writer never got to {what}: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn mysql_outage(fault: Fault) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
    let db = TestDb::create(&format!("outage_{fault:?}").to_lowercase());
    let proxy = FaultProxy::start(addr_of(&backends::mysql_server_url()));
    let via_proxy = format!("mysql://gameserver:gameserver@{}/{}", proxy.addr(), db.name);
    let prefix = backends::key_prefix("mysql_outage");
    let server = TestServer::start(false, |c| {
        c.store.kind = StoreKind::Mysql;
        c.store.mysql_url = via_proxy;
        c.store.mysql_connect_timeout_ms = 500;
        c.store.mysql_io_timeout_ms = 500;
        c.store.retry_after_failure_ms = 200;
        c.store.request_timeout_ms = 1500;
        c.store.writer.retry_ms = 100;
        c.server.save_interval_ms = 200;
        c.tokens = TokensConfig {
            kind: TokensKind::Redis,
            redis_url: backends::redis_url(),
            key_prefix: prefix,
            ..TokensConfig::default()
        };
    });
    let mut alice = server.enter_settled("alice", Some(0));
    let mut bob = server.enter_settled("bob", Some(1));
    let carol = server.register("carol", PASSWORD);
    alice.expect_spawn(bob.id);
    alice.move_to(1.0, 2.0, 3.0);
    expect_move(&mut bob, alice.id, 1.0);

    inject(&proxy, fault);

    // Whatever needs MySQL answers SERVER_BUSY, in time, and the connection stays open.
    let mut login = server.login_conn();
    for attempt in 0..3 {
        let l = login_within(&mut login, "carol", BUSY_WITHIN);
        assert_eq!(
            l.result,
            Code::ServerBusy as i32,
            "carol login {attempt}: {l:?}"
        );
        let r = register_within(&mut login, "dave", BUSY_WITHIN);
        assert_eq!(
            r.result,
            Code::ServerBusy as i32,
            "dave register {attempt}: {r:?}"
        );
    }
    // Alice's account is in the cache: she can still log in; entering needs MySQL.
    let relogin = login_within(&mut login, "alice", BUSY_WITHIN);
    assert_eq!(relogin.result, Code::Ok as i32, "{relogin:?}");
    let mut second = server.world_conn();
    let busy = enter_within(&mut second, &relogin.token, BUSY_WITHIN);
    assert_eq!(busy.result, Code::ServerBusy as i32, "{busy:?}");

    // The world keeps serving.
    alice.chat("during the outage");
    expect_chat(&mut bob, alice.id, "during the outage");
    alice.move_to(4.0, 5.0, 6.0);
    expect_move(&mut bob, alice.id, 4.0);
    bob.move_to(7.0, 8.0, 9.0);
    expect_move(&mut alice, bob.id, 7.0);
    // Alice leaves: her last position is accepted and held.
    let alice_id = alice.id;
    drop(alice);
    expect_despawn(&mut bob, alice_id);
    wait_writer(&server, "a failed write", |w| {
        w.failed_writes > 0 && w.pending >= 1
    });

    proxy.heal();

    // Everything works again, without a restart.
    let back = login_until_ok(&mut login, "carol");
    assert_eq!(back.account_id, carol);
    let mut carol_conn = server.world_conn();
    let entered = enter_within(&mut carol_conn, &back.token, WAIT);
    assert_eq!(entered.result, Code::Ok as i32, "{entered:?}");
    let mut carol_player = Player {
        id: carol,
        name: "carol".into(),
        conn: carol_conn,
        entered,
    };
    carol_player.expect_spawn(bob.id);
    bob.chat("after the outage");
    expect_chat(&mut carol_player, bob.id, "after the outage");
    let r = register_within(&mut login, "dave", WAIT);
    assert_eq!(r.result, Code::Ok as i32, "{r:?}");
    // The token that met the outage was put back: it enters now.
    let again = enter_within(&mut second, &relogin.token, WAIT);
    assert_eq!(again.result, Code::Ok as i32, "{again:?}");
    assert_eq!(again.player.unwrap().x, 4.0);

    // Every accepted position is in MySQL: what the writer held, and, after a graceful stop,
    // everyone's last one.
    wait_writer(&server, "an empty queue", |w| w.pending == 0);
    assert_eq!(db.position(alice_id), Some((4.0, 5.0, 6.0)));
    let stats = server.handle().store_stats().writer;
    assert_eq!(stats.dropped, 0, "{stats:?}");
    let bob_id = bob.id;
    server.stop();
    assert_eq!(db.position(bob_id), Some((7.0, 8.0, 9.0)));
}

#[test]
fn mysql_cut_answers_busy_keeps_the_world_and_heals() {
    mysql_outage(Fault::Cut);
}

#[test]
fn mysql_stall_answers_busy_keeps_the_world_and_heals() {
    mysql_outage(Fault::Stall);
}

fn redis_outage(fault: Fault) {
    let db = TestDb::create(&format!("redis_{fault:?}").to_lowercase());
    let proxy = FaultProxy::start(addr_of(&backends::redis_url()));
    let prefix = backends::key_prefix("redis_outage");
    let mysql_url = db.url.clone();
    let server = TestServer::start(false, |c| {
        c.store.kind = StoreKind::Mysql;
        c.store.mysql_url = mysql_url;
        c.store.retry_after_failure_ms = 200;
        c.store.request_timeout_ms = 1500;
        c.tokens = TokensConfig {
            kind: TokensKind::Redis,
            redis_url: format!("redis://{}", proxy.addr()),
            redis_timeout_ms: 1000,
            key_prefix: prefix.clone(),
        };
    });
    let mut alice = server.enter_settled("alice", Some(0));
    let mut bob = server.enter_settled("bob", Some(1));
    let carol = server.register("carol", PASSWORD);
    let token = server.token_for("carol", carol);

    inject(&proxy, fault);

    let mut login = server.login_conn();
    for attempt in 0..3 {
        let l = login_within(&mut login, "bob", BUSY_WITHIN);
        assert_eq!(l.result, Code::ServerBusy as i32, "login {attempt}: {l:?}");
    }
    let mut carol_conn = server.world_conn();
    let busy = enter_within(&mut carol_conn, &token, BUSY_WITHIN);
    assert_eq!(busy.result, Code::ServerBusy as i32, "{busy:?}");
    alice.chat("tokens are down");
    expect_chat(&mut bob, alice.id, "tokens are down");

    proxy.heal();

    login_until_ok(&mut login, "bob");
    let again = enter_within(&mut carol_conn, &token, WAIT);
    match fault {
        // The redemption never reached Redis: the token is still good.
        Fault::Cut => assert_eq!(again.result, Code::Ok as i32, "{again:?}"),
        // A stalled GETDEL is delivered when the link heals, after the answer was SERVER_BUSY:
        // the token may be spent (see the README). A new login always works.
        Fault::Stall => {
            if again.result != Code::Ok as i32 {
                assert_eq!(again.result, Code::InvalidToken as i32, "{again:?}");
                let fresh = server.token_for("carol", carol);
                let mut conn = server.world_conn();
                let e = enter_within(&mut conn, &fresh, WAIT);
                assert_eq!(e.result, Code::Ok as i32, "{e:?}");
            }
        }
    }
    // Redeemed tokens are gone from Redis.
    let mut raw = backends::redis_conn(&backends::redis_url());
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}token:{token}"))
        .query(&mut raw)
        .unwrap();
    assert_eq!(exists, 0);
}

#[test]
fn redis_cut_answers_busy_keeps_the_world_and_heals() {
    redis_outage(Fault::Cut);
}

#[test]
fn redis_stall_answers_busy_keeps_the_world_and_heals() {
    redis_outage(Fault::Stall);
}

fn redis_store(url: &str, prefix: &str, timeout_ms: u64) -> (Arc<RedisTarget>, RedisTokenStore) {
    let cfg = TokensConfig {
        kind: TokensKind::Redis,
        redis_url: url.into(),
        redis_timeout_ms: timeout_ms,
        key_prefix: prefix.into(),
    };
    let target = Arc::new(RedisTarget::new(&cfg, Duration::ZERO).unwrap());
    (Arc::clone(&target), RedisTokenStore::new(target))
}

#[test]
fn a_late_redis_reply_is_never_taken_for_the_next_one() {
    let proxy = FaultProxy::start(addr_of(&backends::redis_url()));
    let prefix = backends::key_prefix("late");
    let (_, mut s) = redis_store(&format!("redis://{}", proxy.addr()), &prefix, 300);
    s.issue("first", 111, Duration::from_secs(30)).unwrap();
    s.issue("second", 222, Duration::from_secs(30)).unwrap();
    proxy.stall();
    assert!(matches!(s.redeem("first"), Err(StoreError::Unavailable(_))));
    // The GETDEL and its reply ("111:...") are delivered now, to a connection the store dropped.
    proxy.heal();
    // A reused connection would read that reply as the answer to these.
    assert_eq!(s.failures("user:nobody").unwrap(), 0);
    assert_eq!(s.redeem("second").unwrap().unwrap().account, 222);
    for i in 0..20u64 {
        let t = format!("t{i}");
        s.issue(&t, i, Duration::from_secs(30)).unwrap();
        assert_eq!(s.redeem(&t).unwrap().unwrap().account, i);
    }
}

/// A `redis-server` of this test's own, on a fixed port, killed and restarted at will.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let mut me = Self { port, child: None };
        me.spawn();
        me
    }

    fn spawn(&mut self) {
        let child = Command::new(backends::redis_server_bin())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        let url = self.url();
        loop {
            let up = redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if up.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn redis_restarted_under_load_fails_fast_recovers_and_never_mismatches() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis_server = OwnRedis::start(port);
    let url = redis_server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slowest_failure_ms = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8u64)
        .map(|w| {
            let (stop, ok, failed, slowest) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&slowest_failure_ms),
            );
            let url = url.clone();
            std::thread::spawn(move || {
                let (_, mut s) = redis_store(&url, "restart:", 300);
                let mut i = 0u64;
                let mut mismatches = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let account = w * 1_000_000 + i;
                    let token = format!("w{w}-{i}");
                    let started = Instant::now();
                    let outcome = s
                        .issue(&token, account, Duration::from_secs(30))
                        .and_then(|()| s.redeem(&token));
                    match outcome {
                        Ok(Some(r)) if r.account == account => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        // The restart lost the token: fine. Another's account: never.
                        Ok(None) => {}
                        Ok(Some(r)) => mismatches.push((account, r.account)),
                        Err(StoreError::Unavailable(_)) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            let ms = u64::try_from(started.elapsed().as_millis()).unwrap();
                            slowest.fetch_max(ms, Ordering::SeqCst);
                        }
                        Err(e) => panic!("worker {w}: {e}"),
                    }
                }
                mismatches
            })
        })
        .collect();

    let wait_for = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "never saw {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_for("calls succeed", &|| ok.load(Ordering::SeqCst) > 200);
    redis_server.kill();
    wait_for("calls fail", &|| failed.load(Ordering::SeqCst) > 50);
    redis_server.spawn();
    let before = ok.load(Ordering::SeqCst);
    wait_for("calls succeed again", &|| {
        ok.load(Ordering::SeqCst) > before + 200
    });
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        let mismatches = worker.join().unwrap();
        assert!(
            mismatches.is_empty(),
            "replies for the wrong request: {mismatches:?}"
        );
    }
    // Fail fast: no failing call waited beyond the bound a SERVER_BUSY answer has.
    let slowest = slowest_failure_ms.load(Ordering::SeqCst);
    assert!(
        slowest < BUSY_WITHIN.as_millis() as u64,
        "a failing call took {slowest} ms"
    );
}

#[test]
fn the_server_starts_while_mysql_and_redis_are_down_and_serves_once_they_are_back() {
    let db = TestDb::create("start_down");
    let mysql = FaultProxy::start(addr_of(&backends::mysql_server_url()));
    let redis_proxy = FaultProxy::start(addr_of(&backends::redis_url()));
    mysql.cut();
    redis_proxy.cut();
    let mysql_url = format!("mysql://gameserver:gameserver@{}/{}", mysql.addr(), db.name);
    let server = TestServer::start(false, |c| {
        c.store.kind = StoreKind::Mysql;
        c.store.mysql_url = mysql_url;
        c.store.retry_after_failure_ms = 200;
        c.store.request_timeout_ms = 1500;
        c.tokens = TokensConfig {
            kind: TokensKind::Redis,
            redis_url: format!("redis://{}", redis_proxy.addr()),
            key_prefix: backends::key_prefix("start_down"),
            ..TokensConfig::default()
        };
    });
    let mut login = server.login_conn();
    let r = register_within(&mut login, "alice", BUSY_WITHIN);
    assert_eq!(r.result, Code::ServerBusy as i32, "{r:?}");
    let l = login_within(&mut login, "alice", BUSY_WITHIN);
    assert_eq!(l.result, Code::ServerBusy as i32, "{l:?}");

    mysql.heal();
    redis_proxy.heal();
    // The first connection creates the schema; then everything works.
    let deadline = Instant::now() + WAIT;
    let alice = loop {
        let r = register_within(&mut login, "alice", WAIT);
        if r.result == Code::Ok as i32 {
            break r.account_id;
        }
        assert_eq!(r.result, Code::ServerBusy as i32, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "registration still busy after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let l = login_until_ok(&mut login, "alice");
    assert_eq!(l.account_id, alice);
    let mut world = server.world_conn();
    let e = enter_within(&mut world, &l.token, WAIT);
    assert_eq!(e.result, Code::Ok as i32, "{e:?}");
}
