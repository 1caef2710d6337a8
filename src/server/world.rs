//! The world service on a shard: admits a session by its token, then passes chat and moves to the
//! shard's world.

use std::time::{Instant, SystemTime};

use crate::protocol::pb::{self, Result as Code};
use crate::protocol::{unix_micros, ClientMessage, ServerMessage};
use crate::session::{disconnect, WorldSession, WorldStep};
use crate::store::ops;
use crate::world::{ConnId, PlayerInfo};

use super::login::{pool_failure, store_failure};
use super::micros_since_start;
use super::shard::Shard;

fn enter_result(code: Code) -> ServerMessage {
    ServerMessage::Enter(pb::SEnter {
        result: code as i32,
        player: None,
    })
}

/// Handles one world message. `Err(last)` closes the connection after sending `last`.
pub(super) async fn handle(
    shard: &Shard,
    conn: ConnId,
    session: &mut WorldSession,
    msg: ClientMessage,
) -> Result<(), Option<ServerMessage>> {
    match session.on_message(msg, Instant::now(), unix_micros(SystemTime::now())) {
        WorldStep::Reply(reply) => shard.send(conn, &reply),
        WorldStep::RejectToken => return Err(Some(enter_result(Code::InvalidToken))),
        WorldStep::Redeem { token } => {
            let result = shard.db(move |s| ops::redeem_for_enter(s, &token)).await;
            let code = match result {
                Ok(Ok(Some(account))) => {
                    session.entered();
                    tracing::debug!(shard = shard.id, conn, account_id = account.id, "entered");
                    let player = PlayerInfo {
                        id: account.id,
                        name: account.username,
                        position: account.position,
                    };
                    let now = micros_since_start();
                    shard.world_action(|world, out| world.enter(conn, player, now, out));
                    return Ok(());
                }
                Ok(Ok(None)) => return Err(Some(enter_result(Code::InvalidToken))),
                Ok(Err(e)) => store_failure(shard, "enter", &e),
                Err(e) => pool_failure(shard, "enter", e),
            };
            session.enter_failed();
            shard.send(conn, &enter_result(code));
        }
        WorldStep::Chat(text) => shard.world_action(|world, out| world.chat(conn, text, out)),
        WorldStep::Move(position) => {
            shard.world_action(|world, out| world.move_to(conn, position, out))
        }
        WorldStep::ProtocolError(e) => {
            tracing::debug!(shard = shard.id, conn, error = %e, "protocol error; closing");
            return Err(Some(disconnect(e.disconnect_reason(), e.to_string())));
        }
        WorldStep::Disconnect(reason) => {
            tracing::info!(shard = shard.id, conn, ?reason, "disconnecting");
            return Err(Some(disconnect(reason, "too many requests")));
        }
    }
    Ok(())
}
