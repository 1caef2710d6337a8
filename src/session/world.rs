//! The world service's session: the enter handshake, input validation and rate limits.

use std::time::Instant;

use crate::model::Position;
use crate::protocol::pb::{self, DisconnectReason};
use crate::protocol::{ClientMessage, MessageId, ProtocolError, ServerMessage};

use super::{RateConfig, TokenBucket};

/// The longest `C_CHAT` text, in bytes.
pub const MAX_CHAT_BYTES: usize = 256;
/// The longest token the server ever issues; a longer one cannot be valid.
pub const MAX_TOKEN_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingEnter,
    Entering,
    InWorld,
}

/// What the world driver does with one message.
#[derive(Debug, Clone, PartialEq)]
pub enum WorldStep {
    /// Send this at once.
    Reply(ServerMessage),
    /// Redeem this token on the DB pool, then call [`WorldSession::entered`] or answer
    /// `S_ENTER{INVALID_TOKEN}` and close.
    Redeem {
        /// The token, never logged.
        token: String,
    },
    /// Answer `S_ENTER{INVALID_TOKEN}` and close, without asking the store.
    RejectToken,
    /// Pass a validated chat line to the world.
    Chat(String),
    /// Pass a validated move to the world.
    Move(Position),
    /// A protocol error: send `S_DISCONNECT` with its reason and close.
    ProtocolError(ProtocolError),
    /// Send `S_DISCONNECT` with this reason and close.
    Disconnect(DisconnectReason),
}

/// One world connection's state.
#[derive(Debug)]
pub struct WorldSession {
    state: State,
    chat: TokenBucket,
    moves: TokenBucket,
    violations: TokenBucket,
}

impl WorldSession {
    /// A new connection, waiting for `C_ENTER`.
    pub fn new(rates: &RateConfig, now: Instant) -> Self {
        Self {
            state: State::AwaitingEnter,
            chat: TokenBucket::new(rates.chat_per_sec, rates.chat_burst, now),
            moves: TokenBucket::new(rates.move_per_sec, rates.move_burst, now),
            violations: TokenBucket::new(1.0, rates.max_violations, now),
        }
    }

    /// True once the session is in the world.
    pub fn in_world(&self) -> bool {
        self.state == State::InWorld
    }

    /// The token was good: the session is in the world from now on.
    pub fn entered(&mut self) {
        self.state = State::InWorld;
    }

    /// The token could not be checked (store busy): the session may send `C_ENTER` again.
    pub fn enter_failed(&mut self) {
        if self.state == State::Entering {
            self.state = State::AwaitingEnter;
        }
    }

    /// The step for one decoded message.
    pub fn on_message(&mut self, msg: ClientMessage, now: Instant, wall_micros: u64) -> WorldStep {
        match msg {
            ClientMessage::Ping(ping) => WorldStep::Reply(super::pong(&ping, wall_micros)),
            ClientMessage::Echo(req) => WorldStep::Reply(super::echo(req)),
            ClientMessage::Enter(req) => {
                if self.state != State::AwaitingEnter {
                    return WorldStep::ProtocolError(ProtocolError::AlreadyEntered);
                }
                self.state = State::Entering;
                if req.token.is_empty() || req.token.len() > MAX_TOKEN_LEN {
                    WorldStep::RejectToken
                } else {
                    WorldStep::Redeem { token: req.token }
                }
            }
            ClientMessage::Chat(_) | ClientMessage::Move(_) if self.state != State::InWorld => {
                WorldStep::ProtocolError(ProtocolError::NotEntered {
                    id: msg.id() as u16,
                })
            }
            ClientMessage::Chat(req) => {
                if req.text.is_empty() || req.text.len() > MAX_CHAT_BYTES {
                    return invalid(MessageId::CChat);
                }
                if !self.chat.try_take(now) {
                    return self.refuse(MessageId::CChat, now);
                }
                WorldStep::Chat(req.text)
            }
            ClientMessage::Move(req) => {
                let position = Position {
                    x: req.x,
                    y: req.y,
                    z: req.z,
                };
                if !position.is_finite() {
                    return invalid(MessageId::CMove);
                }
                if !self.moves.try_take(now) {
                    return self.refuse(MessageId::CMove, now);
                }
                WorldStep::Move(position)
            }
            ClientMessage::Register(_) | ClientMessage::Login(_) => {
                WorldStep::ProtocolError(ProtocolError::WrongService {
                    id: msg.id() as u16,
                    service: crate::protocol::Service::World,
                })
            }
        }
    }

    fn refuse(&mut self, id: MessageId, now: Instant) -> WorldStep {
        if self.violations.try_take(now) {
            WorldStep::Reply(super::error_reply(pb::Result::RateLimited, id))
        } else {
            WorldStep::Disconnect(DisconnectReason::RateLimited)
        }
    }
}

fn invalid(id: MessageId) -> WorldStep {
    WorldStep::Reply(super::error_reply(pb::Result::InvalidInput, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn chat(text: &str) -> ClientMessage {
        ClientMessage::Chat(pb::CChat { text: text.into() })
    }

    fn entered(now: Instant, rates: &RateConfig) -> WorldSession {
        let mut s = WorldSession::new(rates, now);
        let step = s.on_message(
            ClientMessage::Enter(pb::CEnter {
                token: "abc".into(),
            }),
            now,
            0,
        );
        assert_eq!(
            step,
            WorldStep::Redeem {
                token: "abc".into()
            }
        );
        s.entered();
        s
    }

    #[test]
    fn chat_before_enter_is_not_authenticated() {
        let now = Instant::now();
        let mut s = WorldSession::new(&RateConfig::default(), now);
        let step = s.on_message(chat("hi"), now, 0);
        let WorldStep::ProtocolError(e) = step else {
            panic!("{step:?}")
        };
        assert_eq!(e.disconnect_reason(), DisconnectReason::NotAuthenticated);
    }

    #[test]
    fn move_while_token_is_checked_is_not_authenticated() {
        let now = Instant::now();
        let mut s = WorldSession::new(&RateConfig::default(), now);
        s.on_message(
            ClientMessage::Enter(pb::CEnter { token: "t".into() }),
            now,
            0,
        );
        let step = s.on_message(ClientMessage::Move(pb::CMove::default()), now, 0);
        assert_eq!(
            step,
            WorldStep::ProtocolError(ProtocolError::NotEntered { id: 30 })
        );
    }

    #[test]
    fn second_enter_is_a_protocol_error() {
        let now = Instant::now();
        let mut s = entered(now, &RateConfig::default());
        let step = s.on_message(
            ClientMessage::Enter(pb::CEnter { token: "t".into() }),
            now,
            0,
        );
        assert_eq!(
            step,
            WorldStep::ProtocolError(ProtocolError::AlreadyEntered)
        );
    }

    #[test]
    fn empty_or_oversized_token_is_rejected_without_the_store() {
        let now = Instant::now();
        for token in [String::new(), "t".repeat(65)] {
            let mut s = WorldSession::new(&RateConfig::default(), now);
            let step = s.on_message(ClientMessage::Enter(pb::CEnter { token }), now, 0);
            assert_eq!(step, WorldStep::RejectToken);
        }
    }

    #[test]
    fn ping_and_echo_work_before_enter() {
        let now = Instant::now();
        let mut s = WorldSession::new(&RateConfig::default(), now);
        assert!(matches!(
            s.on_message(ClientMessage::Ping(pb::CPing { client_time: 1 }), now, 5),
            WorldStep::Reply(ServerMessage::Pong(_))
        ));
        assert!(matches!(
            s.on_message(ClientMessage::Echo(pb::CEcho::default()), now, 5),
            WorldStep::Reply(ServerMessage::Echo(_))
        ));
    }

    #[test]
    fn chat_text_bounds() {
        let now = Instant::now();
        let mut s = entered(now, &RateConfig::default());
        let bad = WorldStep::Reply(super::super::error_reply(
            pb::Result::InvalidInput,
            MessageId::CChat,
        ));
        assert_eq!(s.on_message(chat(""), now, 0), bad);
        assert_eq!(s.on_message(chat(&"x".repeat(257)), now, 0), bad);
        assert_eq!(
            s.on_message(chat(&"x".repeat(256)), now, 0),
            WorldStep::Chat("x".repeat(256))
        );
    }

    #[test]
    fn non_finite_move_is_invalid_input() {
        let now = Instant::now();
        let mut s = entered(now, &RateConfig::default());
        for (x, y, z) in [
            (f32::NAN, 0.0, 0.0),
            (0.0, f32::INFINITY, 0.0),
            (0.0, 0.0, f32::NEG_INFINITY),
        ] {
            let step = s.on_message(ClientMessage::Move(pb::CMove { x, y, z }), now, 0);
            assert_eq!(
                step,
                WorldStep::Reply(super::super::error_reply(
                    pb::Result::InvalidInput,
                    MessageId::CMove
                ))
            );
        }
    }

    #[test]
    fn over_the_rate_answers_rate_limited_then_disconnects() {
        let now = Instant::now();
        let rates = RateConfig {
            chat_per_sec: 1.0,
            chat_burst: 2,
            max_violations: 3,
            ..RateConfig::default()
        };
        let mut s = entered(now, &rates);
        assert!(matches!(
            s.on_message(chat("a"), now, 0),
            WorldStep::Chat(_)
        ));
        assert!(matches!(
            s.on_message(chat("b"), now, 0),
            WorldStep::Chat(_)
        ));
        let limited = WorldStep::Reply(super::super::error_reply(
            pb::Result::RateLimited,
            MessageId::CChat,
        ));
        for _ in 0..3 {
            assert_eq!(s.on_message(chat("c"), now, 0), limited);
        }
        assert_eq!(
            s.on_message(chat("d"), now, 0),
            WorldStep::Disconnect(DisconnectReason::RateLimited)
        );
        // a client that slows down is served again
        let mut s = entered(now, &rates);
        for i in 0..20u64 {
            let t = now + Duration::from_secs(i);
            assert!(matches!(s.on_message(chat("ok"), t, 0), WorldStep::Chat(_)));
        }
    }
}
