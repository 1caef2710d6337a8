//! The thread-per-core engine: one pinned glommio executor per core, and the pieces every
//! shard-local service needs.
//!
//! - [`executor`]: start one executor per configured core, pinned, and join them.
//! - [`chunk`]: the shard's thread-local send-buffer chunk: a frame is encoded once and shared
//!   as a [`bytes::Bytes`] slice by every receiver.
//! - [`outbox`]: a connection's bounded send queue, flushed with vectored writes.
//! - [`net`]: a TCP stream whose vectored writes are one `sendmsg`.
//! - [`split`]: read and write halves of one stream for two tasks of the same shard.
//! - [`mesh`]: cross-shard event channels, connected at start-up, that never deadlock.
//! - [`mailbox`]: work from other threads (DB answers, shutdown) run on the shard's own thread.
//! - [`shutdown`]: one signal that reaches every shard, through its mailbox.
//! - [`guard`]: a panic in one session's task ends that session, not the shard.
//!
//! Nothing here knows the game: services are built on top.

pub mod chunk;
pub mod executor;
pub mod guard;
pub mod mailbox;
pub mod mesh;
pub mod net;
pub mod outbox;
pub mod shutdown;
pub mod split;

pub use executor::{spawn_shards, ExitGate, ShardError, ShardSpec};
