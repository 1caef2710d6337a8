//! The login service against PROTOCOL.md, over TLS unless a test says otherwise: registration
//! and its input rules, login and its answers (token, lifetime, failures, rate limits), several
//! requests on one connection, ping and echo, world messages refused, the TLS set-up (trust,
//! plaintext clients, dev certificates), and the token's single use and lifetime at the world's
//! door.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use common::*;
use gameserver::client::{ClientError, Connection, Tls};
use gameserver::protocol::pb::{self, DisconnectReason, Result as Code};
use gameserver::protocol::{encode_frame, FrameDecoder, ServerMessage, MAX_SERVER_FRAME};

const PASSWORD: &str = "password123";

fn register_on(conn: &mut Connection, name: &str, password: &str) -> pb::SRegister {
    conn.send(&pb::CRegister {
        username: name.into(),
        password: password.into(),
    })
    .unwrap();
    match next(conn) {
        ServerMessage::Register(r) => r,
        other => panic!("register {name:?}: expected S_REGISTER, got {other:?}"),
    }
}

fn login_on(conn: &mut Connection, name: &str, password: &str) -> pb::SLogin {
    conn.send(&pb::CLogin {
        username: name.into(),
        password: password.into(),
    })
    .unwrap();
    match next(conn) {
        ServerMessage::Login(r) => r,
        other => panic!("login {name:?}: expected S_LOGIN, got {other:?}"),
    }
}

fn failed_login(code: Code) -> pb::SLogin {
    pb::SLogin {
        result: code as i32,
        ..Default::default()
    }
}

/// Logs in over TLS from the loopback address `local_ip` (every 127.x.y.z is this host), so
/// that tests can act as several client addresses. The harness's `Connection` cannot choose
/// its source address, hence this small client of its own.
fn login_from(server: &TestServer, local_ip: Ipv4Addr, name: &str, password: &str) -> pb::SLogin {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    socket
        .bind(&SocketAddr::from((local_ip, 0)).into())
        .unwrap();
    socket
        .connect_timeout(&server.login_addr().into(), WAIT)
        .unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let tls = server.tls.as_ref().expect("a TLS server");
    let session =
        rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone()).unwrap();
    let mut stream = rustls::StreamOwned::new(session, tcp);
    let mut out = BytesMut::new();
    encode_frame(
        &pb::CLogin {
            username: name.into(),
            password: password.into(),
        },
        &mut out,
    )
    .unwrap();
    stream.write_all(&out).unwrap();
    stream.flush().unwrap();
    let mut decoder = FrameDecoder::new(MAX_SERVER_FRAME);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.next_frame().unwrap() {
            match ServerMessage::decode(&frame).unwrap() {
                ServerMessage::Login(l) => return l,
                other => panic!("login {name:?} from {local_ip}: got {other:?}"),
            }
        }
        let n = stream.read(&mut buf).expect("an answer to C_LOGIN");
        assert!(
            n > 0,
            "login {name:?} from {local_ip}: closed without an answer"
        );
        decoder.extend(&buf[..n]);
    }
}

/// Sends `C_ENTER{token}` on a new world connection and returns the first answer and
/// everything else the server sent until it closed the connection; panics if it stays open.
fn enter_refused(server: &TestServer, token: &str) -> (ServerMessage, Vec<ServerMessage>) {
    let mut conn = server.world_conn();
    conn.send(&pb::CEnter {
        token: token.into(),
    })
    .unwrap();
    let first = next(&mut conn);
    let rest = expect_closed(&mut conn);
    (first, rest)
}

fn assert_invalid_token(what: &str, (first, rest): (ServerMessage, Vec<ServerMessage>)) {
    assert_eq!(
        first,
        ServerMessage::Enter(pb::SEnter {
            result: Code::InvalidToken as i32,
            player: None,
        }),
        "{what}"
    );
    assert!(
        rest.iter()
            .all(|m| matches!(m, ServerMessage::Disconnect(_))),
        "{what}: nothing but a goodbye may follow, got {rest:?}"
    );
}

fn round_trip(tls: bool) {
    let server = TestServer::start(tls, |_| {});
    let mut conn = server.login_conn();
    let reg = register_on(&mut conn, "roundtrip", PASSWORD);
    assert_eq!(reg.result, Code::Ok as i32);
    assert_ne!(reg.account_id, 0);
    let login = login_on(&mut conn, "roundtrip", PASSWORD);
    assert_eq!(login.result, Code::Ok as i32);
    assert_eq!(login.account_id, reg.account_id);
    assert!(!login.token.is_empty());
}

#[test]
fn register_and_login_round_trip_over_tls() {
    round_trip(true);
}

#[test]
fn register_and_login_round_trip_in_plaintext() {
    round_trip(false);
}

#[test]
fn register_returns_an_account_id_and_refuses_the_same_name_in_another_case() {
    let server = TestServer::start(true, |_| {});
    let mut conn = server.login_conn();
    let alice = register_on(&mut conn, "Alice", PASSWORD);
    assert_eq!(alice.result, Code::Ok as i32);
    assert_ne!(alice.account_id, 0);
    let bob = register_on(&mut conn, "bob", PASSWORD);
    assert_eq!(bob.result, Code::Ok as i32);
    assert_ne!(bob.account_id, 0);
    assert_ne!(bob.account_id, alice.account_id);
    for name in ["Alice", "alice", "ALICE", "aLiCe", "BOB"] {
        assert_eq!(
            register_on(&mut conn, name, "another password").result,
            Code::AccountExists as i32,
            "{name}"
        );
    }
}

#[test]
fn register_refuses_invalid_usernames_and_passwords() {
    let server = TestServer::start(true, |_| {});
    let mut conn = server.login_conn();
    let long_name = "a".repeat(33);
    let bad = [
        ("ab", PASSWORD),
        ("", PASSWORD),
        (long_name.as_str(), PASSWORD),
        ("bad name", PASSWORD),
        ("semi;colon", PASSWORD),
        ("dash-name", PASSWORD),
        ("héllo", PASSWORD),
        ("validname", "1234567"),
        ("validname", &"p".repeat(129)),
        ("validname", ""),
    ];
    for (name, password) in bad {
        let reply = register_on(&mut conn, name, password);
        assert_eq!(
            reply,
            pb::SRegister {
                result: Code::InvalidInput as i32,
                account_id: 0
            },
            "name {name:?}, password of {} bytes",
            password.len()
        );
    }
    // None of the refused requests created the account.
    assert_eq!(
        register_on(&mut conn, "validname", PASSWORD).result,
        Code::Ok as i32
    );
}

#[test]
fn register_accepts_names_and_passwords_at_the_limits() {
    let server = TestServer::start(true, |_| {});
    let mut conn = server.login_conn();
    let name_32 = "B".repeat(32);
    let password_128 = "q".repeat(128);
    let good = [
        ("abc", PASSWORD),
        (name_32.as_str(), PASSWORD),
        ("Under_Score_09", PASSWORD),
        ("eight_bytes", "12345678"),
        ("max_password", password_128.as_str()),
    ];
    for (name, password) in good {
        let reply = register_on(&mut conn, name, password);
        assert_eq!(reply.result, Code::Ok as i32, "register {name:?}");
        let login = login_on(&mut conn, name, password);
        assert_eq!(login.result, Code::Ok as i32, "login {name:?}");
        assert_eq!(login.account_id, reply.account_id, "login {name:?}");
    }
}

#[test]
fn login_ok_carries_a_token_the_account_id_and_the_configured_lifetime() {
    let server = TestServer::start(true, |c| c.store.token_ttl_secs = 42);
    let id = server.register("tokenuser", PASSWORD);
    let login = server.login("tokenuser", PASSWORD);
    assert_eq!(login.result, Code::Ok as i32);
    assert_eq!(login.account_id, id);
    assert_eq!(login.expires_in_secs, 42);
    let token = &login.token;
    assert!(
        (22..=64).contains(&token.len()),
        "token of {} chars: {token:?}",
        token.len()
    );
    assert!(
        token.chars().all(|c| c.is_ascii_graphic()),
        "token not printable: {token:?}"
    );
    // Each login issues a fresh token.
    let again = server.login("tokenuser", PASSWORD);
    assert_eq!(again.result, Code::Ok as i32);
    assert_ne!(again.token, login.token);
}

#[test]
fn wrong_password_and_unknown_user_both_answer_invalid_credentials_alike() {
    let server = TestServer::start(true, |_| {});
    server.register("carol", PASSWORD);
    let mut conn = server.login_conn();
    let wrong_password = login_on(&mut conn, "carol", "not the password");
    let unknown_user = login_on(&mut conn, "nobody_here", PASSWORD);
    assert_eq!(wrong_password, failed_login(Code::InvalidCredentials));
    assert_eq!(unknown_user, failed_login(Code::InvalidCredentials));
    // Names and passwords no account can have are unknown credentials too.
    for (name, password) in [("x", PASSWORD), ("bad name", PASSWORD), ("carol", "short")] {
        assert_eq!(
            login_on(&mut conn, name, password),
            failed_login(Code::InvalidCredentials),
            "{name:?} / {password:?}"
        );
    }
    // The connection stays usable after refusals.
    assert_eq!(
        login_on(&mut conn, "carol", PASSWORD).result,
        Code::Ok as i32
    );
}

#[test]
fn too_many_failures_for_one_username_rate_limit_it_even_with_the_right_password() {
    let server = TestServer::start(true, |c| c.store.max_failed_logins = 3);
    server.register("victim", PASSWORD);
    server.register("bystander", PASSWORD);
    let attacker = Ipv4Addr::new(127, 0, 0, 2);
    let owner = Ipv4Addr::new(127, 0, 0, 3);
    for _ in 0..3 {
        assert_eq!(
            login_from(&server, attacker, "victim", "wrong password"),
            failed_login(Code::InvalidCredentials)
        );
    }
    // From an address with no failures, the right password is refused for this username
    // (in any case) ...
    assert_eq!(
        login_from(&server, owner, "victim", PASSWORD),
        failed_login(Code::RateLimited)
    );
    assert_eq!(
        login_from(&server, owner, "VICTIM", PASSWORD),
        failed_login(Code::RateLimited)
    );
    // ... while other usernames from that address are served.
    assert_eq!(
        login_from(&server, owner, "bystander", PASSWORD).result,
        Code::Ok as i32
    );
}

#[test]
fn too_many_failures_from_one_address_rate_limit_every_username_from_it() {
    let server = TestServer::start(true, |c| c.store.max_failed_logins = 3);
    server.register("dave", PASSWORD);
    let scanner = Ipv4Addr::new(127, 0, 0, 4);
    let elsewhere = Ipv4Addr::new(127, 0, 0, 5);
    for name in ["guess_one", "guess_two", "guess_three"] {
        assert_eq!(
            login_from(&server, scanner, name, PASSWORD),
            failed_login(Code::InvalidCredentials)
        );
    }
    // A username that never failed, with the right password, is refused from that address ...
    assert_eq!(
        login_from(&server, scanner, "dave", PASSWORD),
        failed_login(Code::RateLimited)
    );
    // ... and served from another one.
    assert_eq!(
        login_from(&server, elsewhere, "dave", PASSWORD).result,
        Code::Ok as i32
    );
}

#[test]
fn pipelined_requests_on_one_login_connection_are_answered_in_order() {
    let server = TestServer::start(true, |_| {});
    let mut conn = server.login_conn();
    conn.send(&pb::CRegister {
        username: "pipeliner".into(),
        password: PASSWORD.into(),
    })
    .unwrap();
    conn.send(&pb::CLogin {
        username: "pipeliner".into(),
        password: PASSWORD.into(),
    })
    .unwrap();
    conn.send(&pb::CPing { client_time: 777 }).unwrap();

    let account_id = match next(&mut conn) {
        ServerMessage::Register(r) if r.result == Code::Ok as i32 => r.account_id,
        other => panic!("first answer: expected S_REGISTER OK, got {other:?}"),
    };
    match next(&mut conn) {
        ServerMessage::Login(l) if l.result == Code::Ok as i32 => {
            assert_eq!(l.account_id, account_id)
        }
        other => panic!("second answer: expected S_LOGIN OK, got {other:?}"),
    }
    match next(&mut conn) {
        ServerMessage::Pong(p) => assert_eq!(p.client_time, 777),
        other => panic!("third answer: expected S_PONG, got {other:?}"),
    }
}

#[test]
fn ping_on_login_answers_pong_with_client_time_and_server_time_in_micros() {
    let server = TestServer::start(true, |_| {});
    let mut conn = server.login_conn();
    let client_time = 0x1234_5678_9abc_def0;
    conn.send(&pb::CPing { client_time }).unwrap();
    let pong = match next(&mut conn) {
        ServerMessage::Pong(p) => p,
        other => panic!("expected S_PONG, got {other:?}"),
    };
    assert_eq!(pong.client_time, client_time);
    // A units check, not a timing one: microseconds since the Unix epoch are within an hour of
    // this machine's clock (seconds or milliseconds would be off by orders of magnitude).
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let hour = Duration::from_secs(3600);
    let range = (now - hour).as_micros()..=(now + hour).as_micros();
    assert!(
        range.contains(&u128::from(pong.server_time)),
        "server_time {} is not microseconds since the epoch (now is {} µs)",
        pong.server_time,
        now.as_micros()
    );
}

#[test]
fn echo_on_login_returns_the_same_bytes() {
    let server = TestServer::start(true, |_| {});
    let mut conn = server.login_conn();
    let big: Vec<u8> = (0..4000u32).map(|i| (i * 7 % 256) as u8).collect();
    for data in [Vec::new(), b"hello".to_vec(), vec![0u8; 3], big] {
        conn.send(&pb::CEcho {
            data: data.clone().into(),
        })
        .unwrap();
        match next(&mut conn) {
            ServerMessage::Echo(e) => {
                assert_eq!(e.data[..], data[..], "echo of {} bytes", data.len())
            }
            other => panic!("echo of {} bytes: got {other:?}", data.len()),
        }
    }
}

#[test]
fn world_message_on_login_service_is_a_protocol_error() {
    let server = TestServer::start(true, |_| {});
    let mut enter = server.login_conn();
    enter
        .send(&pb::CEnter {
            token: "sometoken".into(),
        })
        .unwrap();
    let mut chat = server.login_conn();
    chat.send(&pb::CChat { text: "hi".into() }).unwrap();
    for (what, conn) in [("C_ENTER", &mut enter), ("C_CHAT", &mut chat)] {
        let seen = expect_closed(conn);
        assert_eq!(seen.len(), 1, "{what}: {seen:?}");
        assert_eq!(
            disconnect_reason(&seen),
            Some(DisconnectReason::ProtocolError),
            "{what}: {seen:?}"
        );
    }
}

/// True when `e` is rustls refusing the server's certificate (the client reports it as
/// `ClientError::Tls`, or as an I/O error wrapping it when it comes out of the handshake I/O).
fn is_certificate_error(e: &ClientError) -> bool {
    let tls = match e {
        ClientError::Tls(t) => Some(t),
        ClientError::Io(io) => io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    matches!(tls, Some(rustls::Error::InvalidCertificate(_)))
}

#[test]
fn client_trusting_another_ca_fails_the_handshake() {
    let server = TestServer::start(true, |_| {});
    let other = tempfile::tempdir().unwrap();
    let other_cfg = test_config(other.path(), true).tls;
    gameserver::tls::generate_dev_certs(&other_cfg).unwrap();
    let tls = Tls {
        config: gameserver::tls::client_config_trusting(&other_cfg.ca_path).unwrap(),
        server_name: gameserver::tls::server_name("localhost").unwrap(),
    };
    for addr in [server.login_addr(), server.world_addr()] {
        match Connection::connect(addr, Some(&tls), WAIT) {
            Err(e) if is_certificate_error(&e) => {}
            Err(e) => panic!("{addr}: expected a certificate error, got {e}"),
            Ok(_) => panic!("{addr}: a client trusting another CA completed the handshake"),
        }
    }
    // The server still serves clients that trust its CA.
    ping(&mut server.login_conn());
}

#[test]
fn plaintext_client_on_tls_server_gets_no_frame_and_is_closed() {
    let server = TestServer::start(true, |c| c.tls.handshake_timeout_ms = 300);
    for addr in [server.login_addr(), server.world_addr()] {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut out = BytesMut::new();
        encode_frame(&pb::CPing { client_time: 1 }, &mut out).unwrap();
        tcp.write_all(&out).unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{addr}: the server did not close the connection: {e}"),
            }
        }
        let mut decoder = FrameDecoder::new(MAX_SERVER_FRAME);
        decoder.extend(&received);
        if let Ok(Some(frame)) = decoder.next_frame() {
            assert!(
                ServerMessage::decode(&frame).is_err(),
                "{addr}: a plaintext client got a valid frame: {received:?}"
            );
        }
    }
}

#[cfg(unix)]
#[test]
fn first_start_generates_the_dev_ca_and_server_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), true);
    let tls = config.tls.clone();
    let files = [
        (&tls.ca_path, "CERTIFICATE", false),
        (&tls.ca_key_path(), "PRIVATE KEY", true),
        (&tls.cert_path, "CERTIFICATE", false),
        (&tls.key_path, "PRIVATE KEY", true),
    ];
    for (path, _, _) in &files {
        assert!(
            !path.exists(),
            "{} exists before the first start",
            path.display()
        );
    }
    let server = TestServer::start_with(config, dir);
    for (path, pem, secret) in &files {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{} after the first start: {e}", path.display()));
        assert!(text.contains(pem), "{} holds no {pem}", path.display());
        if *secret {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} has mode {mode:o}", path.display());
        }
    }
    // The server chain is the generated leaf followed by the generated CA.
    let chain = std::fs::read_to_string(&tls.cert_path).unwrap();
    let ca = std::fs::read_to_string(&tls.ca_path).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(chain.ends_with(&ca), "the chain does not end with the CA");
    // And the server presents it: a client trusting the generated CA file is served
    // (`TestServer` builds its client config from `ca_path`).
    ping(&mut server.login_conn());
    ping(&mut server.world_conn());
}

#[test]
fn token_enters_the_world_once() {
    let server = TestServer::start(true, |_| {});
    let id = server.register("onceonly", PASSWORD);
    let login = server.login("onceonly", PASSWORD);
    assert_eq!(login.result, Code::Ok as i32);

    let mut first = server.world_conn();
    first
        .send(&pb::CEnter {
            token: login.token.clone(),
        })
        .unwrap();
    match next(&mut first) {
        ServerMessage::Enter(e) => {
            assert_eq!(e.result, Code::Ok as i32);
            assert_eq!(e.player.map(|p| p.player_id), Some(id));
        }
        other => panic!("first C_ENTER: expected S_ENTER, got {other:?}"),
    }

    assert_invalid_token("reused token", enter_refused(&server, &login.token));
    // The refused attempt did not touch the session that used the token.
    ping(&mut first);
}

#[test]
fn expired_token_is_refused() {
    let server = TestServer::start(true, |c| c.store.token_ttl_secs = 1);
    server.register("latecomer", PASSWORD);
    // Control: a fresh token enters in this configuration.
    let fresh = server.login("latecomer", PASSWORD);
    assert_eq!(fresh.expires_in_secs, 1);
    let mut conn = server.world_conn();
    conn.send(&pb::CEnter { token: fresh.token }).unwrap();
    match next(&mut conn) {
        ServerMessage::Enter(e) => assert_eq!(e.result, Code::Ok as i32),
        other => panic!("fresh token: expected S_ENTER, got {other:?}"),
    }
    drop(conn);

    let stale = server.login("latecomer", PASSWORD);
    assert_eq!(stale.result, Code::Ok as i32);
    // Letting the token outlive its 1 s lifetime is the behaviour under test.
    std::thread::sleep(Duration::from_millis(1500));
    assert_invalid_token("expired token", enter_refused(&server, &stale.token));
}

#[test]
fn unknown_empty_and_overlong_tokens_are_refused() {
    let server = TestServer::start(true, |_| {});
    // Tokens of the right shape, never issued here.
    let unknown = "A".repeat(43);
    let unknown_64 = "b".repeat(64);
    let overlong = "t".repeat(65);
    for (what, token) in [
        ("unknown token", unknown.as_str()),
        ("unknown 64-char token", unknown_64.as_str()),
        ("empty token", ""),
        ("65-char token", overlong.as_str()),
    ] {
        assert_invalid_token(what, enter_refused(&server, token));
    }
    // The world is still open to a good token.
    server.register("afterwards", PASSWORD);
    let login = server.login("afterwards", PASSWORD);
    let mut conn = server.world_conn();
    conn.send(&pb::CEnter { token: login.token }).unwrap();
    match next(&mut conn) {
        ServerMessage::Enter(e) => assert_eq!(e.result, Code::Ok as i32),
        other => panic!("good token: expected S_ENTER, got {other:?}"),
    }
}
