//! The login service's session: input validation and what each request becomes.

use crate::protocol::pb;
use crate::protocol::{ClientMessage, ServerMessage};

/// Checks a username: 3 to 32 characters from `A-Z a-z 0-9 _`.
pub fn validate_username(name: &str) -> bool {
    (3..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks a password: 8 to 128 bytes.
pub fn validate_password(password: &str) -> bool {
    (8..=128).contains(&password.len())
}

/// What the login driver does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum LoginStep {
    /// Send this at once.
    Reply(ServerMessage),
    /// Create an account (inputs valid); answer `S_REGISTER` with what the store says.
    Register {
        /// The username, as given.
        username: String,
        /// The password, to be hashed on the DB pool and then dropped.
        password: String,
    },
    /// Check a password and issue a token (inputs well formed); answer `S_LOGIN`.
    Login {
        /// The username, as given.
        username: String,
        /// The password, to be checked on the DB pool and then dropped.
        password: String,
    },
}

/// The login session: stateless beyond the connection, as PROTOCOL.md asks.
#[derive(Debug, Default)]
pub struct LoginSession;

impl LoginSession {
    /// The step for one decoded message (the decoder has already refused world messages).
    pub fn on_message(&mut self, msg: ClientMessage, wall_micros: u64) -> LoginStep {
        match msg {
            ClientMessage::Register(req) => {
                if validate_username(&req.username) && validate_password(&req.password) {
                    LoginStep::Register {
                        username: req.username,
                        password: req.password,
                    }
                } else {
                    LoginStep::Reply(ServerMessage::Register(pb::SRegister {
                        result: pb::Result::InvalidInput as i32,
                        account_id: 0,
                    }))
                }
            }
            ClientMessage::Login(req) => {
                if validate_username(&req.username) && validate_password(&req.password) {
                    LoginStep::Login {
                        username: req.username,
                        password: req.password,
                    }
                } else {
                    // No account can have this name or password: the same answer as a wrong one.
                    LoginStep::Reply(login_failed(pb::Result::InvalidCredentials))
                }
            }
            ClientMessage::Ping(ping) => LoginStep::Reply(super::pong(&ping, wall_micros)),
            ClientMessage::Echo(req) => LoginStep::Reply(super::echo(req)),
            // The decoder refuses these on the login service; answer them as a wrong service would.
            ClientMessage::Enter(_) | ClientMessage::Chat(_) | ClientMessage::Move(_) => {
                LoginStep::Reply(super::error_reply(pb::Result::InvalidInput, msg.id()))
            }
        }
    }
}

/// `S_LOGIN` carrying a failure.
pub fn login_failed(result: pb::Result) -> ServerMessage {
    ServerMessage::Login(pb::SLogin {
        result: result as i32,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(validate_username("abc"));
        assert!(validate_username("Player_01"));
        assert!(validate_username(&"a".repeat(32)));
        assert!(!validate_username("ab"));
        assert!(!validate_username(&"a".repeat(33)));
        assert!(!validate_username("bad name"));
        assert!(!validate_username("héllo"));
        assert!(!validate_username("semi;colon"));
    }

    #[test]
    fn passwords() {
        assert!(validate_password("12345678"));
        assert!(validate_password(&"p".repeat(128)));
        assert!(!validate_password("1234567"));
        assert!(!validate_password(&"p".repeat(129)));
    }

    #[test]
    fn invalid_register_answers_invalid_input_without_the_store() {
        let step = LoginSession.on_message(
            ClientMessage::Register(pb::CRegister {
                username: "x".into(),
                password: "long enough".into(),
            }),
            0,
        );
        assert_eq!(
            step,
            LoginStep::Reply(ServerMessage::Register(pb::SRegister {
                result: pb::Result::InvalidInput as i32,
                account_id: 0
            }))
        );
    }

    #[test]
    fn malformed_login_answers_invalid_credentials() {
        let step = LoginSession.on_message(
            ClientMessage::Login(pb::CLogin {
                username: "no spaces allowed".into(),
                password: "long enough".into(),
            }),
            0,
        );
        assert_eq!(
            step,
            LoginStep::Reply(login_failed(pb::Result::InvalidCredentials))
        );
    }

    #[test]
    fn valid_requests_go_to_the_store() {
        let step = LoginSession.on_message(
            ClientMessage::Login(pb::CLogin {
                username: "alice".into(),
                password: "correct horse".into(),
            }),
            0,
        );
        assert!(matches!(step, LoginStep::Login { .. }));
    }

    #[test]
    fn ping_is_answered_with_both_times() {
        let step = LoginSession.on_message(ClientMessage::Ping(pb::CPing { client_time: 42 }), 99);
        assert_eq!(
            step,
            LoginStep::Reply(ServerMessage::Pong(pb::SPong {
                client_time: 42,
                server_time: 99
            }))
        );
    }
}
