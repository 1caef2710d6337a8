//! End-to-end numbers through a real 2-shard server in this process, over loopback:
//! sequential `C_ECHO` round trips (plaintext and TLS), and the time for one chat line to reach
//! every player of a full world (fan-out across both shards). Run with
//! `cargo bench --bench server`. The load (blocking clients) shares the 2 cores with the server,
//! so these are numbers to compare between runs of the same machine, not capacities.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gameserver::client::{Connection, Tls};
use gameserver::config::Config;
use gameserver::protocol::{pb, ServerMessage};
use gameserver::store::Argon2Config;

const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &std::path::Path, tls: bool) -> Config {
    let mut c = Config::default();
    c.server.login_addr = "127.0.0.1:0".parse().expect("addr");
    c.server.world_addr = "127.0.0.1:0".parse().expect("addr");
    c.shards.count = 2;
    c.shards.io_memory_kib = 64;
    c.store.sqlite_path = dir.join("accounts.db");
    c.store.argon2 = Argon2Config {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    c.tls.enabled = tls;
    c.tls.cert_path = dir.join("server.pem");
    c.tls.key_path = dir.join("server.key");
    c.tls.ca_path = dir.join("ca.pem");
    c.rate.chat_per_sec = 1e9;
    c.rate.chat_burst = 1_000_000_000;
    c
}

fn client_tls(c: &Config) -> Option<Tls> {
    c.tls.enabled.then(|| Tls {
        config: gameserver::tls::client_config_trusting(&c.tls.ca_path).expect("ca"),
        server_name: gameserver::tls::server_name("localhost").expect("name"),
    })
}

fn echo_round_trips(tls: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), tls);
    let server = gameserver::server::start(c.clone()).expect("server");
    let mut conn =
        Connection::connect(server.world_addr(), client_tls(&c).as_ref(), WAIT).expect("connect");
    let data = Bytes::from(vec![7u8; 64]);
    let rounds = 20_000;
    let start = Instant::now();
    for _ in 0..rounds {
        conn.send(&pb::CEcho { data: data.clone() }).expect("send");
        match conn.recv_timeout(WAIT) {
            Ok(ServerMessage::Echo(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "echo 64 B, {}: {rounds} sequential round trips, {:.0}/s, mean {:.1} µs",
        if tls { "TLS" } else { "plaintext" },
        rounds as f64 / secs,
        secs * 1e6 / rounds as f64
    );
    server.shutdown();
    server.wait().expect("stop");
}

fn enter(
    addr: std::net::SocketAddr,
    login: std::net::SocketAddr,
    tls: Option<&Tls>,
    name: &str,
) -> (u64, Connection) {
    let mut l = Connection::connect(login, tls, WAIT).expect("login");
    l.send(&pb::CRegister {
        username: name.into(),
        password: "password123".into(),
    })
    .expect("send");
    match l.recv_timeout(WAIT) {
        Ok(ServerMessage::Register(r)) if r.result == 0 => {}
        other => panic!("register {name}: {other:?}"),
    }
    l.send(&pb::CLogin {
        username: name.into(),
        password: "password123".into(),
    })
    .expect("send");
    let (id, token) = match l.recv_timeout(WAIT) {
        Ok(ServerMessage::Login(r)) if r.result == 0 => (r.account_id, r.token),
        other => panic!("{other:?}"),
    };
    let mut w = Connection::connect(addr, tls, WAIT).expect("world");
    w.send(&pb::CEnter { token }).expect("send");
    match w.recv_timeout(WAIT) {
        Ok(ServerMessage::Enter(e)) if e.result == 0 => (id, w),
        other => panic!("{other:?}"),
    }
}

/// Every player waits for the marker chat; returns the time until the last one has it.
fn fan_out(players: usize, rounds: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = config(dir.path(), false);
    let server = gameserver::server::start(c.clone()).expect("server");
    let conns: Vec<(u64, Connection)> = (0..players)
        .map(|i| {
            enter(
                server.world_addr(),
                server.login_addr(),
                None,
                &format!("player{i}"),
            )
        })
        .collect();
    let speaker_id = conns[0].0;
    // Every reader (players - 1) and the speaker meet at each barrier.
    let barrier = Arc::new(Barrier::new(players));
    let done = Arc::new(Barrier::new(players));
    let mut handles = Vec::new();
    let mut speaker = None;
    for (i, (_, mut conn)) in conns.into_iter().enumerate() {
        if i == 0 {
            speaker = Some(conn);
            continue;
        }
        let (barrier, done) = (barrier.clone(), done.clone());
        handles.push(std::thread::spawn(move || {
            for round in 0..rounds {
                barrier.wait();
                let want = format!("round {round}");
                loop {
                    match conn.recv_timeout(WAIT) {
                        Ok(ServerMessage::Chat(c))
                            if c.player_id == speaker_id && c.text == want =>
                        {
                            break
                        }
                        Ok(_) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                done.wait();
            }
        }));
    }
    let mut speaker = speaker.expect("speaker");
    let mut times = Vec::new();
    for round in 0..rounds {
        barrier.wait();
        let start = Instant::now();
        speaker
            .send(&pb::CChat {
                text: format!("round {round}"),
            })
            .expect("chat");
        done.wait();
        times.push(start.elapsed());
    }
    for h in handles {
        h.join().expect("reader");
    }
    times.sort();
    println!(
        "fan-out to {} players on 2 shards: median {:.2} ms, worst {:.2} ms over {rounds} chats",
        players - 1,
        times[rounds / 2].as_secs_f64() * 1e3,
        times[rounds - 1].as_secs_f64() * 1e3
    );
    server.shutdown();
    server.wait().expect("stop");
}

fn main() {
    let players = std::env::var("FANOUT_PLAYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    if std::env::var("SKIP_ECHO").is_err() {
        echo_round_trips(false);
        echo_round_trips(true);
    }
    fan_out(players, 50);
}
