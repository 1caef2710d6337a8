//! The login service on a shard: requests go to the DB pool; the shard only waits for answers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use crate::protocol::pb::{self, Result as Code};
use crate::protocol::{unix_micros, ClientMessage, ServerMessage};
use crate::session::{LoginSession, LoginStep};
use crate::store::{ops, LoginOutcome, RegisterOutcome, StoreError};
use crate::world::ConnId;

use super::shard::{DbFailure, Shard};

/// Handles one login request; the connection stays open whatever the answer.
pub(super) async fn handle(
    shard: &Shard,
    conn: ConnId,
    session: &mut LoginSession,
    msg: ClientMessage,
    peer: Option<SocketAddr>,
) -> Result<(), Option<ServerMessage>> {
    let reply = match session.on_message(msg, unix_micros(SystemTime::now())) {
        LoginStep::Reply(reply) => reply,
        LoginStep::Register { username, password } => register(shard, username, password).await,
        LoginStep::Login { username, password } => {
            let ip = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
            login(shard, username, password, ip).await
        }
    };
    shard.send(conn, &reply);
    Ok(())
}

async fn register(shard: &Shard, username: String, password: String) -> ServerMessage {
    let name = username.clone();
    let result = shard
        .db(move |s| ops::register(s, &username, &password))
        .await;
    let (code, account_id) = match result {
        Ok(Ok(RegisterOutcome::Created(id))) => {
            tracing::info!(account_id = id, username = %name, "account registered");
            (Code::Ok, id)
        }
        Ok(Ok(RegisterOutcome::Exists)) | Ok(Err(StoreError::AccountExists)) => {
            (Code::AccountExists, 0)
        }
        Ok(Err(e)) => (store_failure(shard, "register", &e), 0),
        Err(e) => (pool_failure(shard, "register", e), 0),
    };
    ServerMessage::Register(pb::SRegister {
        result: code as i32,
        account_id,
    })
}

async fn login(shard: &Shard, username: String, password: String, ip: IpAddr) -> ServerMessage {
    let name = username.clone();
    let result = shard
        .db(move |s| ops::login(s, &username, &password, ip))
        .await;
    let failed = |code: Code| {
        ServerMessage::Login(pb::SLogin {
            result: code as i32,
            ..Default::default()
        })
    };
    match result {
        Ok(Ok(LoginOutcome::Ok {
            token,
            account_id,
            expires_in_secs,
        })) => {
            tracing::debug!(account_id, "login ok");
            ServerMessage::Login(pb::SLogin {
                result: Code::Ok as i32,
                token,
                account_id,
                expires_in_secs,
            })
        }
        Ok(Ok(LoginOutcome::InvalidCredentials)) => {
            tracing::debug!(username = %name, %ip, "login refused: invalid credentials");
            failed(Code::InvalidCredentials)
        }
        Ok(Ok(LoginOutcome::RateLimited)) => {
            tracing::info!(username = %name, %ip, "login refused: too many failures");
            failed(Code::RateLimited)
        }
        Ok(Err(e)) => failed(store_failure(shard, "login", &e)),
        Err(e) => failed(pool_failure(shard, "login", e)),
    }
}

/// The answer when the store failed: busy when it may come back, internal otherwise.
pub(super) fn store_failure(shard: &Shard, what: &str, e: &StoreError) -> Code {
    tracing::warn!(shard = shard.id, request = what, error = %e, "store failed");
    match e {
        StoreError::Internal(_) => Code::InternalError,
        _ => Code::ServerBusy,
    }
}

/// The answer when the DB pool gave none.
pub(super) fn pool_failure(shard: &Shard, what: &str, e: DbFailure) -> Code {
    tracing::warn!(shard = shard.id, request = what, error = %e, "no answer from the DB pool");
    match e {
        DbFailure::Panicked => Code::InternalError,
        _ => Code::ServerBusy,
    }
}
