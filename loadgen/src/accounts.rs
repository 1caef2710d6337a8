//! Accounts for a run: registered on first use (concurrently, over many login connections) and
//! reused on later runs (`ACCOUNT_EXISTS`, then log in), then entered into the world.

use std::net::SocketAddr;
use std::time::Duration;

use gameserver::protocol::{pb, ServerMessage};

use crate::conn::{Connector, FrameConn};
use crate::error::LoadgenError;

/// How long one request may wait for its answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);
/// Tries of a request the server answered `SERVER_BUSY` or `RATE_LIMITED` before giving up.
const RETRIES: u32 = 60;

/// Where the services are and which accounts a run uses.
#[derive(Debug, Clone)]
pub struct Accounts {
    /// The login service.
    pub login: SocketAddr,
    /// The world service.
    pub world: SocketAddr,
    /// Usernames are this prefix followed by the account's index.
    pub prefix: String,
    /// Every account's password.
    pub password: String,
}

/// A player in the world: its id and its world connection.
#[derive(Debug)]
pub struct Entered {
    /// The account (and player) id.
    pub id: u64,
    /// The world connection, after `S_ENTER{OK}`.
    pub conn: FrameConn,
}

/// What a retried request does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Done: the answer is final.
    Done,
    /// Try again after this long.
    After(Duration),
}

/// The wait before try `attempt` (1-based) of a request the server was too busy for: growing
/// linearly to a cap, so a burst of provisioning backs off without stalling for long.
pub fn backoff(attempt: u32) -> Retry {
    if attempt >= RETRIES {
        Retry::Done
    } else {
        Retry::After(Duration::from_millis(u64::from(attempt.min(20)) * 25))
    }
}

fn is_transient(result: i32) -> bool {
    result == pb::Result::ServerBusy as i32 || result == pb::Result::RateLimited as i32
}

fn result_name(result: i32) -> String {
    pb::Result::try_from(result)
        .map(|r| r.as_str_name().trim_start_matches("RESULT_").to_lowercase())
        .unwrap_or_else(|_| format!("result {result}"))
}

impl Accounts {
    /// The username of account `index`; fails when the prefix makes it an invalid name.
    pub fn username(&self, index: usize) -> Result<String, LoadgenError> {
        let name = format!("{}{index}", self.prefix);
        if gameserver::session::validate_username(&name) {
            Ok(name)
        } else {
            Err(LoadgenError::Args(format!(
                "username {name:?} is not valid (3 to 32 of A-Z a-z 0-9 _): pick another --prefix"
            )))
        }
    }

    /// Registers `user` unless it exists; either way it can log in afterwards.
    pub async fn register(&self, login: &mut FrameConn, user: &str) -> Result<(), LoadgenError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            login
                .send(&pb::CRegister {
                    username: user.into(),
                    password: self.password.clone(),
                })
                .await?;
            let result = match login.recv_msg_within(ANSWER_WAIT, "S_REGISTER").await? {
                ServerMessage::Register(r) => r.result,
                other => return Err(unexpected("S_REGISTER", &other)),
            };
            if result == pb::Result::Ok as i32 || result == pb::Result::AccountExists as i32 {
                return Ok(());
            }
            match (is_transient(result), backoff(attempt)) {
                (true, Retry::After(wait)) => tokio::time::sleep(wait).await,
                _ => {
                    return Err(LoadgenError::Account {
                        user: user.into(),
                        what: format!("register answered {}", result_name(result)),
                    })
                }
            }
        }
    }

    /// Logs `user` in: its account id and a one-time token.
    pub async fn login(
        &self,
        login: &mut FrameConn,
        user: &str,
    ) -> Result<(u64, String), LoadgenError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            login
                .send(&pb::CLogin {
                    username: user.into(),
                    password: self.password.clone(),
                })
                .await?;
            let answer = match login.recv_msg_within(ANSWER_WAIT, "S_LOGIN").await? {
                ServerMessage::Login(r) => r,
                other => return Err(unexpected("S_LOGIN", &other)),
            };
            if answer.result == pb::Result::Ok as i32 {
                return Ok((answer.account_id, answer.token));
            }
            let what = if answer.result == pb::Result::InvalidCredentials as i32 {
                "login refused: invalid credentials (the account exists with another \
                 password: pass its --password or another --prefix)"
                    .to_string()
            } else {
                format!("login answered {}", result_name(answer.result))
            };
            match (is_transient(answer.result), backoff(attempt)) {
                (true, Retry::After(wait)) => tokio::time::sleep(wait).await,
                _ => {
                    return Err(LoadgenError::Account {
                        user: user.into(),
                        what,
                    })
                }
            }
        }
    }

    /// Enters the world with `token` on a new connection (number `n`, for the source address).
    pub async fn enter(
        &self,
        connector: &Connector,
        token: String,
        n: usize,
    ) -> Result<Entered, LoadgenError> {
        let mut conn = connector.connect(self.world, n).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            conn.send(&pb::CEnter {
                token: token.clone(),
            })
            .await?;
            match conn.recv_msg_within(ANSWER_WAIT, "S_ENTER").await? {
                ServerMessage::Enter(e) if e.result == pb::Result::Ok as i32 => {
                    let id = e.player.map(|p| p.player_id).unwrap_or_default();
                    return Ok(Entered { id, conn });
                }
                ServerMessage::Enter(e) if is_transient(e.result) => match backoff(attempt) {
                    Retry::After(wait) => tokio::time::sleep(wait).await,
                    Retry::Done => {
                        return Err(LoadgenError::Unexpected(format!(
                            "enter answered {} {attempt} times",
                            result_name(e.result)
                        )))
                    }
                },
                ServerMessage::Enter(e) => {
                    return Err(LoadgenError::Unexpected(format!(
                        "enter answered {}",
                        result_name(e.result)
                    )))
                }
                other => return Err(unexpected("S_ENTER", &other)),
            }
        }
    }
}

/// The error for an answer of the wrong type.
pub fn unexpected(wanted: &str, got: &ServerMessage) -> LoadgenError {
    LoadgenError::Unexpected(format!("wanted {wanted}, got {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts(prefix: &str) -> Accounts {
        Accounts {
            login: "127.0.0.1:7000".parse().unwrap(),
            world: "127.0.0.1:7001".parse().unwrap(),
            prefix: prefix.into(),
            password: "password".into(),
        }
    }

    #[test]
    fn usernames_are_prefix_and_index() {
        assert_eq!(accounts("lg_").username(42).unwrap(), "lg_42");
    }

    #[test]
    fn a_prefix_that_makes_bad_names_is_refused() {
        assert!(matches!(
            accounts("bad-prefix").username(1),
            Err(LoadgenError::Args(_))
        ));
        assert!(accounts(&"x".repeat(31)).username(10).is_err());
    }

    #[test]
    fn backoff_grows_to_a_cap_then_gives_up() {
        assert_eq!(backoff(1), Retry::After(Duration::from_millis(25)));
        assert_eq!(backoff(20), Retry::After(Duration::from_millis(500)));
        assert_eq!(backoff(40), Retry::After(Duration::from_millis(500)));
        assert_eq!(backoff(RETRIES), Retry::Done);
    }

    #[test]
    fn result_names_are_readable() {
        assert_eq!(result_name(pb::Result::ServerBusy as i32), "server_busy");
        assert_eq!(result_name(77), "result 77");
    }
}
