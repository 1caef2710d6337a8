//! SIGTERM on the real binary: every client gets `S_DISCONNECT{SERVER_SHUTDOWN}`, every player's
//! position is saved, the process exits 0, and a restarted server puts players back where they
//! stood (accounts and positions survive restarts).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{disconnect_reason, expect, expect_closed, WAIT};
use gameserver::client::Connection;
use gameserver::protocol::{pb, ServerMessage};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Binary {
    child: Child,
    login: SocketAddr,
    world: SocketAddr,
}

/// Starts `gameserver serve` in `dir` and waits for its "server started" log line.
fn start(dir: &Path) -> Binary {
    let (login, world) = (free_port(), free_port());
    let config = format!(
        r#"
[server]
login_addr = "127.0.0.1:{login}"
world_addr = "127.0.0.1:{world}"
save_interval_ms = 3600000
[shards]
count = 2
pin = false
io_memory_kib = 64
[tls]
enabled = false
[store]
db_threads = 2
[store.argon2]
memory_kib = 64
iterations = 1
parallelism = 1
"#
    );
    std::fs::write(dir.join("test.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gameserver"))
        .args(["serve", "--config", "test.toml"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("server started") {
                let _ = tx.send(());
            }
            println!("server: {line}");
        }
    });
    rx.recv_timeout(WAIT)
        .expect("the server logs 'server started'");
    Binary {
        child,
        login: format!("127.0.0.1:{login}").parse().unwrap(),
        world: format!("127.0.0.1:{world}").parse().unwrap(),
    }
}

fn request(addr: SocketAddr, msg: &impl gameserver::protocol::Body) -> ServerMessage {
    let mut conn = Connection::connect(addr, None, WAIT).unwrap();
    conn.send(msg).unwrap();
    conn.recv().unwrap()
}

/// Logs in (registering first when `register`) and enters; returns the connection and S_ENTER.
fn enter(bin: &Binary, name: &str, register: bool) -> (Connection, pb::SEnter) {
    if register {
        let reply = request(
            bin.login,
            &pb::CRegister {
                username: name.into(),
                password: "password123".into(),
            },
        );
        assert!(
            matches!(reply, ServerMessage::Register(r) if r.result == 0),
            "register"
        );
    }
    let token = match request(
        bin.login,
        &pb::CLogin {
            username: name.into(),
            password: "password123".into(),
        },
    ) {
        ServerMessage::Login(l) if l.result == 0 => l.token,
        other => panic!("login: {other:?}"),
    };
    let mut conn = Connection::connect(bin.world, None, WAIT).unwrap();
    conn.send(&pb::CEnter { token }).unwrap();
    match conn.recv().unwrap() {
        ServerMessage::Enter(e) if e.result == 0 => (conn, e),
        other => panic!("enter: {other:?}"),
    }
}

fn sigterm(child: &Child) {
    let pid = i32::try_from(child.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

/// Waits for the child to exit (killing it after `WAIT`, which fails the test).
fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + WAIT * 2;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_disconnects_everyone_saves_positions_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bin = start(dir.path());
    let (mut alice, _) = enter(&bin, "alice", true);
    let (mut bob, _) = enter(&bin, "bob", true);
    alice
        .send(&pb::CMove {
            x: 1.5,
            y: 2.0,
            z: -3.25,
        })
        .unwrap();
    bob.send(&pb::CMove {
        x: -7.0,
        y: 0.5,
        z: 9.0,
    })
    .unwrap();
    // Each sees the other's move: the server has applied both.
    expect(&mut alice, "bob's move", |m| match m {
        ServerMessage::Move(mv) if mv.x == -7.0 => Some(()),
        _ => None,
    });
    expect(&mut bob, "alice's move", |m| match m {
        ServerMessage::Move(mv) if mv.x == 1.5 => Some(()),
        _ => None,
    });

    sigterm(&bin.child);
    for conn in [&mut alice, &mut bob] {
        let last = expect_closed(conn);
        assert_eq!(
            disconnect_reason(&last),
            Some(pb::DisconnectReason::ServerShutdown)
        );
    }
    let status = wait_exit(bin.child);
    assert_eq!(status.code(), Some(0), "exit status {status:?}");

    // A new process on the same files: both players come back where they stood.
    let bin = start(dir.path());
    let (_alice, entered) = enter(&bin, "alice", false);
    let p = entered.player.unwrap();
    assert_eq!((p.x, p.y, p.z), (1.5, 2.0, -3.25));
    let (_bob, entered) = enter(&bin, "bob", false);
    let p = entered.player.unwrap();
    assert_eq!((p.x, p.y, p.z), (-7.0, 0.5, 9.0));
    sigterm(&bin.child);
    assert_eq!(wait_exit(bin.child).code(), Some(0));
}

#[test]
fn a_config_with_an_unknown_key_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[server]\nidle_timout_ms = 5\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gameserver"))
        .args(["serve", "--config", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("idle_timout_ms"), "{stderr}");
}
