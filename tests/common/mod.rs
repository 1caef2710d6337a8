//! Shared harness of the socket tests: a real multi-shard server in this process, on free ports,
//! in a temporary directory, and clients that can be placed on a chosen shard.
#![allow(dead_code)]

pub mod backends;
pub mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use gameserver::client::{ClientError, Connection, Tls};
use gameserver::config::Config;
use gameserver::protocol::pb;
use gameserver::protocol::ServerMessage;
use gameserver::server::{self, ServerHandle};
use gameserver::store::Argon2Config;

/// Generous bound for anything the server should do "at once" on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to listen to be confident nothing more is coming.
pub const QUIET: Duration = Duration::from_millis(300);

/// A server running in this process. Shut down and joined on drop.
pub struct TestServer {
    handle: Option<ServerHandle>,
    pub config: Config,
    pub tls: Option<Tls>,
    pub dir: tempfile::TempDir,
}

/// The config every test starts from: 2 shards, free ports, tiny Argon2, files in `dir`.
pub fn test_config(dir: &std::path::Path, tls: bool) -> Config {
    let mut config = Config::default();
    config.server.login_addr = "127.0.0.1:0".parse().unwrap();
    config.server.world_addr = "127.0.0.1:0".parse().unwrap();
    config.shards.count = 2;
    config.shards.pin = false;
    config.shards.io_memory_kib = 64;
    config.store.sqlite_path = dir.join("accounts.db");
    config.store.db_threads = 2;
    // A loaded machine must not turn a slow answer into SERVER_BUSY; tests of the busy path
    // set their own.
    config.store.request_timeout_ms = WAIT.as_millis() as u64;
    config.store.argon2 = Argon2Config {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    config.tls.enabled = tls;
    config.tls.cert_path = dir.join("certs/server.pem");
    config.tls.key_path = dir.join("certs/server.key");
    config.tls.ca_path = dir.join("certs/ca.pem");
    config
}

impl TestServer {
    /// Starts a 2-shard server, TLS on or off, with `tweak` applied to the test config.
    pub fn start(tls: bool, tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path(), tls);
        tweak(&mut config);
        Self::start_with(config, dir)
    }

    /// Starts a server with exactly this config (files under `dir`).
    pub fn start_with(config: Config, dir: tempfile::TempDir) -> Self {
        let handle = server::start(config.clone()).expect("server starts");
        let tls = config.tls.enabled.then(|| Tls {
            config: gameserver::tls::client_config_trusting(&config.tls.ca_path).unwrap(),
            server_name: gameserver::tls::server_name("localhost").unwrap(),
        });
        Self {
            handle: Some(handle),
            config,
            tls,
            dir,
        }
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().unwrap()
    }

    pub fn login_addr(&self) -> SocketAddr {
        self.handle().login_addr()
    }

    pub fn world_addr(&self) -> SocketAddr {
        self.handle().world_addr()
    }

    pub fn connect(&self, addr: SocketAddr) -> Connection {
        Connection::connect(addr, self.tls.as_ref(), WAIT).unwrap()
    }

    pub fn login_conn(&self) -> Connection {
        self.connect(self.login_addr())
    }

    pub fn world_conn(&self) -> Connection {
        self.connect(self.world_addr())
    }

    /// Open connections per shard.
    pub fn connections(&self) -> Vec<usize> {
        self.handle().connections_per_shard()
    }

    /// Opens a connection to `addr` that landed on shard `shard` (the kernel spreads
    /// connections over the shards' sockets; others are dropped until one lands there).
    /// Only the caller opens connections meanwhile; closes of earlier connections may still be
    /// counted down, which only ever lowers a count, so a rise on `shard` is this connection.
    pub fn connect_on_shard(&self, addr: SocketAddr, shard: usize) -> Connection {
        for _ in 0..200 {
            let before = self.connections();
            let mut conn = self.connect(addr);
            // The pong proves the server has accepted and registered the connection.
            ping(&mut conn);
            if self.connections()[shard] > before[shard] {
                return conn;
            }
        }
        panic!("no connection landed on shard {shard}");
    }

    /// Waits until the per-shard connection counts satisfy `ok` (the server updates them when
    /// it notices a close, which the client cannot observe directly).
    pub fn wait_for_connections(&self, ok: impl Fn(&[usize]) -> bool) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let counts = self.connections();
            if ok(&counts) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "connection counts stuck at {counts:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Registers an account; returns its id.
    pub fn register(&self, name: &str, password: &str) -> u64 {
        let mut conn = self.login_conn();
        conn.send(&pb::CRegister {
            username: name.into(),
            password: password.into(),
        })
        .unwrap();
        match conn.recv().unwrap() {
            ServerMessage::Register(r) if r.result == pb::Result::Ok as i32 => r.account_id,
            other => panic!("register {name}: {other:?}"),
        }
    }

    /// Logs in; returns the `S_LOGIN`.
    pub fn login(&self, name: &str, password: &str) -> pb::SLogin {
        let mut conn = self.login_conn();
        conn.send(&pb::CLogin {
            username: name.into(),
            password: password.into(),
        })
        .unwrap();
        match conn.recv().unwrap() {
            ServerMessage::Login(r) => r,
            other => panic!("login {name}: {other:?}"),
        }
    }

    /// Registers `name`, logs in and enters the world on `shard`. Returns the player with its
    /// `S_ENTER` and the snapshot read.
    pub fn enter_on_shard(&self, name: &str, shard: usize) -> Player {
        let id = self.register(name, "password123");
        self.reenter_on_shard(name, id, shard)
    }

    /// Logs `name` (password `password123`) in; asserts it is account `id`; returns the token.
    pub fn token_for(&self, name: &str, id: u64) -> String {
        let login = self.login(name, "password123");
        assert_eq!(login.result, pb::Result::Ok as i32, "login {name}");
        assert_eq!(login.account_id, id, "login {name}: account id");
        assert!(!login.token.is_empty(), "login {name}: empty token");
        login.token
    }

    /// Logs an existing account in and enters on `shard`; asserts `S_ENTER{OK}` with the
    /// account's id and name. The snapshot is left unread.
    pub fn reenter_on_shard(&self, name: &str, id: u64, shard: usize) -> Player {
        let token = self.token_for(name, id);
        let mut conn = self.connect_on_shard(self.world_addr(), shard);
        let entered = send_enter(&mut conn, token);
        assert_eq!(entered.result, pb::Result::Ok as i32, "enter {name}");
        let me = entered
            .player
            .clone()
            .expect("S_ENTER{OK} carries the player");
        assert_eq!(me.player_id, id, "enter {name}: id");
        assert_eq!(me.name, name, "enter {name}: name");
        Player {
            id,
            name: name.into(),
            conn,
            entered,
        }
    }

    /// Registers `name`, logs in and enters the world, on `shard` if given, leaving the
    /// connection counts settled.
    ///
    /// Unlike `enter_on_shard`, the login connection stays open until the player has
    /// entered, and the helper then waits until the server no longer counts it: `connect_on_shard`
    /// compares connection counts before and after, and a connection closing meanwhile can leave
    /// it waiting for counts that never come back. Callers keep the counts settled the same way.
    pub fn enter_settled(&self, name: &str, shard: Option<usize>) -> Player {
        let mut login = self.login_conn();
        login
            .send(&pb::CRegister {
                username: name.into(),
                password: "password123".into(),
            })
            .unwrap();
        let id = match next(&mut login) {
            ServerMessage::Register(r) if r.result == pb::Result::Ok as i32 => r.account_id,
            other => panic!("register {name}: {other:?}"),
        };
        login
            .send(&pb::CLogin {
                username: name.into(),
                password: "password123".into(),
            })
            .unwrap();
        let token = match next(&mut login) {
            ServerMessage::Login(l) if l.result == pb::Result::Ok as i32 => l.token,
            other => panic!("login {name}: {other:?}"),
        };
        // The login connection is counted now (it was answered) and stays open meanwhile.
        let open = self.open_connections();
        let mut conn = match shard {
            Some(shard) => self.connect_on_shard(self.world_addr(), shard),
            None => self.world_conn(),
        };
        conn.send(&pb::CEnter { token }).unwrap();
        let entered = match next(&mut conn) {
            ServerMessage::Enter(e) if e.result == pb::Result::Ok as i32 => e,
            other => panic!("enter {name}: {other:?}"),
        };
        drop(login);
        // One login connection fewer, one world connection more.
        self.wait_for_connections(|c| c.iter().sum::<usize>() == open);
        Player {
            id,
            name: name.into(),
            conn,
            entered,
        }
    }

    /// Open connections, all shards together.
    pub fn open_connections(&self) -> usize {
        self.connections().iter().sum()
    }

    /// Shuts the server down and waits for it.
    pub fn stop(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.wait().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            let _ = h.wait();
        }
    }
}

/// A player in the world.
pub struct Player {
    pub id: u64,
    pub name: String,
    pub conn: Connection,
    pub entered: pb::SEnter,
}

impl Player {
    /// Receives until `pick` accepts a message, skipping others; panics after `WAIT`.
    pub fn expect<T>(&mut self, what: &str, pick: impl FnMut(&ServerMessage) -> Option<T>) -> T {
        expect(&mut self.conn, what, pick)
    }

    /// Sends a chat line.
    pub fn chat(&mut self, text: &str) {
        self.conn.send(&pb::CChat { text: text.into() }).unwrap();
    }

    /// Sends a move.
    pub fn move_to(&mut self, x: f32, y: f32, z: f32) {
        self.conn.send(&pb::CMove { x, y, z }).unwrap();
    }

    /// Waits until `S_SPAWN` names `id` (in a snapshot or later).
    pub fn expect_spawn(&mut self, id: u64) {
        self.expect(&format!("spawn of {id}"), |m| match m {
            ServerMessage::Spawn(s) if s.players.iter().any(|p| p.player_id == id) => Some(()),
            _ => None,
        })
    }
}

/// Receives on `conn` until `pick` accepts a message, skipping others; panics after `WAIT`.
pub fn expect<T>(
    conn: &mut Connection,
    what: &str,
    mut pick: impl FnMut(&ServerMessage) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match conn.recv_timeout(left) {
            Ok(m) => {
                if let Some(v) = pick(&m) {
                    return v;
                }
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// The next message on `conn`, whatever it is; panics if none comes within `WAIT`.
pub fn next(conn: &mut Connection) -> ServerMessage {
    conn.recv_timeout(WAIT).expect("a message from the server")
}

/// Sends `C_ENTER` on `conn` and returns the `S_ENTER` (the next message).
pub fn send_enter(conn: &mut Connection, token: String) -> pb::SEnter {
    conn.send(&pb::CEnter { token }).unwrap();
    match conn.recv_timeout(WAIT).unwrap() {
        ServerMessage::Enter(e) => e,
        other => panic!("expected S_ENTER, got {other:?}"),
    }
}

/// Sends `C_PING` and waits for its `S_PONG` (skipping anything else).
pub fn ping(conn: &mut Connection) {
    let t = 0x5eed;
    conn.send(&pb::CPing { client_time: t }).unwrap();
    expect(conn, "pong", |m| match m {
        ServerMessage::Pong(p) if p.client_time == t => Some(()),
        _ => None,
    });
}

/// Asserts the server closes `conn` within `WAIT`, and returns what it sent before closing.
pub fn expect_closed(conn: &mut Connection) -> Vec<ServerMessage> {
    match conn.recv_until_closed(WAIT) {
        Ok(seen) => seen,
        Err(ClientError::Timeout) => panic!("the server did not close the connection"),
        Err(e) => panic!("waiting for close: {e}"),
    }
}

/// The `S_DISCONNECT` reason among `msgs`, if any.
pub fn disconnect_reason(msgs: &[ServerMessage]) -> Option<pb::DisconnectReason> {
    msgs.iter().find_map(|m| match m {
        ServerMessage::Disconnect(d) => pb::DisconnectReason::try_from(d.reason).ok(),
        _ => None,
    })
}
