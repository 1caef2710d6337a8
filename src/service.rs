//! A connection's store requests ([`Request`]), run on a DB pool thread: the blocking side of
//! the login and world services, turning what the stores say into the session's [`Answer`].
//! Every driver submits these the same way; only how the answer travels back differs.

use std::net::IpAddr;

use crate::session::{Answer, EnterAnswer, LoginAnswer, RegisterAnswer, Request};
use crate::store::{ops, LoginOutcome, RegisterOutcome, Services, StoreError};
use crate::world::PlayerInfo;

/// Which request a failure answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `C_REGISTER`.
    Register,
    /// `C_LOGIN`.
    Login,
    /// `C_ENTER`.
    Enter,
}

impl RequestKind {
    /// The kind of `request`.
    pub fn of(request: &Request) -> Self {
        match request {
            Request::Register { .. } => Self::Register,
            Request::Login { .. } => Self::Login,
            Request::Redeem { .. } => Self::Enter,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Login => "login",
            Self::Enter => "enter",
        }
    }
}

/// Why the DB pool gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer {
    /// The pool's queue is full.
    #[error("db pool busy")]
    Busy,
    /// No answer within `store.request_timeout_ms`.
    #[error("db request timed out")]
    Timeout,
    /// The pool has stopped.
    #[error("db pool stopped")]
    Stopped,
    /// The job panicked on the pool thread.
    #[error("db job panicked")]
    Panicked,
}

/// Runs `request` from a client at `peer` against the stores. Runs on a DB pool thread.
pub fn run(services: &mut Services, request: Request, peer: IpAddr) -> Answer {
    match request {
        Request::Register { username, password } => {
            Answer::Register(match ops::register(services, &username, &password) {
                Ok(RegisterOutcome::Created(id)) => {
                    tracing::info!(account_id = id, "account registered");
                    RegisterAnswer::Created(id)
                }
                Ok(RegisterOutcome::Exists) | Err(StoreError::AccountExists) => {
                    RegisterAnswer::Exists
                }
                Err(e) => match store_failure(RequestKind::Register, &e) {
                    Failure::Busy => RegisterAnswer::Busy,
                    Failure::Internal => RegisterAnswer::Internal,
                },
            })
        }
        Request::Login { username, password } => {
            Answer::Login(match ops::login(services, &username, &password, peer) {
                Ok(LoginOutcome::Ok {
                    token,
                    account_id,
                    expires_in_secs,
                }) => {
                    tracing::debug!(account_id, "login ok");
                    LoginAnswer::Ok {
                        token,
                        account_id,
                        expires_in_secs,
                    }
                }
                Ok(LoginOutcome::InvalidCredentials) => {
                    tracing::debug!(%peer, "login refused: invalid credentials");
                    LoginAnswer::InvalidCredentials
                }
                Ok(LoginOutcome::RateLimited) => {
                    tracing::info!(%peer, "login refused: too many failures");
                    LoginAnswer::RateLimited
                }
                Err(e) => match store_failure(RequestKind::Login, &e) {
                    Failure::Busy => LoginAnswer::Busy,
                    Failure::Internal => LoginAnswer::Internal,
                },
            })
        }
        Request::Redeem { token } => Answer::Enter(match ops::redeem_for_enter(services, &token) {
            Ok(Some(account)) => EnterAnswer::Entered(PlayerInfo {
                id: account.id,
                name: account.username,
                position: account.position,
            }),
            Ok(None) => EnterAnswer::InvalidToken,
            Err(e) => match store_failure(RequestKind::Enter, &e) {
                Failure::Busy => EnterAnswer::Busy,
                Failure::Internal => EnterAnswer::Internal,
            },
        }),
    }
}

/// The answer when the pool gave none.
pub fn no_answer(kind: RequestKind, why: NoAnswer, shard: usize) -> Answer {
    tracing::warn!(shard, request = kind.name(), error = %why, "no answer from the DB pool");
    let failure = match why {
        NoAnswer::Panicked => Failure::Internal,
        _ => Failure::Busy,
    };
    match (kind, failure) {
        (RequestKind::Register, Failure::Busy) => Answer::Register(RegisterAnswer::Busy),
        (RequestKind::Register, Failure::Internal) => Answer::Register(RegisterAnswer::Internal),
        (RequestKind::Login, Failure::Busy) => Answer::Login(LoginAnswer::Busy),
        (RequestKind::Login, Failure::Internal) => Answer::Login(LoginAnswer::Internal),
        (RequestKind::Enter, Failure::Busy) => Answer::Enter(EnterAnswer::Busy),
        (RequestKind::Enter, Failure::Internal) => Answer::Enter(EnterAnswer::Internal),
    }
}

enum Failure {
    Busy,
    Internal,
}

/// Busy when the store may come back, internal otherwise.
fn store_failure(kind: RequestKind, e: &StoreError) -> Failure {
    tracing::warn!(request = kind.name(), error = %e, "store failed");
    match e {
        StoreError::Internal(_) => Failure::Internal,
        _ => Failure::Busy,
    }
}
