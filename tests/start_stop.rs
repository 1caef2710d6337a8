//! Many servers started and stopped in one process, with connections caught mid-handshake, mid-
//! login and in the world at each stop. Every start builds the shard mesh and every stop tears
//! executors down, the two moments where a heap corruption once hid (docs/glommio-mesh-rc-race.md).
//!
//! One quick cycle runs with the test command; the long run is ignored by default and is what
//! `scripts/stress-tests start_stop` loops (with `--ignored`), beside a flood.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{next, TestServer};
use gameserver::protocol::{pb, ServerMessage};

/// Starts a 2-shard server, leaves a raw socket mid-handshake, a login connection with a
/// request in flight and a player in the world, and shuts it down with all of them open.
fn one_cycle(i: usize, tls: bool) {
    // Clients below stay open through the stop: a short grace keeps a cycle short.
    let server = TestServer::start(tls, |c| {
        c.server.shutdown_grace_ms = 100;
        c.server.close_flush_timeout_ms = 100;
    });
    let mut raw = TcpStream::connect(server.world_addr()).unwrap();
    // Half a frame header (or half a TLS record): the server is waiting for the rest.
    raw.write_all(&[0x16]).unwrap();
    // Counted before the player's connections, which `enter_settled` counts around.
    server.wait_for_connections(|c| c.iter().sum::<usize>() == 1);
    let player = server.enter_settled(&format!("cycle{i}"), None);
    let mut login = server.login_conn();
    login
        .send(&pb::CLogin {
            username: format!("cycle{i}"),
            password: "password123".into(),
        })
        .unwrap();
    server.stop();
    // The in-flight login is answered or cut; either way the server is gone and nothing hangs.
    let _ = login.recv();
    drop((raw, player));
}

#[test]
fn a_server_starts_and_stops_with_connections_open_at_every_stage() {
    one_cycle(0, true);
    one_cycle(1, false);
    // Ports are free again and a new server starts at once.
    let server = TestServer::start(false, |_| {});
    let mut conn = server.login_conn();
    conn.send(&pb::CPing { client_time: 7 }).unwrap();
    assert!(matches!(next(&mut conn), ServerMessage::Pong(p) if p.client_time == 7));
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "stress: run by scripts/stress-tests"]
fn many_start_stop_cycles() {
    let cycles = env_or("START_STOP_CYCLES", 100);
    for i in 0..cycles {
        one_cycle(i, i % 2 == 0);
    }
}

/// Servers of 4 shards started and stopped on 4 threads at once: the most shard threads
/// starting, joining the mesh and exiting side by side.
#[test]
#[ignore = "stress: run by scripts/stress-tests"]
fn concurrent_bare_start_stop() {
    let cycles = env_or("START_STOP_CYCLES", 100);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..cycles {
                    let server = TestServer::start(false, |c| c.shards.count = 4);
                    server.stop();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
