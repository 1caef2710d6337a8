//! A shard's runtime-free state: its replica of the world, its connections' send queues, and how
//! the world's actions reach them. Every driver owns hubs the same way: one per shard (glommio,
//! tokio-per-core) or one for the whole process (multi-thread tokio); what differs is only the
//! send queue ([`SendQueue`]) and how published events travel to other shards (the driver drains
//! [`Hub::drain_published`] after each call).
//!
//! A broadcast is encoded once into the thread's send-buffer chunk and shared by every receiver.

mod clock;
mod queue;

pub use clock::{init as init_clock, micros_since_start};
pub use queue::{PushError, SendQueue};

use bytes::Bytes;
use hashbrown::HashMap;

use crate::model::{AccountId, Position};
use crate::protocol::pb::DisconnectReason;
use crate::protocol::ServerMessage;
use crate::session::disconnect;
use crate::store::PositionWriter;
use crate::world::{Action, ConnId, PlayerInfo, World, WorldEvent};

/// How long a shard remembers an account's newest entry after it left (see `World`).
const ENTRY_MEMORY_MICROS: u64 = 10 * 60 * 1_000_000;

/// One shard's world and connections. Not thread-safe by itself: a driver keeps it on its shard
/// (or behind a lock, for the multi-thread variant).
pub struct Hub<Q: SendQueue> {
    id: usize,
    world: World,
    conns: HashMap<ConnId, Q>,
    next_conn: ConnId,
    send_limit: usize,
    writer: PositionWriter,
    actions: Vec<Action>,
    published: Vec<WorldEvent>,
}

impl<Q: SendQueue> std::fmt::Debug for Hub<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("id", &self.id)
            .field("connections", &self.conns.len())
            .field("players", &self.world.player_count())
            .finish()
    }
}

impl<Q: SendQueue> Hub<Q> {
    /// The hub of shard `id`; each connection's queue holds at most `send_limit` bytes, and
    /// positions go to `writer`.
    pub fn new(id: usize, send_limit: usize, writer: PositionWriter) -> Self {
        Self {
            id,
            world: World::new(u16::try_from(id).unwrap_or(u16::MAX)),
            conns: HashMap::new(),
            next_conn: 1,
            send_limit,
            writer,
            actions: Vec::new(),
            published: Vec::new(),
        }
    }

    /// The shard's index.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Adds a connection; returns its id and its send queue (the driver's writer drains it).
    pub fn register(&mut self) -> (ConnId, Q) {
        let id = self.next_conn;
        self.next_conn += 1;
        let queue = Q::with_limit(self.send_limit);
        self.conns.insert(id, queue.clone());
        (id, queue)
    }

    /// Forgets a closed connection; its player (if any) leaves the world.
    pub fn unregister(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.world_action(|world, out| world.leave(conn, out));
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Sends a message to one connection.
    pub fn send(&mut self, conn: ConnId, msg: &ServerMessage) {
        if let Some(frame) = self.encode(msg) {
            self.push(conn, frame);
        }
    }

    /// Sends `S_DISCONNECT{reason}` after what is queued and closes the connection.
    pub fn kick(&mut self, conn: ConnId, reason: DisconnectReason, detail: &str) {
        let last = self.encode(&disconnect(reason, detail));
        if let Some(queue) = self.conns.get(&conn) {
            queue.close(last, false);
        }
    }

    /// Kicks every connection (shutdown).
    pub fn kick_all(&mut self, reason: DisconnectReason, detail: &str) {
        let last = self.encode(&disconnect(reason, detail));
        for queue in self.conns.values() {
            queue.close(last.clone(), false);
        }
    }

    /// A player admitted on `conn` enters the world.
    pub fn enter(&mut self, conn: ConnId, player: PlayerInfo, now_micros: u64) {
        self.world_action(|world, out| world.enter(conn, player, now_micros, out));
    }

    /// The player on `conn` says something.
    pub fn chat(&mut self, conn: ConnId, text: String) {
        self.world_action(|world, out| world.chat(conn, text, out));
    }

    /// The player on `conn` moves.
    pub fn move_to(&mut self, conn: ConnId, position: Position) {
        self.world_action(|world, out| world.move_to(conn, position, out));
    }

    /// An event another shard published.
    pub fn apply_remote(&mut self, event: WorldEvent) {
        self.world_action(|world, out| world.apply_remote(event, out));
    }

    /// Events for the other shards since the last call, in order: the driver sends them on.
    pub fn drain_published(&mut self) -> std::vec::Drain<'_, WorldEvent> {
        self.published.drain(..)
    }

    /// The periodic save: hands every local player's position to the writer and forgets entry
    /// records too old to matter (`now_micros` on the server's clock).
    pub fn save_tick(&mut self, now_micros: u64) {
        let cutoff = now_micros.saturating_sub(ENTRY_MEMORY_MICROS);
        self.world.forget_entries_before(cutoff);
        self.writer.save(&self.world.local_positions());
    }

    /// Shutdown: saves every local player and kicks every connection with `SERVER_SHUTDOWN`.
    /// Returns (connections, players) for the log.
    pub fn begin_shutdown(&mut self) -> (usize, usize) {
        let positions = self.world.local_positions();
        self.writer.save(&positions);
        let counts = (self.conns.len(), positions.len());
        self.kick_all(DisconnectReason::ServerShutdown, "server shutting down");
        counts
    }

    /// Positions of this shard's players.
    pub fn local_positions(&self) -> Vec<(AccountId, Position)> {
        self.world.local_positions()
    }

    fn encode(&self, msg: &ServerMessage) -> Option<Bytes> {
        match shards::chunk::encode(|buf| msg.encode(buf)) {
            Ok(frame) => Some(frame),
            Err(e) => {
                tracing::error!(shard = self.id, error = %e, "message too large to send; dropped");
                None
            }
        }
    }

    fn push(&self, conn: ConnId, frame: Bytes) {
        let Some(queue) = self.conns.get(&conn) else {
            return;
        };
        match queue.push(frame) {
            Ok(()) | Err(PushError::Closed) => {}
            Err(PushError::Overflow) => {
                tracing::info!(
                    shard = self.id,
                    conn,
                    pending = queue.pending_bytes(),
                    "slow consumer: send queue over its limit, disconnecting"
                );
                let last = self.encode(&disconnect(
                    DisconnectReason::SlowConsumer,
                    "send queue over its limit",
                ));
                queue.close(last, true);
            }
        }
    }

    fn world_action(&mut self, rule: impl FnOnce(&mut World, &mut Vec<Action>)) {
        let mut actions = std::mem::take(&mut self.actions);
        rule(&mut self.world, &mut actions);
        for action in actions.drain(..) {
            match action {
                Action::Send { to, msg } => self.send(to, &msg),
                Action::Broadcast { except, msg } => {
                    let Some(frame) = self.encode(&msg) else {
                        continue;
                    };
                    for conn in self.world.local_conns().filter(|c| Some(*c) != except) {
                        self.push(conn, frame.clone());
                    }
                }
                Action::Kick { conn, reason } => {
                    tracing::info!(shard = self.id, conn, ?reason, "session replaced");
                    self.kick(conn, reason, "logged in elsewhere");
                }
                Action::Publish(event) => self.published.push(event),
                Action::Save { player, position } => self.writer.save(&[(player, position)]),
            }
        }
        self.actions = actions;
    }
}
