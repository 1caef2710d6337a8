//! The connection policy of PROTOCOL.md, on both services: the idle timeout and the absolute
//! first-frame and TLS-handshake deadlines (trickled bytes extend neither), the per-shard
//! connection limit, the slow-consumer cap on a connection's send queue, and clients that
//! vanish with a TCP reset. Timeouts are configured small; no test asserts a duration.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use gameserver::client::{ClientError, Connection};
use gameserver::protocol::pb::{self, DisconnectReason};
use gameserver::protocol::{encode_frame, Body, FrameDecoder, ServerMessage, MAX_SERVER_FRAME};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

const PASSWORD: &str = "password123";

fn frame<M: Body>(msg: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(msg, &mut out).unwrap();
    out.to_vec()
}

/// Asserts the messages a closed connection got end with `S_DISCONNECT{reason}`, the only one.
fn assert_closed_with(seen: &[ServerMessage], reason: DisconnectReason, what: &str) {
    match seen.last() {
        Some(ServerMessage::Disconnect(d)) if d.reason == reason as i32 => {}
        _ => panic!("{what}: expected S_DISCONNECT{{{reason:?}}} last, got {seen:?}"),
    }
    let goodbyes = seen
        .iter()
        .filter(|m| matches!(m, ServerMessage::Disconnect(_)))
        .count();
    assert_eq!(goodbyes, 1, "{what}: {seen:?}");
}

/// Sends `bytes` (an incomplete frame) one at a time, waiting `gap` for an answer after each,
/// until the server closes the connection; returns what it sent before closing. Panics if the
/// connection is still open after `WAIT` or when the bytes run out.
fn trickle_until_closed(conn: &mut Connection, bytes: &[u8], gap: Duration) -> Vec<ServerMessage> {
    let give_up = Instant::now() + WAIT;
    let mut seen = Vec::new();
    for (i, byte) in bytes.iter().enumerate() {
        assert!(
            Instant::now() < give_up,
            "still open after trickling {i} bytes"
        );
        if conn.send_bytes(&[*byte]).is_err() {
            return seen; // the server has closed (reset)
        }
        loop {
            match conn.recv_timeout(gap) {
                Ok(m) => seen.push(m),
                Err(ClientError::Timeout) => break,
                Err(ClientError::Closed) => return seen,
                Err(ClientError::Io(e))
                    if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                {
                    return seen
                }
                Err(e) => panic!("after trickling {i} bytes: {e}"),
            }
        }
    }
    panic!("trickled the whole frame and the connection is still open");
}

/// A C_ECHO frame claiming 4000 bytes of which only the first `len` are returned.
fn incomplete_frame(len: usize) -> Vec<u8> {
    let whole = frame(&pb::CEcho {
        data: vec![b'.'; 3993].into(),
    });
    assert_eq!(whole.len(), 4000);
    whole[..len].to_vec()
}

/// A plaintext client on a raw socket whose buffers it sizes itself.
struct Raw {
    tcp: TcpStream,
    decoder: FrameDecoder,
}

impl Raw {
    /// Connects with the socket's receive and send buffers set to `buffer` bytes (the kernel
    /// rounds up to its minimum).
    fn connect(addr: SocketAddr, buffer: usize) -> Self {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_recv_buffer_size(buffer).unwrap();
        socket.set_send_buffer_size(buffer).unwrap();
        socket.connect_timeout(&addr.into(), WAIT).unwrap();
        let tcp: TcpStream = socket.into();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_write_timeout(Some(WAIT)).unwrap();
        Self {
            tcp,
            decoder: FrameDecoder::new(MAX_SERVER_FRAME),
        }
    }

    fn send<M: Body>(&mut self, msg: &M) {
        self.tcp.write_all(&frame(msg)).unwrap();
    }

    /// The next message; panics on close or after `WAIT`.
    fn recv(&mut self) -> ServerMessage {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.decoder.next_frame().unwrap() {
                return ServerMessage::decode(&f).unwrap();
            }
            let n = self.tcp.read(&mut buf).expect("a message from the server");
            assert!(n > 0, "closed by the server");
            self.decoder.extend(&buf[..n]);
        }
    }

    /// Reads until the server closes (EOF or reset) and returns every complete message it
    /// sent; panics if it is still open after `WAIT`.
    fn drain_until_closed(mut self) -> Vec<ServerMessage> {
        let give_up = Instant::now() + WAIT;
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = Vec::new();
        loop {
            while let Some(f) = self.decoder.next_frame().unwrap() {
                seen.push(ServerMessage::decode(&f).unwrap());
            }
            let left = give_up.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the server did not close the connection");
            self.tcp.set_read_timeout(Some(left)).unwrap();
            match self.tcp.read(&mut buf) {
                Ok(0) => return seen,
                Ok(n) => self.decoder.extend(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return seen,
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
        }
    }
}

/// A `Raw` connection (plaintext server) that landed on `shard`, like the harness's
/// `connect_on_shard`.
fn raw_on_shard(server: &TestServer, addr: SocketAddr, shard: usize, buffer: usize) -> Raw {
    for _ in 0..200 {
        let before = server.connections();
        let mut raw = Raw::connect(addr, buffer);
        raw.send(&pb::CPing { client_time: 9 });
        match raw.recv() {
            ServerMessage::Pong(p) if p.client_time == 9 => {}
            other => panic!("expected S_PONG, got {other:?}"),
        }
        let after = server.connections();
        if (0..after.len()).find(|&i| after[i] > before[i]) == Some(shard) {
            return raw;
        }
        drop(raw);
        server.wait_for_connections(|c| c == before.as_slice());
    }
    panic!("no connection landed on shard {shard}");
}

/// Like the harness's `connect_on_shard`, but for when other shards are full: a connection
/// that lands on a full shard is refused, and the next attempt may land elsewhere.
fn served_on_shard(server: &TestServer, addr: SocketAddr, shard: usize) -> Connection {
    for _ in 0..200 {
        let before = server.connections();
        let mut conn = server.connect(addr);
        if conn.send(&pb::CPing { client_time: 3 }).is_err() {
            continue; // refused at once
        }
        match conn.recv_timeout(WAIT) {
            Ok(ServerMessage::Pong(p)) if p.client_time == 3 => {}
            Ok(ServerMessage::Disconnect(d)) if d.reason == DisconnectReason::ServerFull as i32 => {
                continue
            }
            Err(ClientError::Closed) => continue,
            Err(ClientError::Io(e)) if e.kind() == ErrorKind::ConnectionReset => continue,
            other => panic!("expected S_PONG or a refusal, got {other:?}"),
        }
        let after = server.connections();
        if (0..after.len()).find(|&i| after[i] > before[i]) == Some(shard) {
            return conn;
        }
        drop(conn);
        server.wait_for_connections(|c| c == before.as_slice());
    }
    panic!("no connection was served on shard {shard}");
}

/// Idle timeout 300 ms; the first-frame deadline too far away to close anything here.
fn short_idle(c: &mut gameserver::config::Config) {
    c.server.idle_timeout_ms = 300;
    c.server.first_frame_timeout_ms = 60_000;
}

#[test]
fn player_that_sends_nothing_after_entering_gets_idle_timeout() {
    let server = TestServer::start(true, short_idle);
    let mut idle = server.enter_settled("sleeper", None);
    let seen = expect_closed(&mut idle.conn);
    assert_closed_with(&seen, DisconnectReason::IdleTimeout, "idle player");
}

#[test]
fn login_connection_that_sends_nothing_gets_idle_timeout() {
    let server = TestServer::start(true, short_idle);
    let mut conn = server.login_conn();
    ping(&mut conn);
    let seen = expect_closed(&mut conn);
    assert_closed_with(
        &seen,
        DisconnectReason::IdleTimeout,
        "idle login connection",
    );
}

#[test]
fn connection_that_pings_more_often_than_the_idle_timeout_stays() {
    // The first-frame deadline as short as the idle timeout: only frames keep a connection.
    let server = TestServer::start(true, |c| {
        c.server.idle_timeout_ms = 500;
        c.server.first_frame_timeout_ms = 500;
    });
    let mut player = server.enter_settled("pinger", None);
    let mut login = server.login_conn();
    // Fifteen pings 100 ms apart span three idle periods.
    for round in 0..15u64 {
        thread::sleep(Duration::from_millis(100));
        for (what, conn) in [("player", &mut player.conn), ("login", &mut login)] {
            conn.send(&pb::CPing { client_time: round }).unwrap();
            match next(conn) {
                ServerMessage::Pong(p) => assert_eq!(p.client_time, round, "{what}"),
                other => panic!("{what}, ping {round}: expected S_PONG, got {other:?}"),
            }
        }
    }
}

#[test]
fn trickling_an_incomplete_first_frame_does_not_extend_the_first_frame_deadline() {
    let server = TestServer::start(true, |c| {
        c.server.first_frame_timeout_ms = 500;
        c.server.idle_timeout_ms = 60_000;
    });
    for addr in [server.world_addr(), server.login_addr()] {
        let mut conn = server.connect(addr);
        // A byte every 50 ms: far more often than the deadline, never a whole frame.
        let seen = trickle_until_closed(
            &mut conn,
            &incomplete_frame(3999),
            Duration::from_millis(50),
        );
        assert_closed_with(
            &seen,
            DisconnectReason::IdleTimeout,
            &format!("slowloris on {addr}"),
        );
    }
}

#[test]
fn trickling_an_incomplete_frame_after_entering_does_not_extend_the_idle_timeout() {
    let server = TestServer::start(true, short_idle);
    let mut player = server.enter_settled("trickler", None);
    let seen = trickle_until_closed(
        &mut player.conn,
        &incomplete_frame(3999),
        Duration::from_millis(50),
    );
    assert_closed_with(&seen, DisconnectReason::IdleTimeout, "trickling player");
}

#[test]
fn silent_connection_is_closed_at_the_first_frame_deadline() {
    let server = TestServer::start(false, |c| {
        c.server.first_frame_timeout_ms = 300;
        c.server.idle_timeout_ms = 60_000;
    });
    for addr in [server.world_addr(), server.login_addr()] {
        let mut conn = server.connect(addr);
        let seen = expect_closed(&mut conn);
        assert_closed_with(
            &seen,
            DisconnectReason::IdleTimeout,
            &format!("silent on {addr}"),
        );
    }
}

/// Opens raw TCP connections to a TLS server, sends `start` (the beginning of a handshake, or
/// nothing) and asserts the server closes them, having sent nothing, by its handshake deadline.
fn assert_handshake_deadline(start: &[u8]) {
    let server = TestServer::start(true, |c| {
        c.tls.handshake_timeout_ms = 300;
        c.server.first_frame_timeout_ms = 60_000;
        c.server.idle_timeout_ms = 60_000;
    });
    for addr in [server.world_addr(), server.login_addr()] {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.write_all(start).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 1024];
        match tcp.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Ok(n) => panic!("{addr}: the server sent {n} bytes to an unfinished handshake"),
            Err(e) => panic!("{addr}: the server did not close the connection: {e}"),
        }
    }
    // The server itself is fine.
    ping(&mut server.login_conn());
}

#[test]
fn tls_client_that_never_starts_the_handshake_is_closed_at_the_handshake_deadline() {
    assert_handshake_deadline(&[]);
}

#[test]
fn tls_client_that_stalls_in_the_handshake_is_closed_at_the_handshake_deadline() {
    // The first bytes of a ClientHello record, and then nothing.
    assert_handshake_deadline(&[0x16, 0x03, 0x01]);
}

#[test]
fn connection_over_the_shard_limit_gets_server_full_and_the_others_stay() {
    let server = TestServer::start(true, |c| c.server.max_connections_per_shard = 2);
    let world = server.world_addr();
    let mut shard0 = vec![
        served_on_shard(&server, world, 0),
        served_on_shard(&server, world, 0),
    ];
    let mut shard1 = [
        served_on_shard(&server, world, 1),
        served_on_shard(&server, world, 1),
    ];
    assert_eq!(server.connections(), vec![2, 2]);

    // Every shard is full: whichever shard a newcomer lands on refuses it, on either service.
    for addr in [world, server.login_addr(), world] {
        let mut newcomer = server.connect(addr);
        let seen = expect_closed(&mut newcomer);
        assert_closed_with(
            &seen,
            DisconnectReason::ServerFull,
            &format!("newcomer on {addr}"),
        );
    }
    for conn in shard0.iter_mut().chain(shard1.iter_mut()) {
        ping(conn);
    }
    assert_eq!(server.connections(), vec![2, 2]);

    // One leaves shard 0: a new connection there is served (here on the login service).
    drop(shard0.pop());
    server.wait_for_connections(|c| c == [1, 2]);
    let mut replacement = served_on_shard(&server, server.login_addr(), 0);
    replacement
        .send(&pb::CRegister {
            username: "latecomer".into(),
            password: PASSWORD.into(),
        })
        .unwrap();
    match next(&mut replacement) {
        ServerMessage::Register(r) => assert_eq!(r.result, pb::Result::Ok as i32),
        other => panic!("expected S_REGISTER, got {other:?}"),
    }
    for conn in shard0.iter_mut().chain(shard1.iter_mut()) {
        ping(conn);
    }
}

/// Receives on `p` until the chat `text` from `from`, allowing only the despawn of `passer_by`
/// (noted in `despawned`); anything else fails the test.
fn expect_chat_past(p: &mut Player, from: u64, text: &str, passer_by: u64, despawned: &mut bool) {
    loop {
        match next(&mut p.conn) {
            ServerMessage::Chat(c) if c.player_id == from && c.text == text => return,
            ServerMessage::Despawn(d) if d.player_ids == [passer_by] && !*despawned => {
                *despawned = true
            }
            other => panic!("{} expected chat {text:?}, got {other:?}", p.name),
        }
    }
}

#[test]
fn slow_consumer_is_disconnected_while_others_keep_chatting() {
    let server = TestServer::start(false, |c| {
        c.server.send_queue_limit_bytes = 65535;
        c.server.close_flush_timeout_ms = 500;
        c.rate.chat_per_sec = 1000.0;
        c.rate.chat_burst = 1000;
    });
    let mut reader = server.enter_settled("reader", Some(0));
    let mut talker = server.enter_settled("talker", Some(1));
    reader.expect_spawn(talker.id);

    // The slow consumer: a player on shard 0 with tiny socket buffers that stops reading
    // once it has entered.
    let mut login = server.login_conn();
    login
        .send(&pb::CRegister {
            username: "sloth".into(),
            password: PASSWORD.into(),
        })
        .unwrap();
    let sloth_id = match next(&mut login) {
        ServerMessage::Register(r) => r.account_id,
        other => panic!("register sloth: {other:?}"),
    };
    login
        .send(&pb::CLogin {
            username: "sloth".into(),
            password: PASSWORD.into(),
        })
        .unwrap();
    let token = match next(&mut login) {
        ServerMessage::Login(l) => l.token,
        other => panic!("login sloth: {other:?}"),
    };
    let mut sloth = raw_on_shard(&server, server.world_addr(), 0, 4096);
    drop(login);
    sloth.send(&pb::CEnter { token });
    match sloth.recv() {
        ServerMessage::Enter(e) => assert_eq!(e.result, pb::Result::Ok as i32),
        other => panic!("expected S_ENTER, got {other:?}"),
    }
    reader.expect_spawn(sloth_id);
    talker.expect_spawn(sloth_id);

    // It floods the server with echo requests and never reads the answers, until the server
    // closes the connection (a write fails) or the bounds run out.
    let flood = thread::spawn(move || {
        let echo = frame(&pb::CEcho {
            data: vec![b'e'; 3993].into(),
        });
        sloth
            .tcp
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let give_up = Instant::now() + WAIT;
        let mut sent = 0usize;
        'flood: while sent < 20_000 {
            let mut rest = echo.as_slice();
            while !rest.is_empty() {
                match sloth.tcp.write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if Instant::now() > give_up {
                            break 'flood;
                        }
                    }
                    Err(_) => break 'flood, // closed by the server
                }
            }
            sent += 1;
        }
        (sent, sloth)
    });

    // Meanwhile the other two chat, and the reader on the sloth's shard hears every line.
    let mut round = 0;
    let mut despawned = false;
    loop {
        let text = format!("during {round}");
        talker.chat(&text);
        expect_chat_past(&mut reader, talker.id, &text, sloth_id, &mut despawned);
        round += 1;
        if flood.is_finished() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let (sent, sloth) = flood.join().unwrap();

    let seen = sloth.drain_until_closed();
    let echoes = seen
        .iter()
        .filter(|m| matches!(m, ServerMessage::Echo(_)))
        .count();
    assert!(
        echoes < sent,
        "all {sent} echoes were delivered: it was not treated as slow"
    );
    for (i, m) in seen.iter().enumerate() {
        if let ServerMessage::Disconnect(d) = m {
            assert_eq!(d.reason, DisconnectReason::SlowConsumer as i32, "{d:?}");
            assert_eq!(i, seen.len() - 1, "S_DISCONNECT was not the last message");
        }
    }

    // The others go on chatting, and saw it leave.
    for i in 0..3 {
        let text = format!("after {i}");
        talker.chat(&text);
        expect_chat_past(&mut reader, talker.id, &text, sloth_id, &mut despawned);
    }
    if !despawned {
        match next(&mut reader.conn) {
            ServerMessage::Despawn(d) if d.player_ids == [sloth_id] => {}
            other => panic!("reader: expected the sloth's despawn, got {other:?}"),
        }
    }
}

/// Closes `tcp` with a reset.
fn reset(tcp: TcpStream) {
    SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

#[test]
fn client_that_resets_disturbs_no_one_and_is_forgotten() {
    let server = TestServer::start(true, |_| {});
    let mut a = server.enter_settled("steady_a", Some(0));
    let mut b = server.enter_settled("steady_b", Some(1));
    a.expect_spawn(b.id);
    b.expect_spawn(a.id);
    // The login connections of the set-up are gone; two players remain.
    server.wait_for_connections(|c| c == [1, 1]);
    let before = server.connections();

    for _ in 0..5 {
        // Right after the TLS handshake.
        server.world_conn().reset();
        // Before the TLS handshake.
        reset(TcpStream::connect(server.world_addr()).unwrap());
        // Once the server has registered it, on each service.
        let mut conn = server.login_conn();
        ping(&mut conn);
        conn.reset();
        let mut conn = server.world_conn();
        ping(&mut conn);
        conn.reset();
        // In the middle of a frame.
        let mut conn = server.world_conn();
        conn.send_bytes(&frame(&pb::CPing { client_time: 5 })[..3])
            .unwrap();
        conn.reset();
    }
    // Connections accepted after the resets (on both shards, most likely) prove the shards
    // took them: each shard accepts in order.
    let probes: Vec<Connection> = (0..6)
        .map(|_| {
            let mut conn = server.world_conn();
            ping(&mut conn);
            conn
        })
        .collect();
    drop(probes);
    server.wait_for_connections(|c| c == before.as_slice());

    for (speaker, text) in [(0, "still here"), (1, "me too")] {
        let from = if speaker == 0 {
            a.chat(text);
            a.id
        } else {
            b.chat(text);
            b.id
        };
        for p in [&mut a, &mut b] {
            match next(&mut p.conn) {
                ServerMessage::Chat(c) => assert_eq!((c.player_id, c.text.as_str()), (from, text)),
                other => panic!("{} expected {text:?}, got {other:?}", p.name),
            }
        }
    }
    for p in [&mut a, &mut b] {
        match p.conn.recv_timeout(QUIET) {
            Err(ClientError::Timeout) => {}
            other => panic!("{} received something unexpected: {other:?}", p.name),
        }
    }
}

/// Every shard takes its listeners out of service at shutdown (the kernel would otherwise keep
/// routing SO_REUSEPORT connections to a socket nobody accepts on). The kernel also cleans up
/// after a closed listener on its own, so this holds the behaviour, not the mechanism.
#[test]
fn a_stopped_server_refuses_new_connections_on_both_services() {
    let server = TestServer::start(false, |_| {});
    let (login, world) = (server.login_addr(), server.world_addr());
    // Both shards have been accepting (a pending accept on every listener).
    let mut a = server.connect_on_shard(login, 0);
    let mut b = server.connect_on_shard(world, 1);
    ping(&mut a);
    ping(&mut b);
    drop((a, b));
    server.stop();
    for addr in [login, world] {
        let err = std::net::TcpStream::connect(addr).expect_err("nothing listens after shutdown");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}");
    }
}
