//! Cross-shard events over glommio's channel mesh, connected once at start-up.
//!
//! glommio's mesh can deadlock when every shard blocks sending into a full channel while none is
//! receiving (glommio issue #555). Here no task ever sends and receives: each peer gets a
//! receiver task that only drains and hands events to the handler, and a forwarder task fed by an
//! unbounded shard-local queue, so [`Mesh::publish`] never waits and receivers always make room.
//! Events from one shard reach another in the order they were published.

use std::rc::Rc;

use std::cell::RefCell;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel::{self, LocalSender};

/// The mesh could not be joined.
#[derive(Debug, thiserror::Error)]
#[error("cannot join the shard mesh")]
pub struct MeshError;

/// This shard's end of the mesh.
pub struct Mesh<T: Send> {
    peers: Vec<LocalSender<T>>,
    senders: Rc<Senders<T>>,
    receiving: RefCell<Vec<glommio::task::JoinHandle<()>>>,
}

impl<T: Send> std::fmt::Debug for Mesh<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl<T: Send + Clone + 'static> Mesh<T> {
    /// Joins the mesh (every shard must, with clones of one builder) and starts the tasks that
    /// feed `handler` with every event the other shards publish, in their order.
    pub async fn join(
        builder: MeshBuilder<T, Full>,
        handler: impl Fn(T) + 'static,
    ) -> Result<Self, MeshError> {
        let (senders, mut receivers) = builder.join().await.map_err(|_| MeshError)?;
        let handler = Rc::new(handler);
        let mut receiving = Vec::new();
        for (_, receiver) in receivers.streams() {
            let handler = handler.clone();
            receiving.push(
                glommio::spawn_local(async move {
                    while let Some(event) = receiver.recv().await {
                        handler(event);
                    }
                })
                .detach(),
            );
        }
        let senders = Rc::new(senders);
        let mut peers = Vec::new();
        for idx in 0..senders.nr_consumers() {
            if Some(idx) == senders.producer_id() {
                continue;
            }
            let (tx, rx) = local_channel::new_unbounded::<T>();
            let senders = senders.clone();
            glommio::spawn_local(async move {
                while let Some(event) = rx.recv().await {
                    if senders.send_to(idx, event).await.is_err() {
                        tracing::debug!(peer = idx, "mesh peer gone; dropping its events");
                        break;
                    }
                }
            })
            .detach();
            peers.push(tx);
        }
        Ok(Self {
            peers,
            senders,
            receiving: RefCell::new(receiving),
        })
    }

    /// Leaves the mesh: closes this shard's senders (peers' receivers end once they have taken
    /// what was sent) and waits until every peer has closed its own, so this shard's receivers
    /// have ended too. Every shard must call it before its executor exits, while all are still
    /// running: glommio notifies a peer's executor when a channel end is dropped, and notifying
    /// an executor that has already exited is not safe (its pending eventfd read may land in
    /// freed memory). Events still queued for sending are dropped.
    pub async fn close(&self) {
        self.senders.close();
        let receiving = std::mem::take(&mut *self.receiving.borrow_mut());
        for task in receiving {
            task.await;
        }
    }

    /// Sends `event` to every other shard without waiting.
    pub fn publish(&self, event: T) {
        let Some((last, rest)) = self.peers.split_last() else {
            return;
        };
        for peer in rest {
            let _ = peer.try_send(event.clone());
        }
        let _ = last.try_send(event);
    }

    /// The number of other shards.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }
}
