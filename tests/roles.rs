//! Login and world as separate processes (`gameserver serve --role login|world`) on one MySQL
//! database and one Redis: each binds only its own service; the whole login → enter → chat
//! flow passes; a token from either login process admits to either world process, once (even
//! under 50 concurrent redemptions spread over both); failed logins are counted across login
//! processes; accounts and positions are MySQL rows, tokens are Redis keys with a lifetime.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::backends::{self, TestDb};
use common::{expect, WAIT};
use gameserver::client::Connection;
use gameserver::config::{MYSQL_URL_ENV, REDIS_URL_ENV};
use gameserver::protocol::pb::{self, Result as Code};
use gameserver::protocol::ServerMessage;

const PASSWORD: &str = "password123";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `gameserver serve --role ...` child process; killed on drop.
struct Process {
    child: Child,
    login: SocketAddr,
    world: SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gameserver serve --role <role>` in `dir` on fresh ports, on MySQL `mysql_url` and
/// Redis keys under `prefix`, and waits for its "server started" line.
fn spawn(dir: &Path, name: &str, role: &str, mysql_url: &str, prefix: &str) -> Process {
    let (login, world) = (free_port(), free_port());
    let redis_url = backends::redis_url();
    let config = format!(
        r#"
[server]
login_addr = "127.0.0.1:{login}"
world_addr = "127.0.0.1:{world}"
[shards]
count = 1
pin = false
io_memory_kib = 64
[tls]
enabled = false
[store]
kind = "mysql"
mysql_url = "{mysql_url}"
db_threads = 2
max_failed_logins = 3
[store.argon2]
memory_kib = 64
iterations = 1
parallelism = 1
[tokens]
kind = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
"#
    );
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gameserver"))
        .args(["serve", "--role", role, "--config"])
        .arg(&file)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove(MYSQL_URL_ENV)
        .env_remove(REDIS_URL_ENV)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tag = name.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("server started") {
                let _ = tx.send(());
            }
            println!("{tag}: {line}");
        }
    });
    rx.recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{name} logs 'server started'"));
    Process {
        child,
        login: SocketAddr::from(([127, 0, 0, 1], login)),
        world: SocketAddr::from(([127, 0, 0, 1], world)),
    }
}

fn connect(addr: SocketAddr) -> Connection {
    Connection::connect(addr, None, WAIT).unwrap()
}

fn register(p: &Process, name: &str) -> u64 {
    let mut c = connect(p.login);
    c.send(&pb::CRegister {
        username: name.into(),
        password: PASSWORD.into(),
    })
    .unwrap();
    match c.recv_timeout(WAIT).unwrap() {
        ServerMessage::Register(r) if r.result == Code::Ok as i32 => r.account_id,
        other => panic!("register {name}: {other:?}"),
    }
}

fn login(p: &Process, name: &str, password: &str) -> pb::SLogin {
    let mut c = connect(p.login);
    c.send(&pb::CLogin {
        username: name.into(),
        password: password.into(),
    })
    .unwrap();
    match c.recv_timeout(WAIT).unwrap() {
        ServerMessage::Login(l) => l,
        other => panic!("login {name}: {other:?}"),
    }
}

fn token(p: &Process, name: &str) -> String {
    let l = login(p, name, PASSWORD);
    assert_eq!(l.result, Code::Ok as i32, "login {name}: {l:?}");
    l.token
}

fn enter(p: &Process, token: &str) -> (Connection, pb::SEnter) {
    let mut c = connect(p.world);
    c.send(&pb::CEnter {
        token: token.into(),
    })
    .unwrap();
    let e = expect(&mut c, "S_ENTER", |m| match m {
        ServerMessage::Enter(e) => Some(e.clone()),
        _ => None,
    });
    (c, e)
}

fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err()
}

#[test]
fn login_and_world_as_separate_processes_share_accounts_tokens_and_limits() {
    let db = TestDb::create("roles");
    let prefix = backends::key_prefix("roles");
    let dir = tempfile::tempdir().unwrap();
    let login1 = spawn(dir.path(), "login1", "login", &db.url, &prefix);
    let login2 = spawn(dir.path(), "login2", "login", &db.url, &prefix);
    let world1 = spawn(dir.path(), "world1", "world", &db.url, &prefix);
    let world2 = spawn(dir.path(), "world2", "world", &db.url, &prefix);

    // Each binds only its own service.
    assert!(
        refused(login1.world),
        "a login process listens on its world port"
    );
    assert!(
        refused(world1.login),
        "a world process listens on its login port"
    );

    // Login (either process) → enter → chat and moves.
    let alice = register(&login1, "alice");
    let bob = register(&login2, "bob");
    let (mut a, e) = enter(&world1, &token(&login2, "alice"));
    assert_eq!(e.result, Code::Ok as i32, "{e:?}");
    assert_eq!(e.player.unwrap().player_id, alice);
    let (mut b, e) = enter(&world1, &token(&login1, "bob"));
    assert_eq!(e.result, Code::Ok as i32, "{e:?}");
    expect(&mut a, "bob's spawn", |m| match m {
        ServerMessage::Spawn(s) if s.players.iter().any(|p| p.player_id == bob) => Some(()),
        _ => None,
    });
    a.send(&pb::CChat {
        text: "hello from another process".into(),
    })
    .unwrap();
    expect(&mut b, "alice's chat", |m| match m {
        ServerMessage::Chat(c)
            if c.player_id == alice && c.text == "hello from another process" =>
        {
            Some(())
        }
        _ => None,
    });
    a.send(&pb::CMove {
        x: 1.5,
        y: 2.5,
        z: 3.5,
    })
    .unwrap();
    expect(&mut b, "alice's move", |m| match m {
        ServerMessage::Move(mv) if mv.player_id == alice && mv.x == 1.5 => Some(()),
        _ => None,
    });

    // A token redeemed on one world process is refused on the other.
    let carol = register(&login1, "carol");
    let t = token(&login1, "carol");
    let (_c, e) = enter(&world2, &t);
    assert_eq!(e.result, Code::Ok as i32);
    assert_eq!(e.player.unwrap().player_id, carol);
    let (_, again) = enter(&world1, &t);
    assert_eq!(again.result, Code::InvalidToken as i32, "{again:?}");

    // 50 concurrent redemptions of one token, over both world processes: exactly one enters.
    register(&login2, "dave");
    let contested = token(&login2, "dave");
    let barrier = Arc::new(Barrier::new(50));
    let worlds = [world1.world, world2.world];
    let results: Vec<i32> = (0..50)
        .map(|i| {
            let barrier = Arc::clone(&barrier);
            let contested = contested.clone();
            let addr = worlds[i % 2];
            std::thread::spawn(move || {
                let mut c = connect(addr);
                barrier.wait();
                c.send(&pb::CEnter { token: contested }).unwrap();
                let e = expect(&mut c, "S_ENTER", |m| match m {
                    ServerMessage::Enter(e) => Some(e.result),
                    _ => None,
                });
                // Keep the winner in the world until every answer is in.
                (e, c)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap().0)
        .collect();
    let ok = results.iter().filter(|r| **r == Code::Ok as i32).count();
    let invalid = results
        .iter()
        .filter(|r| **r == Code::InvalidToken as i32)
        .count();
    assert_eq!((ok, invalid), (1, 49), "{results:?}");

    // Tokens are Redis keys with a lifetime, gone once redeemed.
    let mut raw = backends::redis_conn(&backends::redis_url());
    let t = token(&login1, "bob");
    let key = format!("{prefix}token:{t}");
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut raw).unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "{ttl}");
    let (_b2, e) = enter(&world2, &t);
    assert_eq!(e.result, Code::Ok as i32);
    let exists: i64 = redis::cmd("EXISTS").arg(&key).query(&mut raw).unwrap();
    assert_eq!(exists, 0);

    // Positions are MySQL rows: alice leaves world 1 (saved at once), enters world 2 there.
    drop(a);
    let deadline = Instant::now() + WAIT;
    while db.position(alice) != Some((1.5, 2.5, 3.5)) {
        assert!(
            Instant::now() < deadline,
            "alice's position never reached MySQL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_a2, e) = enter(&world2, &token(&login2, "alice"));
    let me = e.player.unwrap();
    assert_eq!((me.x, me.y, me.z), (1.5, 2.5, 3.5));

    // Failed logins count across login processes.
    register(&login1, "erin");
    for (i, p) in [&login1, &login2, &login1].into_iter().enumerate() {
        let l = login(p, "erin", "wrong-password");
        assert_eq!(l.result, Code::InvalidCredentials as i32, "attempt {i}");
    }
    let l = login(&login2, "erin", PASSWORD);
    assert_eq!(l.result, Code::RateLimited as i32, "{l:?}");

    use mysql::prelude::Queryable;
    let accounts: u64 = db
        .conn()
        .query_first("SELECT COUNT(*) FROM accounts")
        .unwrap()
        .unwrap();
    assert_eq!(accounts, 5);
}

#[test]
fn separate_roles_with_in_process_tokens_do_not_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.toml"), "[tls]\nenabled = false\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gameserver"))
        .args(["serve", "--role", "world", "--config", "c.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("role") && stderr.contains("redis"),
        "{stderr}"
    );
}
