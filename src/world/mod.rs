//! The shared world, sans-IO: presence, chat and movement as one shard sees them.
//!
//! Every shard keeps a replica of who is in the world. A shard's own sessions change it through
//! [`World::enter`], [`World::chat`], [`World::move_to`] and [`World::leave`]; those calls return
//! [`WorldEvent`]s (inside [`Action::Publish`]) that the driver carries to every other shard, where
//! [`World::apply_remote`] replays them. Events from one shard arrive at another in the order they
//! were made, which gives PROTOCOL.md's ordering: a player's messages stay in order, and a receiver
//! sees a player's spawn before its chat and moves, and nothing of it after its despawn.

mod events;
mod snapshot;
mod state;

pub use events::{Action, EnterStamp, PlayerInfo, SessionKey, WorldEvent};
pub use snapshot::{spawn_frames, MAX_SPAWN_BODY};
pub use state::World;

/// Identifies a connection among the sessions of one shard.
pub type ConnId = u64;

#[cfg(test)]
mod tests;
