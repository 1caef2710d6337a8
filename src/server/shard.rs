//! One shard: the sessions it owns, its replica of the world, its end of the mesh, and how it
//! starts and drains. Everything here runs on the shard's own thread and takes no lock.

use std::cell::{Cell, OnceCell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::or;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use hashbrown::HashMap;
use shards::mailbox::MailboxSender;
use shards::mesh::Mesh;
use shards::outbox::{Outbox, PushError};
use shards::shutdown::ShutdownListener;
use shards::ShardSpec;

use crate::config::Config;
use crate::dbpool::{DbPool, PoolError, ReplyRoute};
use crate::protocol::pb::DisconnectReason;
use crate::protocol::{ServerMessage, Service};
use crate::session::disconnect;
use crate::store::{PositionWriter, Services};
use crate::world::{Action, ConnId, World, WorldEvent};

use super::conn::{self, with_deadline};
use super::{take_own, ShardInit, ShardStats};

/// How long a shard remembers an account's newest entry after it left (see `World`).
const ENTRY_MEMORY_MICROS: u64 = 10 * 60 * 1_000_000;

/// Why a DB request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum DbFailure {
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

/// DB answers for a shard come back through its mailbox, to be handed over on its own thread.
struct MailboxRoute(MailboxSender);

impl ReplyRoute for MailboxRoute {
    fn deliver(&self, handover: Box<dyn FnOnce() + Send>) {
        // A stopped shard has no one waiting any more.
        let _ = self.0.send(handover);
    }
}

/// A shard's state. Shared by its tasks through `Rc`; never leaves its thread.
pub(super) struct Shard {
    pub(super) id: usize,
    pub(super) config: Arc<Config>,
    pub(super) tls: Option<futures_rustls::TlsAcceptor>,
    pool: DbPool,
    writer: PositionWriter,
    replies: Arc<dyn ReplyRoute>,
    world: RefCell<World>,
    conns: RefCell<HashMap<ConnId, Outbox>>,
    next_conn: Cell<ConnId>,
    mesh: OnceCell<Mesh<WorldEvent>>,
    actions: RefCell<Vec<Action>>,
    stats: Arc<Vec<ShardStats>>,
    gate: Gate,
    shutdown: ShutdownListener,
    /// Connections refused at the limit since the last warning, and when that was.
    refused: Cell<(u64, Option<Instant>)>,
}

/// At most one "connection limit reached" warning per shard this often.
const REFUSED_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The shard's main future: joins the mesh, accepts on both services until shutdown, then drains.
pub(super) async fn run(spec: ShardSpec, init: ShardInit) {
    let Some(own) = take_own(&init.own, spec.id) else {
        tracing::error!(shard = spec.id, "nothing handed over to this shard");
        return;
    };
    glommio::spawn_local(own.mailbox.run()).detach();
    let listeners = own.sockets;
    let shard = Rc::new(Shard {
        id: spec.id,
        tls: init.tls.map(futures_rustls::TlsAcceptor::from),
        pool: init.pool,
        writer: init.writer,
        replies: Arc::new(MailboxRoute(own.replies)),
        world: RefCell::new(World::new(u16::try_from(spec.id).unwrap_or(u16::MAX))),
        conns: RefCell::new(HashMap::new()),
        next_conn: Cell::new(1),
        mesh: OnceCell::new(),
        actions: RefCell::new(Vec::new()),
        stats: init.stats,
        gate: Gate::new(),
        shutdown: own.shutdown,
        refused: Cell::new((0, None)),
        config: init.config,
    });
    let receiver = shard.clone();
    let mesh = Mesh::join(own.mesh, move |event| receiver.on_remote(event)).await;
    let _ = shard.mesh.set(mesh);
    // SAFETY of from_raw_fd: each fd comes from a listener this shard owns and gives up here.
    let mut fds = Vec::new();
    let listening: Vec<(Rc<TcpListener>, Service)> = [
        (listeners.login, Service::Login),
        (listeners.world, Service::World),
    ]
    .into_iter()
    .filter_map(|(socket, service)| {
        let fd = socket?.into_raw_fd();
        fds.push(fd);
        Some((Rc::new(unsafe { TcpListener::from_raw_fd(fd) }), service))
    })
    .collect();
    let accepting: Vec<_> = listening
        .iter()
        .map(|(listener, service)| {
            glommio::spawn_local(accept_loop(shard.clone(), listener.clone(), *service))
        })
        .collect();
    glommio::spawn_local(save_loop(shard.clone())).detach();
    tracing::debug!(shard = spec.id, core = ?spec.core, "shard serving");

    shard.shutdown.wait().await;
    stop_listening(shard.id, &fds);
    let deadline = Instant::now() + Duration::from_secs(1);
    if with_deadline(deadline, futures::future::join_all(accepting))
        .await
        .is_none()
    {
        tracing::warn!(shard = spec.id, "accept loops did not stop in time");
    }
    shard.drain().await;
    // The listeners (and so their fds) live until here, past `stop_listening`.
    drop(listening);
    leave_together(&shard, &init.exit).await;
}

/// Closes this shard's mesh channels and waits for every other shard to do the same before the
/// executor exits: glommio notifies a peer's executor when a channel end goes away, which is not
/// safe once that peer has exited (see `Mesh::close`).
async fn leave_together(shard: &Shard, exit: &shards::ExitGate) {
    let grace = shard.config.server.shutdown_grace();
    if let Some(mesh) = shard.mesh.get() {
        if with_deadline(Instant::now() + grace, mesh.close())
            .await
            .is_none()
        {
            tracing::warn!(
                shard = shard.id,
                "other shards did not close their channels in time"
            );
        }
    }
    if !exit.arrive_and_wait(grace) {
        tracing::warn!(shard = shard.id, "other shards did not stop in time");
    }
}

/// Stops listening on this shard's sockets: the kernel takes them out of the SO_REUSEPORT group
/// (new connections go to shards still serving) and completes the pending accepts with an error,
/// which ends the accept loops.
///
/// Why not just drop the pending accept: glommio submits it to io_uring with an address buffer
/// that is freed with the executor, while the kernel cancels in-flight requests only after the
/// ring is closed; an accept still pending then can write a peer address into freed memory
/// (seen as a heap corruption at thread exit). And a closed-but-pending listener would keep
/// being handed connections that nobody accepts.
fn stop_listening(shard: usize, fds: &[std::os::fd::RawFd]) {
    for &fd in fds {
        // SAFETY: the listener owning `fd` is alive in the caller for this whole call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Err(e) = socket2::SockRef::from(&borrowed).shutdown(std::net::Shutdown::Both) {
            tracing::warn!(shard, error = %e, "cannot stop a listening socket");
        }
    }
}

/// Accepts connections until the listener is stopped at shutdown. The pending accept is never
/// dropped (see `stop_listening`).
async fn accept_loop(shard: Rc<Shard>, listener: Rc<TcpListener>, service: Service) {
    loop {
        let accepted = listener.accept().await;
        if shard.shutdown.fired() {
            // Stopped; a connection accepted in the same instant is closed with the loop.
            break;
        }
        match accepted {
            Ok(stream) => {
                match shard
                    .gate
                    .spawn(conn::serve(shard.clone(), stream, service))
                {
                    Ok(task) => {
                        task.detach();
                    }
                    Err(_) => break, // the gate is closed: shutting down
                }
            }
            Err(e) => {
                // Out of file descriptors, say: back off a little instead of spinning.
                tracing::warn!(shard = shard.id, %service, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::debug!(shard = shard.id, %service, "stopped accepting");
}

async fn save_loop(shard: Rc<Shard>) {
    let interval = shard.config.server.save_interval();
    loop {
        let tick = or(
            async {
                glommio::timer::sleep(interval).await;
                true
            },
            async {
                shard.shutdown.wait().await;
                false
            },
        )
        .await;
        if !tick {
            break;
        }
        // Entries older than this cannot still be travelling between shards.
        let cutoff = super::micros_since_start().saturating_sub(ENTRY_MEMORY_MICROS);
        shard.world.borrow_mut().forget_entries_before(cutoff);
        let positions = shard.world.borrow().local_positions();
        shard.writer.save(&positions);
    }
}

impl Shard {
    /// Registers a new connection, or `None` when the shard is at its connection limit.
    pub(super) fn register_conn(&self) -> Option<(ConnId, Outbox)> {
        let mut conns = self.conns.borrow_mut();
        if conns.len() >= self.config.server.max_connections_per_shard {
            return None;
        }
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        let outbox = Outbox::new(self.config.server.send_queue_limit_bytes);
        conns.insert(id, outbox.clone());
        self.stat_add(1);
        Some((id, outbox))
    }

    /// Counts a connection refused at the limit; warns now and then, not once per connection
    /// (a flood must not flood the log too).
    pub(super) fn note_refused(&self, service: Service) {
        let (count, last) = self.refused.get();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFUSED_WARNING_EVERY) {
            self.refused.set((count + 1, last));
            return;
        }
        tracing::warn!(
            shard = self.id,
            %service,
            limit = self.config.server.max_connections_per_shard,
            refused = count + 1,
            "connection limit reached; refusing connections with SERVER_FULL"
        );
        self.refused.set((0, Some(now)));
    }

    /// Forgets a closed connection; a world session leaves the world.
    pub(super) fn unregister_conn(&self, id: ConnId) {
        if self.conns.borrow_mut().remove(&id).is_some() {
            self.stat_add(-1);
        }
        self.world_action(|world, out| world.leave(id, out));
    }

    fn stat_add(&self, delta: isize) {
        if let Some(s) = self.stats.get(self.id) {
            use std::sync::atomic::Ordering::Relaxed;
            if delta > 0 {
                s.connections.fetch_add(1, Relaxed);
            } else {
                s.connections.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Encodes a message into the shard's send-buffer chunk.
    pub(super) fn encode(&self, msg: &ServerMessage) -> Option<Bytes> {
        match shards::chunk::encode(|buf| msg.encode(buf)) {
            Ok(frame) => Some(frame),
            Err(e) => {
                tracing::error!(shard = self.id, error = %e, "message too large to send; dropped");
                None
            }
        }
    }

    /// Sends a message to one connection of this shard.
    pub(super) fn send(&self, conn: ConnId, msg: &ServerMessage) {
        if let Some(frame) = self.encode(msg) {
            self.push(conn, frame);
        }
    }

    fn push(&self, conn: ConnId, frame: Bytes) {
        let conns = self.conns.borrow();
        let Some(outbox) = conns.get(&conn) else {
            return;
        };
        match outbox.push(frame) {
            Ok(()) | Err(PushError::Closed) => {}
            Err(PushError::Overflow) => {
                tracing::info!(
                    shard = self.id,
                    conn,
                    pending = outbox.pending_bytes(),
                    "slow consumer: send queue over its limit, disconnecting"
                );
                let last = self.encode(&disconnect(
                    DisconnectReason::SlowConsumer,
                    "send queue over its limit",
                ));
                outbox.close(last, true);
            }
        }
    }

    /// Sends `S_DISCONNECT{reason}` after what is queued and closes the connection.
    pub(super) fn kick(&self, conn: ConnId, reason: DisconnectReason, detail: &str) {
        let last = self.encode(&disconnect(reason, detail));
        if let Some(outbox) = self.conns.borrow().get(&conn) {
            outbox.close(last, false);
        }
    }

    /// Runs a world rule and carries out what it asks.
    pub(super) fn world_action(&self, rule: impl FnOnce(&mut World, &mut Vec<Action>)) {
        let mut actions = std::mem::take(&mut *self.actions.borrow_mut());
        rule(&mut self.world.borrow_mut(), &mut actions);
        self.run_actions(&mut actions);
        *self.actions.borrow_mut() = actions;
    }

    fn on_remote(&self, event: WorldEvent) {
        self.world_action(|world, out| world.apply_remote(event, out));
    }

    fn run_actions(&self, actions: &mut Vec<Action>) {
        for action in actions.drain(..) {
            match action {
                Action::Send { to, msg } => self.send(to, &msg),
                Action::Broadcast { except, msg } => {
                    let Some(frame) = self.encode(&msg) else {
                        continue;
                    };
                    // Pushing never touches the world (a slow consumer is only marked
                    // closing), so the world can stay borrowed while the frame goes out.
                    let world = self.world.borrow();
                    for conn in world.local_conns().filter(|c| Some(*c) != except) {
                        self.push(conn, frame.clone());
                    }
                }
                Action::Kick { conn, reason } => {
                    tracing::info!(shard = self.id, conn, ?reason, "session replaced");
                    self.kick(conn, reason, "logged in elsewhere");
                }
                Action::Publish(event) => {
                    if let Some(mesh) = self.mesh.get() {
                        mesh.publish(event);
                    }
                }
                Action::Save { player, position } => {
                    self.writer.save(&[(player, position)]);
                }
            }
        }
    }

    /// Runs a blocking job on the DB pool and waits for its answer, at most
    /// `store.request_timeout_ms`. The shard keeps serving meanwhile.
    pub(super) async fn db<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Services) -> T + Send + 'static,
    ) -> Result<T, DbFailure> {
        let reply = self
            .pool
            .submit_routed(self.replies.clone(), job)
            .map_err(|e| match e {
                PoolError::Busy => DbFailure::Busy,
                PoolError::Stopped => DbFailure::Stopped,
                PoolError::JobPanicked => DbFailure::Panicked,
            })?;
        let deadline = Instant::now() + self.config.store.request_timeout();
        match with_deadline(deadline, reply).await {
            None => Err(DbFailure::Timeout),
            Some(Ok(v)) => Ok(v),
            Some(Err(PoolError::JobPanicked)) => Err(DbFailure::Panicked),
            Some(Err(_)) => Err(DbFailure::Stopped),
        }
    }

    /// Graceful shutdown of this shard: the accept loops have stopped; hand every player's
    /// position to the writer (which writes it before the process exits), tell every
    /// connection, wait for them to close (at most the grace period).
    async fn drain(&self) {
        let positions = self.world.borrow().local_positions();
        let players = positions.len();
        let connections = self.conns.borrow().len();
        tracing::info!(shard = self.id, connections, players, "shutting down");
        self.writer.save(&positions);
        let ids: Vec<ConnId> = self.conns.borrow().keys().copied().collect();
        for id in ids {
            self.kick(id, DisconnectReason::ServerShutdown, "server shutting down");
        }
        let deadline = Instant::now() + self.config.server.shutdown_grace();
        if with_deadline(deadline, self.gate.close()).await.is_none() {
            tracing::warn!(
                shard = self.id,
                open = self.conns.borrow().len(),
                "connections still open after the grace period"
            );
        }
        tracing::info!(shard = self.id, "shard stopped");
    }
}
