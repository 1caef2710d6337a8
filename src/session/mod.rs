//! Per-connection rules, sans-IO: what a session answers to each decoded message, given the time.
//! The drivers do what the returned step says (reply, ask the DB pool, touch the world, close).

mod admission;
mod connection;
mod login;
mod rate;
mod world;

pub use admission::{Admission, AdmissionPolicy, Admit, Limit, RefusalWarning};
pub use connection::{
    Answer, ConnPolicy, Connection, EnterAnswer, Event, LoginAnswer, Now, RegisterAnswer, Request,
};
pub use login::{validate_password, validate_username, LoginSession, LoginStep};
pub use rate::{RateConfig, TokenBucket};
pub use world::{WorldSession, WorldStep, MAX_CHAT_BYTES, MAX_TOKEN_LEN};

use crate::protocol::pb::{self, DisconnectReason};
use crate::protocol::ServerMessage;

/// The answer to `C_PING`: echoes the client's time and adds the server's (µs since the epoch).
pub fn pong(ping: &pb::CPing, wall_micros: u64) -> ServerMessage {
    ServerMessage::Pong(pb::SPong {
        client_time: ping.client_time,
        server_time: wall_micros,
    })
}

/// The answer to `C_ECHO`: the same bytes back.
pub fn echo(req: pb::CEcho) -> ServerMessage {
    ServerMessage::Echo(pb::SEcho { data: req.data })
}

/// `S_ERROR` answering request `request_id` with `result`.
pub fn error_reply(result: pb::Result, request_id: crate::protocol::MessageId) -> ServerMessage {
    ServerMessage::Error(pb::SError {
        result: result as i32,
        request_id: u32::from(request_id as u16),
    })
}

/// `S_DISCONNECT` with a reason and a human-readable detail.
pub fn disconnect(reason: DisconnectReason, detail: impl Into<String>) -> ServerMessage {
    ServerMessage::Disconnect(pb::SDisconnect {
        reason: reason as i32,
        detail: detail.into(),
    })
}
