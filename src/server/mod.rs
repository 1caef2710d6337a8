//! The glommio driver: binds both services on every shard, starts the shards and the DB pool,
//! and shuts them down. Everything per-connection and per-shard lives in [`shard`] and [`conn`].

mod conn;
mod listen;
mod shard;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use glommio::ExecutorJoinHandle;
use shards::mailbox::{mailbox, Mailbox, MailboxSender};
use shards::shutdown::{ShutdownListener, ShutdownTrigger};
use shards::ShardSpec;

use crate::config::{Config, Role};
use crate::dbpool::DbPool;
use crate::store::{Backend, PositionWriter, StoreError, StoreStats};
use crate::tls::TlsError;

pub use crate::hub::micros_since_start;

/// The server could not start, or a shard failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Certificates could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The account store could not be opened.
    #[error("account store: {0}")]
    Store(#[from] StoreError),
    /// A listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A shard's mailbox (a socketpair) could not be made.
    #[error("cannot create a shard mailbox: {0}")]
    Mailbox(std::io::Error),
    /// A shard could not start or failed.
    #[error(transparent)]
    Shard(#[from] shards::ShardError),
}

/// Live counters of one shard (updated on accept and close, never per frame).
#[derive(Debug, Default)]
pub struct ShardStats {
    /// Open connections, both services.
    pub connections: AtomicUsize,
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    trigger: ShutdownTrigger,
    shards: Vec<ExecutorJoinHandle<()>>,
    pool: DbPool,
    backend: Arc<Backend>,
    role: Role,
    login_addr: SocketAddr,
    world_addr: SocketAddr,
    stats: Arc<Vec<ShardStats>>,
    shutdown_grace: std::time::Duration,
}

impl ServerHandle {
    /// The address the login service listens on (with the real port when config said 0). For a
    /// role without the login service, the configured address, on which nothing listens.
    pub fn login_addr(&self) -> SocketAddr {
        self.login_addr
    }

    /// The address the world service listens on. For a role without the world service, the
    /// configured address, on which nothing listens.
    pub fn world_addr(&self) -> SocketAddr {
        self.world_addr
    }

    /// Which services this server serves.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The position writer's and the account cache's counters now.
    pub fn store_stats(&self) -> StoreStats {
        self.backend.stats()
    }

    /// Open connections per shard, in shard order.
    pub fn connections_per_shard(&self) -> Vec<usize> {
        self.stats
            .iter()
            .map(|s| s.connections.load(Ordering::Relaxed))
            .collect()
    }

    /// A trigger that starts a graceful shutdown (for a signal-handling thread).
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        self.trigger.clone()
    }

    /// Starts a graceful shutdown: stop accepting, `S_DISCONNECT{SERVER_SHUTDOWN}` to everyone,
    /// save every player.
    pub fn shutdown(&self) {
        self.trigger.fire();
    }

    /// Waits until every shard has finished, then drains the DB pool and the position writer
    /// (every save queued by then is written, the store given `shutdown_grace_ms` to take it).
    pub fn wait(self) -> Result<(), ServerError> {
        let joined = shards::executor::join_shards(self.shards);
        self.pool.shutdown();
        self.backend.shutdown(self.shutdown_grace);
        joined.map(|_| ()).map_err(ServerError::from)
    }
}

/// What every shard is started with.
struct ShardInit {
    config: Arc<Config>,
    tls: Option<Arc<rustls::ServerConfig>>,
    pool: DbPool,
    writer: PositionWriter,
    own: Arc<Mutex<Vec<Option<ShardOwn>>>>,
    stats: Arc<Vec<ShardStats>>,
    exit: shards::ExitGate,
}

/// What belongs to one shard alone, handed over when it starts.
struct ShardOwn {
    sockets: listen::ShardListeners,
    /// This shard's ends of the channels to and from every other shard.
    mesh: shards::mesh::MeshEnds<crate::world::WorldEvent>,
    /// Where other threads send work for this shard (DB answers, the shutdown signal).
    mailbox: Mailbox,
    /// This shard's own address, for DB answers to come back to it.
    replies: MailboxSender,
    shutdown: ShutdownListener,
}

impl Clone for ShardInit {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            tls: self.tls.clone(),
            pool: self.pool.clone(),
            writer: self.writer.clone(),
            own: self.own.clone(),
            stats: self.stats.clone(),
            exit: self.exit.clone(),
        }
    }
}

/// Starts the server described by `config`: certificates, the DB pool, and one shard per
/// configured core, each listening on both services.
pub fn start(config: Config) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    crate::hub::init_clock();
    let tls_on = config.tls.enabled;
    let tls = if config.tls.enabled {
        Some(crate::tls::server_config(&config.tls)?)
    } else {
        tracing::warn!("TLS is off ([tls] enabled = false): traffic is plaintext");
        None
    };
    let specs = shard_specs(&config);
    let count = specs.len();
    let role = config.server.role;
    let login = role
        .serves_login()
        .then(|| listen::bind_reuseport(config.server.login_addr, count))
        .transpose()?;
    let world = role
        .serves_world()
        .then(|| listen::bind_reuseport(config.server.world_addr, count))
        .transpose()?;
    let login_addr = login.as_ref().map_or(config.server.login_addr, |b| b.addr);
    let world_addr = world.as_ref().map_or(config.server.world_addr, |b| b.addr);
    let mut login_sockets = login.map(|b| b.sockets.into_iter());
    let mut world_sockets = world.map(|b| b.sockets.into_iter());
    let trigger = ShutdownTrigger::new();
    let mut own = Vec::with_capacity(count);
    for mesh in shards::mesh::full_mesh(count, config.shards.mesh_capacity) {
        let (replies, mailbox) = mailbox().map_err(ServerError::Mailbox)?;
        own.push(Some(ShardOwn {
            sockets: listen::ShardListeners {
                login: login_sockets.as_mut().and_then(Iterator::next),
                world: world_sockets.as_mut().and_then(Iterator::next),
            },
            mesh,
            shutdown: trigger.listener(&replies),
            mailbox,
            replies,
        }));
    }

    let backend = Arc::new(crate::store::open(&config.store, &config.tokens)?);
    let pool = DbPool::start(
        config.store.db_threads,
        config.store.queue_capacity,
        backend.services(),
    )?;
    let shutdown_grace = config.server.shutdown_grace();
    let stats: Arc<Vec<ShardStats>> = Arc::new((0..count).map(|_| ShardStats::default()).collect());
    let init = ShardInit {
        config: Arc::new(config),
        tls,
        pool: pool.clone(),
        writer: backend.writer().clone(),
        own: Arc::new(Mutex::new(own)),
        stats: stats.clone(),
        exit: shards::ExitGate::new(count),
    };
    let shards = match shards::spawn_shards(&specs, move |spec| shard::run(spec, init.clone())) {
        Ok(handles) => handles,
        Err(e) => {
            trigger.fire();
            pool.shutdown();
            backend.shutdown(shutdown_grace);
            return Err(e.into());
        }
    };
    let shown = |serves: bool, addr: SocketAddr| {
        if serves {
            addr.to_string()
        } else {
            "off".to_string()
        }
    };
    tracing::info!(
        shards = count,
        %role,
        login_addr = %shown(role.serves_login(), login_addr),
        world_addr = %shown(role.serves_world(), world_addr),
        tls = tls_on,
        "server started"
    );
    Ok(ServerHandle {
        trigger,
        shards,
        pool,
        backend,
        role,
        login_addr,
        world_addr,
        stats,
        shutdown_grace,
    })
}

fn shard_specs(config: &Config) -> Vec<ShardSpec> {
    let online = shards::executor::online_cores();
    let count = match config.shards.count {
        0 if config.shards.cores.is_empty() => online.len().max(1),
        0 => config.shards.cores.len(),
        n => n,
    };
    (0..count)
        .map(|id| {
            let core = if !config.shards.pin {
                None
            } else if config.shards.cores.is_empty() {
                Some(online.get(id % online.len().max(1)).copied().unwrap_or(id))
            } else {
                config.shards.cores.get(id).copied()
            };
            ShardSpec {
                id,
                core,
                io_memory: config.shards.io_memory_kib * 1024,
            }
        })
        .collect()
}

/// Takes shard `id`'s own parts out of the shared list (each shard takes its own once).
fn take_own(all: &Mutex<Vec<Option<ShardOwn>>>, id: usize) -> Option<ShardOwn> {
    all.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(id)
        .and_then(Option::take)
}
