//! One connection's protocol and policy, sans-IO: bytes and time go in, events come out.
//!
//! A driver (glommio shard, tokio task) owns the socket and does only what the events say:
//! send a message, run a store request and hand its answer back, pass a player to the world,
//! close. Everything else lives here, the same for every runtime: frame reassembly, message
//! decoding, the service's rules ([`LoginSession`], [`WorldSession`]), the first-frame, idle and
//! enter deadlines, and the close flush deadline. Like quinn-proto's `Connection`, it tells the
//! driver when it next needs the time ([`Connection::poll_timeout`]) and acts when told the time
//! has come ([`Connection::handle_timeout`]).
//!
//! One request at a time: while a store request is out, no further frame is processed (the
//! driver should stop reading, [`Connection::wants_input`]); answers therefore go out in request
//! order, as pipelining clients expect.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::model::{AccountId, Position};
use crate::protocol::pb::{self, DisconnectReason, Result as Code};
use crate::protocol::{ClientMessage, FrameDecoder, ProtocolError, ServerMessage, Service};
use crate::world::{ConnId, PlayerInfo};

use super::login::login_failed;
use super::{disconnect, LoginSession, LoginStep, RateConfig, WorldSession, WorldStep};

/// The timing and size limits of one connection (from `[server]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnPolicy {
    /// Largest client frame, header included.
    pub max_client_frame: usize,
    /// Absolute deadline, from accept, for the first complete frame.
    pub first_frame_timeout: Duration,
    /// Longest time without a complete frame once the first has come.
    pub idle_timeout: Duration,
    /// World service: absolute deadline, from accept, for a successful `C_ENTER`.
    pub enter_timeout: Duration,
    /// How long a closing connection may take to write its last frames.
    pub close_flush_timeout: Duration,
}

/// The two clocks a connection reads: monotonic for deadlines, wall for `S_PONG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub mono: Instant,
    /// Microseconds since the Unix epoch.
    pub wall_micros: u64,
}

impl Now {
    /// The current time on both clocks.
    pub fn current() -> Self {
        Self {
            mono: Instant::now(),
            wall_micros: crate::protocol::unix_micros(std::time::SystemTime::now()),
        }
    }
}

/// A store request the driver runs (on the DB pool) before calling [`Connection::complete`].
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Create an account; answer with [`RegisterAnswer`].
    Register {
        /// The username, as given.
        username: String,
        /// The password, to be hashed and dropped.
        password: String,
    },
    /// Check a password and issue a token; answer with [`LoginAnswer`].
    Login {
        /// The username, as given.
        username: String,
        /// The password, to be checked and dropped.
        password: String,
    },
    /// Redeem an enter token and load its player; answer with [`EnterAnswer`].
    Redeem {
        /// The token, never logged.
        token: String,
    },
}

/// The outcome of [`Request::Register`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterAnswer {
    /// The account was created.
    Created(AccountId),
    /// The name is taken (ignoring case).
    Exists,
    /// Too many registrations from this address.
    RateLimited,
    /// The store could not serve; nothing happened.
    Busy,
    /// A bug or corrupt data.
    Internal,
}

/// The outcome of [`Request::Login`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginAnswer {
    /// Good credentials: a token.
    Ok {
        /// The one-time enter token.
        token: String,
        /// The account.
        account_id: AccountId,
        /// The token's lifetime.
        expires_in_secs: u32,
    },
    /// Wrong password or unknown name.
    InvalidCredentials,
    /// Throttled; the password was not checked.
    RateLimited,
    /// The store could not serve; nothing happened.
    Busy,
    /// A bug or corrupt data.
    Internal,
}

/// The outcome of [`Request::Redeem`].
#[derive(Debug, Clone, PartialEq)]
pub enum EnterAnswer {
    /// The token was good: this player enters.
    Entered(PlayerInfo),
    /// Unknown, expired or used token.
    InvalidToken,
    /// The store could not serve; the token was not consumed.
    Busy,
    /// A bug or corrupt data.
    Internal,
}

/// An answer to the request the connection is waiting on.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// For [`Request::Register`].
    Register(RegisterAnswer),
    /// For [`Request::Login`].
    Login(LoginAnswer),
    /// For [`Request::Redeem`].
    Enter(EnterAnswer),
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Send this message.
    Send(ServerMessage),
    /// Run this request and hand its answer to [`Connection::complete`].
    Request(Request),
    /// The session is admitted: put this player into the world.
    Enter(PlayerInfo),
    /// A validated chat line from the player.
    Chat(String),
    /// A validated move of the player.
    Move(Position),
    /// Send `last` (if any) after what is queued, then close; stop reading. The driver keeps
    /// writing until the flush deadline ([`Connection::poll_timeout`]) at the latest.
    Close {
        /// The last message (an `S_DISCONNECT`, an `S_ENTER{INVALID_TOKEN}`), if any.
        last: Option<ServerMessage>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Taking frames.
    Reading,
    /// A request is out; frames wait in the decoder.
    Waiting,
    /// Writing the last frames, at most until this instant.
    Closing(Instant),
    /// Done: the driver drops the socket.
    Closed,
}

#[derive(Debug)]
enum Session {
    Login(LoginSession),
    World(WorldSession),
}

/// One connection's state. See the module documentation.
#[derive(Debug)]
pub struct Connection {
    shard: usize,
    id: ConnId,
    peer: Option<SocketAddr>,
    policy: ConnPolicy,
    decoder: FrameDecoder,
    session: Session,
    /// First-frame deadline, then idle deadline: moved only by complete frames.
    deadline: Instant,
    /// World: entered by then or closed (`None` once entered, and on the login service).
    enter_deadline: Option<Instant>,
    phase: Phase,
    events: VecDeque<Event>,
}

impl Connection {
    /// A connection accepted at `accepted_at` (before any TLS handshake), served by shard
    /// `shard` as `id` (both for logs only).
    pub fn new(
        service: Service,
        policy: ConnPolicy,
        rates: &RateConfig,
        accepted_at: Instant,
        (shard, id, peer): (usize, ConnId, Option<SocketAddr>),
    ) -> Self {
        let (session, enter_deadline) = match service {
            Service::Login => (Session::Login(LoginSession), None),
            Service::World => (
                Session::World(WorldSession::new(rates, accepted_at)),
                Some(accepted_at + policy.enter_timeout),
            ),
        };
        Self {
            shard,
            id,
            peer,
            policy,
            decoder: FrameDecoder::new(policy.max_client_frame),
            session,
            deadline: accepted_at + policy.first_frame_timeout,
            enter_deadline,
            phase: Phase::Reading,
            events: VecDeque::new(),
        }
    }

    /// True while the connection takes input: not while a request is out or once closing.
    pub fn wants_input(&self) -> bool {
        self.phase == Phase::Reading
    }

    /// True once the connection is done and its socket can be dropped.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True once closing began (a last message may still be on its way out).
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing(_) | Phase::Closed)
    }

    /// Bytes read from the socket. Processes every complete frame it can.
    pub fn handle_input(&mut self, bytes: &[u8], now: Now) {
        if self.is_closing() {
            return;
        }
        self.decoder.extend(bytes);
        self.process(now);
    }

    /// The peer closed its side (or the read failed): nothing more to send.
    pub fn handle_eof(&mut self) {
        self.phase = Phase::Closed;
    }

    /// The answer to the request the connection was waiting on; frames that arrived meanwhile
    /// are processed next.
    pub fn complete(&mut self, answer: Answer, now: Now) {
        if self.phase != Phase::Waiting {
            return;
        }
        self.phase = Phase::Reading;
        match answer {
            Answer::Register(a) => self.events.push_back(Event::Send(register_reply(a))),
            Answer::Login(a) => self.events.push_back(Event::Send(login_reply(a))),
            Answer::Enter(a) => self.entered(a, now),
        }
        self.process(now);
    }

    /// The server closes the connection on its own (a kick, a slow consumer, shutdown): no
    /// more input; what is queued is written until the flush deadline.
    pub fn close_by_server(&mut self, now: Now) {
        if !self.is_closing() {
            self.phase = Phase::Closing(now.mono + self.policy.close_flush_timeout);
        }
    }

    /// The queued frames are written (the writer finished): the connection is done.
    pub fn handle_flushed(&mut self) {
        if self.is_closing() {
            self.phase = Phase::Closed;
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the connection next needs [`Connection::handle_timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Reading => Some(match self.enter_deadline {
                Some(enter) => enter.min(self.deadline),
                None => self.deadline,
            }),
            // A request is bounded by the store's own timeouts; the client is not idle then.
            Phase::Waiting | Phase::Closed => None,
            Phase::Closing(until) => Some(until),
        }
    }

    /// The time has come for a deadline: the first frame, idleness, entering, or the flush.
    pub fn handle_timeout(&mut self, now: Now) {
        match self.phase {
            Phase::Reading => {
                if self.enter_deadline.is_some_and(|t| now.mono >= t) {
                    tracing::debug!(shard = self.shard, conn = self.id, peer = ?self.peer, "no C_ENTER in time");
                    self.close(
                        now,
                        Some(disconnect(
                            DisconnectReason::NotAuthenticated,
                            "no C_ENTER in time",
                        )),
                    );
                } else if now.mono >= self.deadline {
                    tracing::debug!(shard = self.shard, conn = self.id, peer = ?self.peer, "idle timeout");
                    self.close(
                        now,
                        Some(disconnect(
                            DisconnectReason::IdleTimeout,
                            "no frame in time",
                        )),
                    );
                }
            }
            Phase::Closing(until) if now.mono >= until => {
                tracing::debug!(
                    shard = self.shard,
                    conn = self.id,
                    "last frames not flushed in time"
                );
                self.phase = Phase::Closed;
            }
            _ => {}
        }
    }

    fn close(&mut self, now: Now, last: Option<ServerMessage>) {
        self.events.push_back(Event::Close { last });
        self.phase = Phase::Closing(now.mono + self.policy.close_flush_timeout);
    }

    fn process(&mut self, now: Now) {
        while self.phase == Phase::Reading {
            let frame = match self.decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => return self.protocol_error(now, &e),
            };
            self.deadline = now.mono + self.policy.idle_timeout;
            let service = match self.session {
                Session::Login(_) => Service::Login,
                Session::World(_) => Service::World,
            };
            match ClientMessage::decode(&frame, service) {
                Ok(msg) => self.on_message(msg, now),
                Err(e) => self.protocol_error(now, &e),
            }
        }
    }

    fn on_message(&mut self, msg: ClientMessage, now: Now) {
        match &mut self.session {
            Session::Login(session) => match session.on_message(msg, now.wall_micros) {
                LoginStep::Reply(reply) => self.events.push_back(Event::Send(reply)),
                LoginStep::Register { username, password } => {
                    self.request(Request::Register { username, password })
                }
                LoginStep::Login { username, password } => {
                    self.request(Request::Login { username, password })
                }
            },
            Session::World(session) => match session.on_message(msg, now.mono, now.wall_micros) {
                WorldStep::Reply(reply) => self.events.push_back(Event::Send(reply)),
                WorldStep::Redeem { token } => self.request(Request::Redeem { token }),
                WorldStep::RejectToken => self.close(now, Some(enter_result(Code::InvalidToken))),
                WorldStep::Chat(text) => self.events.push_back(Event::Chat(text)),
                WorldStep::Move(position) => self.events.push_back(Event::Move(position)),
                WorldStep::ProtocolError(e) => self.protocol_error(now, &e),
                WorldStep::Disconnect(reason) => {
                    tracing::info!(shard = self.shard, conn = self.id, ?reason, "disconnecting");
                    self.close(now, Some(disconnect(reason, "too many requests")));
                }
            },
        }
    }

    fn request(&mut self, request: Request) {
        self.events.push_back(Event::Request(request));
        self.phase = Phase::Waiting;
    }

    fn entered(&mut self, answer: EnterAnswer, now: Now) {
        let Session::World(session) = &mut self.session else {
            return;
        };
        let code = match answer {
            EnterAnswer::Entered(player) => {
                session.entered();
                self.enter_deadline = None;
                tracing::debug!(
                    shard = self.shard,
                    conn = self.id,
                    account_id = player.id,
                    "entered"
                );
                self.events.push_back(Event::Enter(player));
                return;
            }
            EnterAnswer::InvalidToken => {
                return self.close(now, Some(enter_result(Code::InvalidToken)));
            }
            EnterAnswer::Busy => Code::ServerBusy,
            EnterAnswer::Internal => Code::InternalError,
        };
        session.enter_failed();
        self.events.push_back(Event::Send(enter_result(code)));
    }

    fn protocol_error(&mut self, now: Now, e: &ProtocolError) {
        tracing::debug!(shard = self.shard, conn = self.id, peer = ?self.peer, error = %e, "protocol error; closing");
        self.close(now, Some(disconnect(e.disconnect_reason(), e.to_string())));
    }
}

fn enter_result(code: Code) -> ServerMessage {
    ServerMessage::Enter(pb::SEnter {
        result: code as i32,
        player: None,
    })
}

fn register_reply(answer: RegisterAnswer) -> ServerMessage {
    let (code, account_id) = match answer {
        RegisterAnswer::Created(id) => (Code::Ok, id),
        RegisterAnswer::Exists => (Code::AccountExists, 0),
        RegisterAnswer::RateLimited => (Code::RateLimited, 0),
        RegisterAnswer::Busy => (Code::ServerBusy, 0),
        RegisterAnswer::Internal => (Code::InternalError, 0),
    };
    ServerMessage::Register(pb::SRegister {
        result: code as i32,
        account_id,
    })
}

fn login_reply(answer: LoginAnswer) -> ServerMessage {
    match answer {
        LoginAnswer::Ok {
            token,
            account_id,
            expires_in_secs,
        } => ServerMessage::Login(pb::SLogin {
            result: Code::Ok as i32,
            token,
            account_id,
            expires_in_secs,
        }),
        LoginAnswer::InvalidCredentials => login_failed(Code::InvalidCredentials),
        LoginAnswer::RateLimited => login_failed(Code::RateLimited),
        LoginAnswer::Busy => login_failed(Code::ServerBusy),
        LoginAnswer::Internal => login_failed(Code::InternalError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode_frame, Body};
    use bytes::BytesMut;

    const POLICY: ConnPolicy = ConnPolicy {
        max_client_frame: 4096,
        first_frame_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        enter_timeout: Duration::from_secs(20),
        close_flush_timeout: Duration::from_secs(2),
    };

    fn at(start: Instant, secs: u64) -> Now {
        Now {
            mono: start + Duration::from_secs(secs),
            wall_micros: 1_000_000 * secs,
        }
    }

    fn conn(service: Service, start: Instant) -> Connection {
        Connection::new(service, POLICY, &RateConfig::default(), start, (0, 1, None))
    }

    fn frame<M: Body>(msg: &M) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_frame(msg, &mut out).unwrap();
        out.to_vec()
    }

    fn events(c: &mut Connection) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    fn disconnect_reason(e: &Event) -> Option<DisconnectReason> {
        match e {
            Event::Close {
                last: Some(ServerMessage::Disconnect(d)),
            } => DisconnectReason::try_from(d.reason).ok(),
            _ => None,
        }
    }

    #[test]
    fn no_first_frame_by_its_deadline_is_an_idle_timeout() {
        let start = Instant::now();
        let mut c = conn(Service::Login, start);
        assert_eq!(c.poll_timeout(), Some(start + POLICY.first_frame_timeout));
        c.handle_timeout(at(start, 9));
        assert!(events(&mut c).is_empty());
        c.handle_timeout(at(start, 10));
        let ev = events(&mut c);
        assert_eq!(
            disconnect_reason(&ev[0]),
            Some(DisconnectReason::IdleTimeout)
        );
        assert!(!c.wants_input());
    }

    #[test]
    fn trickled_bytes_do_not_move_the_deadline_but_a_complete_frame_does() {
        let start = Instant::now();
        let mut c = conn(Service::Login, start);
        let ping = frame(&pb::CPing { client_time: 5 });
        for (i, byte) in ping[..ping.len() - 1].iter().enumerate() {
            c.handle_input(&[*byte], at(start, i as u64));
        }
        assert_eq!(c.poll_timeout(), Some(start + POLICY.first_frame_timeout));
        c.handle_input(&ping[ping.len() - 1..], at(start, 5));
        assert!(matches!(
            events(&mut c)[..],
            [Event::Send(ServerMessage::Pong(_))]
        ));
        assert_eq!(
            c.poll_timeout(),
            Some(start + Duration::from_secs(5) + POLICY.idle_timeout)
        );
    }

    #[test]
    fn pings_do_not_keep_an_unentered_world_connection_past_the_enter_deadline() {
        let start = Instant::now();
        let mut c = conn(Service::World, start);
        for s in (0..20).step_by(5) {
            c.handle_input(&frame(&pb::CPing { client_time: s }), at(start, s));
        }
        assert_eq!(c.poll_timeout(), Some(start + POLICY.enter_timeout));
        c.handle_timeout(at(start, 20));
        let ev = events(&mut c);
        assert_eq!(
            disconnect_reason(ev.last().unwrap()),
            Some(DisconnectReason::NotAuthenticated)
        );
    }

    #[test]
    fn an_entered_player_has_no_enter_deadline() {
        let start = Instant::now();
        let mut c = conn(Service::World, start);
        c.handle_input(&frame(&pb::CEnter { token: "t".into() }), at(start, 1));
        assert_eq!(
            events(&mut c),
            vec![Event::Request(Request::Redeem { token: "t".into() })]
        );
        assert_eq!(
            c.poll_timeout(),
            None,
            "no deadline while the request is out"
        );
        let player = PlayerInfo {
            id: 7,
            name: "p".into(),
            position: Position::default(),
        };
        c.complete(
            Answer::Enter(EnterAnswer::Entered(player.clone())),
            at(start, 2),
        );
        assert_eq!(events(&mut c), vec![Event::Enter(player)]);
        assert_eq!(
            c.poll_timeout(),
            Some(start + Duration::from_secs(1) + POLICY.idle_timeout)
        );
    }

    #[test]
    fn frames_after_a_request_wait_for_its_answer_and_answers_keep_request_order() {
        let start = Instant::now();
        let mut c = conn(Service::Login, start);
        let mut bytes = frame(&pb::CRegister {
            username: "alice".into(),
            password: "password1".into(),
        });
        bytes.extend(frame(&pb::CPing { client_time: 9 }));
        c.handle_input(&bytes, at(start, 1));
        assert!(matches!(
            events(&mut c)[..],
            [Event::Request(Request::Register { .. })]
        ));
        assert!(!c.wants_input());
        c.complete(Answer::Register(RegisterAnswer::Created(3)), at(start, 2));
        let ev = events(&mut c);
        assert!(matches!(&ev[0], Event::Send(ServerMessage::Register(r)) if r.account_id == 3));
        assert!(matches!(&ev[1], Event::Send(ServerMessage::Pong(p)) if p.client_time == 9));
        assert!(c.wants_input());
    }

    #[test]
    fn busy_enter_keeps_the_connection_and_allows_another_enter() {
        let start = Instant::now();
        let mut c = conn(Service::World, start);
        c.handle_input(&frame(&pb::CEnter { token: "t".into() }), at(start, 1));
        events(&mut c);
        c.complete(Answer::Enter(EnterAnswer::Busy), at(start, 2));
        let ev = events(&mut c);
        assert!(
            matches!(&ev[..], [Event::Send(ServerMessage::Enter(e))] if e.result == Code::ServerBusy as i32)
        );
        c.handle_input(&frame(&pb::CEnter { token: "t".into() }), at(start, 3));
        assert!(matches!(
            events(&mut c)[..],
            [Event::Request(Request::Redeem { .. })]
        ));
    }

    #[test]
    fn a_bad_token_closes_with_invalid_token() {
        let start = Instant::now();
        let mut c = conn(Service::World, start);
        c.handle_input(&frame(&pb::CEnter { token: "t".into() }), at(start, 1));
        events(&mut c);
        c.complete(Answer::Enter(EnterAnswer::InvalidToken), at(start, 2));
        let ev = events(&mut c);
        assert!(matches!(
            &ev[..],
            [Event::Close { last: Some(ServerMessage::Enter(e)) }] if e.result == Code::InvalidToken as i32
        ));
        assert!(c.is_closing());
    }

    #[test]
    fn a_protocol_error_closes_and_nothing_after_it_is_processed() {
        let start = Instant::now();
        let mut c = conn(Service::Login, start);
        let mut bytes = vec![0x02, 0x00]; // size 2: below the header
        bytes.extend(frame(&pb::CPing { client_time: 1 }));
        c.handle_input(&bytes, at(start, 1));
        let ev = events(&mut c);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            disconnect_reason(&ev[0]),
            Some(DisconnectReason::ProtocolError)
        );
        c.handle_input(&frame(&pb::CPing { client_time: 2 }), at(start, 2));
        assert!(events(&mut c).is_empty());
    }

    #[test]
    fn a_closing_connection_is_done_at_its_flush_deadline_or_once_flushed() {
        let start = Instant::now();
        let mut c = conn(Service::Login, start);
        c.close_by_server(at(start, 1));
        assert_eq!(
            c.poll_timeout(),
            Some(start + Duration::from_secs(1) + POLICY.close_flush_timeout)
        );
        c.handle_timeout(at(start, 3));
        assert!(c.is_closed());

        let mut c = conn(Service::Login, start);
        c.close_by_server(at(start, 1));
        c.handle_flushed();
        assert!(c.is_closed());
    }

    #[test]
    fn chat_and_moves_become_world_events_once_entered() {
        let start = Instant::now();
        let mut c = conn(Service::World, start);
        c.handle_input(&frame(&pb::CEnter { token: "t".into() }), at(start, 1));
        events(&mut c);
        c.complete(
            Answer::Enter(EnterAnswer::Entered(PlayerInfo {
                id: 1,
                name: "p".into(),
                position: Position::default(),
            })),
            at(start, 1),
        );
        events(&mut c);
        let mut bytes = frame(&pb::CChat { text: "hi".into() });
        bytes.extend(frame(&pb::CMove {
            x: 1.0,
            y: 2.0,
            z: 3.0,
        }));
        c.handle_input(&bytes, at(start, 2));
        assert_eq!(
            events(&mut c),
            vec![
                Event::Chat("hi".into()),
                Event::Move(Position {
                    x: 1.0,
                    y: 2.0,
                    z: 3.0
                })
            ]
        );
    }
}
