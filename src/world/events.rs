//! What the world takes in from other shards and gives out to the driver.

use crate::model::{AccountId, Position};
use crate::protocol::pb::DisconnectReason;
use crate::protocol::ServerMessage;

use super::ConnId;

/// One session across the whole server: the shard that owns it and its connection there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// The shard that owns the session.
    pub shard: u16,
    /// The connection on that shard.
    pub conn: ConnId,
}

/// Orders two entries of the same account: the greater one is the session that stays, on every
/// shard alike, even when two shards admit the account at the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnterStamp {
    /// When the session entered, in microseconds of a clock every shard shares.
    pub at_micros: u64,
    /// The session, to break ties.
    pub session: SessionKey,
}

/// What the world knows of a player.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayerInfo {
    /// The account id.
    pub id: AccountId,
    /// The account's username.
    pub name: String,
    /// Where the player stands.
    pub position: Position,
}

/// A change made on one shard, replayed on every other shard.
#[derive(Debug, Clone, PartialEq)]
pub enum WorldEvent {
    /// A session entered the world.
    Enter {
        /// The player as it entered.
        player: PlayerInfo,
        /// Its session and entry time.
        stamp: EnterStamp,
    },
    /// A session left the world.
    Leave {
        /// The player.
        player_id: AccountId,
        /// The session that left.
        session: SessionKey,
    },
    /// A player said something.
    Chat {
        /// The speaker.
        player_id: AccountId,
        /// The speaker's session.
        session: SessionKey,
        /// What was said (validated).
        text: String,
    },
    /// A player moved.
    Move {
        /// The player.
        player_id: AccountId,
        /// The player's session.
        session: SessionKey,
        /// The new position (finite).
        position: Position,
    },
}

/// What the driver must do after a call into the [`super::World`], in order. A broadcast goes to
/// the local connections in the world when the driver carries it out, after the call returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a message to one local connection.
    Send {
        /// The receiver.
        to: ConnId,
        /// The message.
        msg: ServerMessage,
    },
    /// Send a message to every local connection in the world, but `except`.
    Broadcast {
        /// A connection left out (the sender of a move, the player just spawned).
        except: Option<ConnId>,
        /// The message, to be encoded once for all receivers.
        msg: ServerMessage,
    },
    /// Send `S_DISCONNECT` with this reason to a local connection and close it. The world has
    /// already forgotten it.
    Kick {
        /// The connection to close.
        conn: ConnId,
        /// Why.
        reason: DisconnectReason,
    },
    /// Carry this event to every other shard.
    Publish(WorldEvent),
    /// Save a player's position in the account store.
    Save {
        /// The player.
        player: AccountId,
        /// Its last position.
        position: Position,
    },
}
