//! Listening sockets: one per shard per service, all bound to the same port with SO_REUSEPORT so
//! the kernel spreads connections over the shards.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use super::ServerError;

/// Backlog of each listening socket.
const BACKLOG: i32 = 1024;

/// The sockets of one service, one per shard, and the address they share.
pub(super) struct Bound {
    pub(super) addr: SocketAddr,
    pub(super) sockets: Vec<TcpListener>,
}

/// One shard's listening sockets: one per service its process's role serves.
pub(super) struct ShardListeners {
    pub(super) login: Option<TcpListener>,
    pub(super) world: Option<TcpListener>,
}

/// Binds `count` sockets to `addr`. With port 0 the first socket picks a free port and the
/// others join it.
pub(super) fn bind_reuseport(addr: SocketAddr, count: usize) -> Result<Bound, ServerError> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = bind_one(addr).map_err(|source| ServerError::Bind { addr, source })?;
        addr = socket
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        sockets.push(socket);
    }
    Ok(Bound { addr, sockets })
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
