//! One glommio shard: its hub (world replica and connections), its admission state, its end of
//! the mesh, and how it starts, accepts and drains. Everything here runs on the shard's own
//! thread and takes no lock.

use std::cell::{OnceCell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future::or;
use glommio::net::TcpListener;
use glommio::sync::Gate;
use shards::guard::contain_panic;
use shards::mailbox::MailboxSender;
use shards::mesh::Mesh;
use shards::outbox::Outbox;
use shards::shutdown::ShutdownListener;
use shards::ShardSpec;

use crate::config::Config;
use crate::dbpool::{DbPool, PoolError, ReplyRoute};
use crate::hub::{micros_since_start, Hub};
use crate::protocol::Service;
use crate::service::NoAnswer;
use crate::session::{Admission, ConnPolicy};
use crate::store::Services;
use crate::world::WorldEvent;

use super::conn::{self, with_deadline};
use super::{take_own, ShardInit, ShardStats};

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
    pub(super) policy: ConnPolicy,
    pub(super) tls: Option<futures_rustls::TlsAcceptor>,
    pub(super) admission: RefCell<Admission>,
    pool: DbPool,
    replies: Arc<dyn ReplyRoute>,
    hub: RefCell<Hub<Outbox>>,
    mesh: OnceCell<Mesh<WorldEvent>>,
    stats: Arc<Vec<ShardStats>>,
    gate: Gate,
    shutdown: ShutdownListener,
}

/// The shard's main future: joins the mesh, accepts on its services until shutdown, then drains.
pub(super) async fn run(spec: ShardSpec, init: ShardInit) {
    let Some(own) = take_own(&init.own, spec.id) else {
        tracing::error!(shard = spec.id, "nothing handed over to this shard");
        return;
    };
    glommio::spawn_local(own.mailbox.run()).detach();
    let listeners = own.sockets;
    let shard = Rc::new(Shard {
        id: spec.id,
        policy: init.config.server.conn_policy(),
        tls: init.tls.map(futures_rustls::TlsAcceptor::from),
        admission: RefCell::new(Admission::new(
            init.config.server.admission_policy(),
            Instant::now(),
        )),
        pool: init.pool,
        replies: Arc::new(MailboxRoute(own.replies)),
        hub: RefCell::new(Hub::new(
            spec.id,
            init.config.server.send_queue_limit_bytes,
            init.writer,
        )),
        mesh: OnceCell::new(),
        stats: init.stats,
        gate: Gate::new(),
        shutdown: own.shutdown,
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
/// that is freed with the executor; an accept still pending at exit could write a peer address
/// into freed memory. And a closed-but-pending listener would keep being handed connections that
/// nobody accepts.
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
/// dropped (see `stop_listening`); each connection runs in its own task, guarded against panics.
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

/// Hands every local player's position to the writer every `save_interval_ms`. A panic in one
/// tick is logged and the next tick runs.
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
        let saved = contain_panic(async { shard.with_hub(|h| h.save_tick(micros_since_start())) });
        if let Err(panic) = saved.await {
            tracing::error!(shard = shard.id, %panic, "save tick panicked");
        }
    }
}

impl Shard {
    /// Runs `f` on the hub, then sends what it published to the other shards.
    pub(super) fn with_hub<R>(&self, f: impl FnOnce(&mut Hub<Outbox>) -> R) -> R {
        let mut hub = self.hub.borrow_mut();
        let out = f(&mut hub);
        let published = hub.drain_published();
        match self.mesh.get() {
            Some(mesh) => published.for_each(|event| mesh.publish(event)),
            None => published.for_each(drop),
        }
        out
    }

    /// An event from another shard. A panic in it is logged; the shard goes on.
    fn on_remote(&self, event: WorldEvent) {
        let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.with_hub(|h| h.apply_remote(event))
        }));
        if let Err(panic) = applied {
            tracing::error!(
                shard = self.id,
                panic = %shards::guard::panic_message(panic),
                "applying a remote world event panicked; event skipped"
            );
        }
    }

    /// Counts a connection in the stats the handle reports.
    pub(super) fn stat_add(&self, delta: isize) {
        if let Some(s) = self.stats.get(self.id) {
            use std::sync::atomic::Ordering::Relaxed;
            if delta > 0 {
                s.connections.fetch_add(1, Relaxed);
            } else {
                s.connections.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Runs a blocking job on the DB pool and waits for its answer, at most
    /// `store.request_timeout_ms`. The shard keeps serving meanwhile.
    pub(super) async fn db<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Services) -> T + Send + 'static,
    ) -> Result<T, NoAnswer> {
        let reply = self
            .pool
            .submit_routed(self.replies.clone(), job)
            .map_err(|e| match e {
                PoolError::Busy => NoAnswer::Busy,
                PoolError::Stopped => NoAnswer::Stopped,
                PoolError::JobPanicked => NoAnswer::Panicked,
            })?;
        let deadline = Instant::now() + self.config.store.request_timeout();
        match with_deadline(deadline, reply).await {
            None => Err(NoAnswer::Timeout),
            Some(Ok(v)) => Ok(v),
            Some(Err(PoolError::JobPanicked)) => Err(NoAnswer::Panicked),
            Some(Err(_)) => Err(NoAnswer::Stopped),
        }
    }

    /// Graceful shutdown of this shard: the accept loops have stopped; hand every player's
    /// position to the writer (which writes it before the process exits), tell every
    /// connection, wait for them to close (at most the grace period).
    async fn drain(&self) {
        let (connections, players) = self.with_hub(|h| h.begin_shutdown());
        tracing::info!(shard = self.id, connections, players, "shutting down");
        let deadline = Instant::now() + self.config.server.shutdown_grace();
        if with_deadline(deadline, self.gate.close()).await.is_none() {
            tracing::warn!(
                shard = self.id,
                open = self.with_hub(|h| h.connections()),
                "connections still open after the grace period"
            );
        }
        tracing::info!(shard = self.id, "shard stopped");
    }
}
