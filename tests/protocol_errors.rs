//! Protocol errors of PROTOCOL.md and the requests the server refuses without closing.
//!
//! Each protocol error is committed by an offender on the world service (and, for the
//! frame-level ones, on the login service too) while two players on different shards chat with
//! each other: the offender gets `S_DISCONNECT{PROTOCOL_ERROR}` (or `NOT_AUTHENTICATED`) and is
//! closed, and the two players notice nothing, except the offender's `S_DESPAWN` when it was in
//! the world. Also: frames split anywhere or packed together, `S_ERROR` answers that keep the
//! connection open, and the chat rate limit.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use gameserver::client::{ClientError, Connection};
use gameserver::protocol::pb::{self, DisconnectReason, Result as Code};
use gameserver::protocol::{encode_frame, Body, ServerMessage};

const PASSWORD: &str = "password123";

/// Ids of the requests `S_ERROR.request_id` refers to.
const C_CHAT: u32 = 20;
const C_MOVE: u32 = 30;

/// Asserts nothing arrives on `conn` for `wait`.
fn assert_quiet(conn: &mut Connection, wait: Duration, who: &str) {
    match conn.recv_timeout(wait) {
        Err(ClientError::Timeout) => {}
        Ok(m) => panic!("{who} received something unexpected: {m:?}"),
        Err(e) => panic!("{who}: {e}"),
    }
}

fn frame<M: Body>(msg: &M) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(msg, &mut out).unwrap();
    out.to_vec()
}

/// A raw 4-byte header.
fn header(size: u16, id: u16) -> Vec<u8> {
    let mut h = size.to_le_bytes().to_vec();
    h.extend_from_slice(&id.to_le_bytes());
    h
}

/// A frame with `id` and `body`, the size computed.
fn raw(id: u16, body: &[u8]) -> Vec<u8> {
    let mut f = header(4 + body.len() as u16, id);
    f.extend_from_slice(body);
    f
}

/// A length-delimited field 1 claiming 5 bytes but carrying 1: protobuf cannot decode it.
const TRUNCATED: &[u8] = &[0x0a, 0x05, b'a'];
/// A `string` field 1 holding bytes that are not UTF-8.
const NOT_UTF8: &[u8] = &[0x0a, 0x02, 0xff, 0xfe];

/// Where the offender stands when it misbehaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Offender {
    /// A login connection.
    Login,
    /// A world connection that has not entered.
    World,
    /// A player in the world.
    InWorld,
}

/// Two players in the world, one per shard, who watch for anything unexpected.
struct Bystanders {
    a: Player,
    b: Player,
    rounds: usize,
    offenders: usize,
}

impl Bystanders {
    fn new(server: &TestServer) -> Self {
        let mut a = server.enter_settled("watcher_a", Some(0));
        let mut b = server.enter_settled("watcher_b", Some(1));
        b.expect_spawn(a.id);
        a.expect_spawn(b.id);
        let mut s = Self {
            a,
            b,
            rounds: 0,
            offenders: 0,
        };
        s.chat_round();
        s
    }

    /// Each says a line; both must receive both lines and nothing else.
    fn chat_round(&mut self) {
        self.rounds += 1;
        let n = self.rounds;
        for speaker in 0..2 {
            let text = format!("round {n} from {speaker}");
            let from = if speaker == 0 {
                self.a.chat(&text);
                self.a.id
            } else {
                self.b.chat(&text);
                self.b.id
            };
            for p in [&mut self.a, &mut self.b] {
                match next(&mut p.conn) {
                    ServerMessage::Chat(c) if c.player_id == from && c.text == text => {}
                    other => panic!("{} expected {text:?}, got {other:?}", p.name),
                }
            }
        }
    }

    /// A fresh offender connection of `kind`; returns it and its player id when in the world.
    fn offender(&mut self, server: &TestServer, kind: Offender) -> (Connection, Option<u64>) {
        self.offenders += 1;
        match kind {
            Offender::Login => {
                let mut conn = server.login_conn();
                ping(&mut conn);
                (conn, None)
            }
            Offender::World => {
                let mut conn = server.world_conn();
                ping(&mut conn);
                (conn, None)
            }
            Offender::InWorld => {
                let name = format!("offender_{}", self.offenders);
                let p = server.enter_settled(&name, Some(self.offenders % 2));
                for w in [&mut self.a, &mut self.b] {
                    match next(&mut w.conn) {
                        ServerMessage::Spawn(s)
                            if s.players.len() == 1 && s.players[0].player_id == p.id => {}
                        other => panic!("{} expected the spawn of {name}, got {other:?}", w.name),
                    }
                }
                (p.conn, Some(p.id))
            }
        }
    }

    /// Runs `offence` on a fresh offender of `kind`: the offender must get
    /// `S_DISCONNECT{reason}` and be closed, while the bystanders keep chatting and see nothing
    /// but the offender's `S_DESPAWN` if it was in the world.
    fn check(
        &mut self,
        server: &TestServer,
        what: &str,
        kind: Offender,
        reason: DisconnectReason,
        offence: impl FnOnce(&mut Connection),
    ) {
        let (mut conn, in_world) = self.offender(server, kind);
        offence(&mut conn);
        let seen = expect_closed(&mut conn);
        match seen.last() {
            Some(ServerMessage::Disconnect(d)) if d.reason == reason as i32 => {}
            _ => {
                panic!("{what} ({kind:?}): expected S_DISCONNECT{{{reason:?}}} last, got {seen:?}")
            }
        }
        assert_eq!(
            seen.iter()
                .filter(|m| matches!(m, ServerMessage::Disconnect(_)))
                .count(),
            1,
            "{what} ({kind:?}): {seen:?}"
        );
        if let Some(id) = in_world {
            for w in [&mut self.a, &mut self.b] {
                match next(&mut w.conn) {
                    ServerMessage::Despawn(d) if d.player_ids == [id] => {}
                    other => panic!(
                        "{what}: {} expected the offender's despawn, got {other:?}",
                        w.name
                    ),
                }
            }
        }
        // Only the two bystanders remain.
        server.wait_for_connections(|c| c.iter().sum::<usize>() == 2);
        self.chat_round();
        self.assert_quiet(what);
    }

    /// Asserts neither bystander receives anything more: `QUIET` for the first; by then
    /// anything sent to the second has arrived too, so a short look suffices.
    fn assert_quiet(&mut self, what: &str) {
        assert_quiet(&mut self.a.conn, QUIET, &format!("{what}: {}", self.a.name));
        let glance = Duration::from_millis(20);
        assert_quiet(
            &mut self.b.conn,
            glance,
            &format!("{what}: {}", self.b.name),
        );
    }

    /// `check` for a frame sent as raw bytes.
    fn check_bytes(
        &mut self,
        server: &TestServer,
        what: &str,
        kind: Offender,
        reason: DisconnectReason,
        bytes: &[u8],
    ) {
        self.check(server, what, kind, reason, |conn| {
            conn.send_bytes(bytes).unwrap()
        });
    }
}

const EVERY_SERVICE: [Offender; 3] = [Offender::Login, Offender::World, Offender::InWorld];

#[test]
fn frame_size_below_the_header_is_a_protocol_error() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    for kind in EVERY_SERVICE {
        for size in 0..=3u16 {
            let what = format!("size {size}");
            watch.check_bytes(
                &server,
                &what,
                kind,
                DisconnectReason::ProtocolError,
                &header(size, 40),
            );
        }
    }
}

#[test]
fn frame_size_over_max_client_frame_is_a_protocol_error() {
    let server = TestServer::start(true, |c| c.server.max_client_frame = 256);
    let mut watch = Bystanders::new(&server);
    for kind in EVERY_SERVICE {
        // Control: a frame of exactly the limit is taken.
        let (mut conn, _) = watch.offender(&server, kind);
        let data = vec![7u8; 256 - 4 - 3];
        let at_limit = frame(&pb::CEcho {
            data: data.clone().into(),
        });
        assert_eq!(at_limit.len(), 256);
        conn.send_bytes(&at_limit).unwrap();
        let echoed = expect(&mut conn, "echo", |m| match m {
            ServerMessage::Echo(e) => Some(e.data.to_vec()),
            _ => None,
        });
        assert_eq!(echoed, data, "{kind:?}");
        drop(conn);
        server.wait_for_connections(|c| c.iter().sum::<usize>() == 2);
        if kind == Offender::InWorld {
            for w in [&mut watch.a, &mut watch.b] {
                match next(&mut w.conn) {
                    ServerMessage::Despawn(_) => {}
                    other => panic!("{} expected the control's despawn, got {other:?}", w.name),
                }
            }
        }
        // Only the header is sent: the size alone is the error.
        watch.check_bytes(
            &server,
            "size 257",
            kind,
            DisconnectReason::ProtocolError,
            &header(257, 50),
        );
        watch.check_bytes(
            &server,
            "size 65535",
            kind,
            DisconnectReason::ProtocolError,
            &header(65535, 50),
        );
    }
}

#[test]
fn unknown_message_id_is_a_protocol_error() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    for kind in EVERY_SERVICE {
        for id in [0u16, 7, 42, 65535] {
            let what = format!("unknown id {id}");
            watch.check_bytes(
                &server,
                &what,
                kind,
                DisconnectReason::ProtocolError,
                &raw(id, &[]),
            );
        }
    }
}

#[test]
fn server_to_client_id_from_a_client_is_a_protocol_error() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    for kind in EVERY_SERVICE {
        for id in [2u16, 11, 41, 99] {
            let what = format!("server id {id}");
            watch.check_bytes(
                &server,
                &what,
                kind,
                DisconnectReason::ProtocolError,
                &raw(id, &[]),
            );
        }
    }
}

#[test]
fn world_message_on_the_login_service_is_a_protocol_error() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    let offences = [
        ("C_ENTER", frame(&pb::CEnter { token: "t".into() })),
        ("C_CHAT", frame(&pb::CChat { text: "hi".into() })),
        (
            "C_MOVE",
            frame(&pb::CMove {
                x: 1.0,
                y: 2.0,
                z: 3.0,
            }),
        ),
    ];
    for (what, bytes) in &offences {
        watch.check_bytes(
            &server,
            what,
            Offender::Login,
            DisconnectReason::ProtocolError,
            bytes,
        );
    }
}

#[test]
fn login_message_on_the_world_service_is_a_protocol_error() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    let offences = [
        (
            "C_REGISTER",
            frame(&pb::CRegister {
                username: "someone".into(),
                password: "password123".into(),
            }),
        ),
        (
            "C_LOGIN",
            frame(&pb::CLogin {
                username: "watcher_a".into(),
                password: "password123".into(),
            }),
        ),
    ];
    for kind in [Offender::World, Offender::InWorld] {
        for (what, bytes) in &offences {
            watch.check_bytes(&server, what, kind, DisconnectReason::ProtocolError, bytes);
        }
    }
}

#[test]
fn chat_or_move_before_enter_is_not_authenticated() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    let offences = [
        ("C_CHAT", frame(&pb::CChat { text: "hi".into() })),
        (
            "C_MOVE",
            frame(&pb::CMove {
                x: 1.0,
                y: 2.0,
                z: 3.0,
            }),
        ),
    ];
    for (what, bytes) in &offences {
        watch.check_bytes(
            &server,
            what,
            Offender::World,
            DisconnectReason::NotAuthenticated,
            bytes,
        );
    }
}

#[test]
fn body_protobuf_cannot_decode_is_a_protocol_error() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    let offences: [(Offender, &str, u16, &[u8]); 10] = [
        (Offender::Login, "truncated C_LOGIN", 3, TRUNCATED),
        (Offender::Login, "truncated C_PING", 40, &[0x08]),
        (
            Offender::Login,
            "C_REGISTER username not UTF-8",
            1,
            NOT_UTF8,
        ),
        (
            Offender::Login,
            "C_LOGIN password not UTF-8",
            3,
            &[0x12, 0x01, 0x80],
        ),
        (Offender::World, "truncated C_ENTER", 10, TRUNCATED),
        (Offender::World, "C_ENTER token not UTF-8", 10, NOT_UTF8),
        (Offender::World, "truncated C_ECHO", 50, TRUNCATED),
        (Offender::InWorld, "truncated C_CHAT", 20, TRUNCATED),
        (Offender::InWorld, "C_CHAT text not UTF-8", 20, NOT_UTF8),
        (
            Offender::InWorld,
            "truncated C_MOVE",
            30,
            &[0x0d, 0x00, 0x00],
        ),
    ];
    for (kind, what, id, body) in offences {
        watch.check_bytes(
            &server,
            what,
            kind,
            DisconnectReason::ProtocolError,
            &raw(id, body),
        );
    }
}

#[test]
fn second_enter_after_entering_is_a_protocol_error_and_only_despawns_the_offender() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    // With a fresh, valid token of another account (which must not enter either: the
    // bystanders would see its spawn), and with a bogus one.
    let mut login = server.login_conn();
    login
        .send(&pb::CRegister {
            username: "spare".into(),
            password: PASSWORD.into(),
        })
        .unwrap();
    next(&mut login);
    login
        .send(&pb::CLogin {
            username: "spare".into(),
            password: PASSWORD.into(),
        })
        .unwrap();
    let spare_token = match next(&mut login) {
        ServerMessage::Login(l) => l.token,
        other => panic!("login spare: {other:?}"),
    };
    drop(login);
    server.wait_for_connections(|c| c.iter().sum::<usize>() == 2);
    watch.check(
        &server,
        "second C_ENTER, valid token",
        Offender::InWorld,
        DisconnectReason::ProtocolError,
        |conn| conn.send(&pb::CEnter { token: spare_token }).unwrap(),
    );
    watch.check(
        &server,
        "second C_ENTER, bogus token",
        Offender::InWorld,
        DisconnectReason::ProtocolError,
        |conn| {
            conn.send(&pb::CEnter {
                token: "bogus".into(),
            })
            .unwrap()
        },
    );
}

#[test]
fn frame_split_byte_by_byte_is_reassembled() {
    let server = TestServer::start(true, |_| {});
    let mut login = server.login_conn();
    let mut world = server.world_conn();
    let mut player = server.enter_settled("splitter", None);
    for (what, conn) in [
        ("login", &mut login),
        ("world", &mut world),
        ("in world", &mut player.conn),
    ] {
        for client_time in [1u64, 0x0102_0304_0506_0708] {
            for byte in frame(&pb::CPing { client_time }) {
                conn.send_bytes(&[byte]).unwrap();
            }
            match next(conn) {
                ServerMessage::Pong(p) => assert_eq!(p.client_time, client_time, "{what}"),
                other => panic!("{what}: expected S_PONG, got {other:?}"),
            }
        }
    }
    // A chat split the same way reaches the world.
    for byte in frame(&pb::CChat {
        text: "one byte at a time".into(),
    }) {
        player.conn.send_bytes(&[byte]).unwrap();
    }
    player.expect("own chat", |m| match m {
        ServerMessage::Chat(c) => {
            assert_eq!(c.text, "one byte at a time");
            Some(())
        }
        _ => None,
    });
}

#[test]
fn several_frames_in_one_write_are_all_answered() {
    let server = TestServer::start(true, |_| {});
    let mut login = server.login_conn();
    let mut world = server.world_conn();
    for (what, conn) in [("login", &mut login), ("world", &mut world)] {
        let mut bytes = frame(&pb::CPing { client_time: 1 });
        bytes.extend(frame(&pb::CEcho {
            data: b"middle".to_vec().into(),
        }));
        bytes.extend(frame(&pb::CEcho {
            data: Vec::new().into(),
        }));
        bytes.extend(frame(&pb::CPing { client_time: 2 }));
        conn.send_bytes(&bytes).unwrap();
        let answers: Vec<ServerMessage> = (0..4).map(|_| next(conn)).collect();
        assert!(
            matches!(
                answers.as_slice(),
                [
                    ServerMessage::Pong(pb::SPong { client_time: 1, .. }),
                    ServerMessage::Echo(pb::SEcho { data: middle }),
                    ServerMessage::Echo(pb::SEcho { data: empty }),
                    ServerMessage::Pong(pb::SPong { client_time: 2, .. }),
                ] if middle[..] == b"middle"[..] && empty.is_empty()
            ),
            "{what}: {answers:?}"
        );
    }
}

fn expect_error(p: &mut Player, result: Code, request_id: u32, what: &str) {
    match next(&mut p.conn) {
        ServerMessage::Error(e) => assert_eq!(
            e,
            pb::SError {
                result: result as i32,
                request_id
            },
            "{what}"
        ),
        other => panic!("{what}: expected S_ERROR, got {other:?}"),
    }
}

#[test]
fn chat_with_empty_or_oversized_text_is_invalid_input_and_keeps_the_connection() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    for text in [String::new(), "x".repeat(257), "é".repeat(129)] {
        let what = format!("chat of {} bytes", text.len());
        watch.a.chat(&text);
        expect_error(&mut watch.a, Code::InvalidInput, C_CHAT, &what);
        ping(&mut watch.a.conn);
        // Nobody heard it: the next line both receive is the round's.
        watch.chat_round();
        watch.assert_quiet(&what);
    }
}

#[test]
fn chat_of_256_bytes_is_accepted() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    let speaker = watch.a.id;
    for text in ["y".repeat(256), "ü".repeat(128), "z".into()] {
        watch.a.chat(&text);
        for p in [&mut watch.a, &mut watch.b] {
            match next(&mut p.conn) {
                ServerMessage::Chat(c) => {
                    assert_eq!((c.player_id, c.text), (speaker, text.clone()))
                }
                other => panic!("{}: expected the chat, got {other:?}", p.name),
            }
        }
    }
}

#[test]
fn move_with_non_finite_coordinates_is_invalid_input_and_keeps_the_connection() {
    let server = TestServer::start(true, |_| {});
    let mut watch = Bystanders::new(&server);
    let bad = [
        (f32::NAN, 0.0, 0.0),
        (0.0, f32::INFINITY, 0.0),
        (0.0, 0.0, f32::NEG_INFINITY),
        (f32::NAN, f32::NAN, f32::NAN),
    ];
    for (x, y, z) in bad {
        let what = format!("move to ({x}, {y}, {z})");
        watch.a.move_to(x, y, z);
        expect_error(&mut watch.a, Code::InvalidInput, C_MOVE, &what);
        ping(&mut watch.a.conn);
    }
    // The other player saw none of them: the first move it gets is the valid one.
    watch.a.move_to(1.5, -2.0, 3.25);
    match next(&mut watch.b.conn) {
        ServerMessage::Move(m) => {
            assert_eq!((m.player_id, m.x, m.y, m.z), (watch.a.id, 1.5, -2.0, 3.25))
        }
        other => panic!("expected the valid move, got {other:?}"),
    }
    watch.chat_round();
}

#[test]
fn chat_over_the_rate_is_refused_then_disconnected() {
    let server = TestServer::start(true, |c| {
        c.rate.chat_per_sec = 1.0;
        c.rate.chat_burst = 2;
        c.rate.max_violations = 3;
    });
    let mut p = server.enter_settled("chatterbox", None);
    let mut answers = Vec::new();
    let mut closed_with = None;
    // One chat at a time, each answer read before the next chat: a burst far over 1/s.
    for i in 0..50 {
        p.chat(&format!("spam {i}"));
        match p.conn.recv_timeout(WAIT) {
            Ok(ServerMessage::Disconnect(d)) => {
                closed_with = Some(d.reason);
                break;
            }
            Ok(m) => answers.push(m),
            Err(e) => panic!("after {i} chats: {e}"),
        }
    }
    assert_eq!(
        closed_with,
        Some(DisconnectReason::RateLimited as i32),
        "answers: {answers:?}"
    );
    expect_closed(&mut p.conn);
    let limited = ServerMessage::Error(pb::SError {
        result: Code::RateLimited as i32,
        request_id: C_CHAT,
    });
    let first_refusal = answers
        .iter()
        .position(|m| *m == limited)
        .unwrap_or_else(|| {
            panic!("no S_ERROR{{RATE_LIMITED, 20}} before the disconnect: {answers:?}")
        });
    assert!(first_refusal >= 1, "the burst was not served: {answers:?}");
    assert!(
        answers[..first_refusal]
            .iter()
            .all(|m| matches!(m, ServerMessage::Chat(c) if c.player_id == p.id)),
        "{answers:?}"
    );
    assert!(
        answers[first_refusal..].iter().all(|m| *m == limited),
        "after the first refusal only refusals may come: {answers:?}"
    );
}
