//! A login flood for stress runs (`scripts/stress-tests`): many TLS connections registering new
//! accounts and failing logins as fast as the server answers, so Argon2 and TLS handshakes keep
//! every core and the scheduler busy. Not a benchmark: it reports nothing but a count.
//!
//! `cargo run --release --example flood -- LOGIN_ADDR CA_PEM [CONNECTIONS] [SECONDS]`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gameserver::client::{Connection, Tls};
use gameserver::protocol::pb;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(ca)) = (args.first(), args.get(1)) else {
        eprintln!("usage: flood LOGIN_ADDR CA_PEM [CONNECTIONS] [SECONDS]");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|e| {
        eprintln!("bad address {addr}: {e}");
        std::process::exit(2)
    });
    let connections: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let seconds: u64 = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX / 4);
    let tls = Tls {
        config: gameserver::tls::client_config_trusting(std::path::Path::new(ca)).unwrap_or_else(
            |e| {
                eprintln!("cannot load CA {ca}: {e}");
                std::process::exit(2)
            },
        ),
        server_name: gameserver::tls::server_name("localhost").expect("a valid name"),
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let requests = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let tls = tls.clone();
            let requests = requests.clone();
            std::thread::spawn(move || flood_one(addr, &tls, i, until, &requests))
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    println!("flood: {} requests", requests.load(Ordering::Relaxed));
}

/// One connection's loop: register a fresh account, fail a login, reconnect every few rounds
/// (a new TLS handshake) and whenever the server closes.
fn flood_one(addr: SocketAddr, tls: &Tls, worker: usize, until: Instant, requests: &AtomicU64) {
    let mut round = 0u64;
    while Instant::now() < until {
        let Ok(mut conn) = Connection::connect(addr, Some(tls), Duration::from_secs(10)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        for _ in 0..4 {
            round += 1;
            let name = format!("f{}_{}_{}", std::process::id() % 1000, worker, round);
            let register = pb::CRegister {
                username: name.clone(),
                password: "flood-password".into(),
            };
            let login = pb::CLogin {
                username: name,
                password: "wrong-password".into(),
            };
            let ok = conn.send(&register).is_ok()
                && conn.recv().is_ok()
                && conn.send(&login).is_ok()
                && conn.recv().is_ok();
            requests.fetch_add(2, Ordering::Relaxed);
            if !ok {
                break;
            }
        }
    }
}
