//! Cross-shard event channels: a full mesh of glommio shared channels, made on one thread before
//! the shards start and connected by each shard when it starts.
//!
//! Why not glommio's `MeshBuilder`: in glommio 0.9 it is `Send` and `Clone` but shares an `Rc`
//! between its clones, so the clones that the shards drop on their own threads race on a
//! non-atomic reference count. A lost update frees the shared state while a shard still uses it,
//! and the next count update writes into freed memory (this was the heap corruption seen as
//! `tcache_thread_shutdown(): unaligned tcache chunk detected`; see docs/glommio-bugs.md).
//! Here every channel is made once by [`full_mesh`], each end moves to exactly one shard, and
//! nothing is shared but glommio's own thread-safe channel state.
//!
//! glommio's shared channels can deadlock when every shard blocks sending into a full channel
//! while none is receiving (glommio issue #555). Here no task ever sends and receives: each peer
//! gets a receiver task that only drains and hands events to the handler, and a forwarder task
//! fed by an unbounded shard-local queue, so [`Mesh::publish`] never waits and receivers always
//! make room. Events from one shard reach another in the order they were published.

use std::cell::RefCell;
use std::rc::Rc;

use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};

/// One shard's ends of the mesh: a sender to every other shard and a receiver from each.
/// `Send`, so it can be handed to the shard's thread; connected there by [`Mesh::join`].
pub struct MeshEnds<T: Send> {
    shard: usize,
    senders: Vec<SharedSender<T>>,
    receivers: Vec<SharedReceiver<T>>,
}

impl<T: Send> std::fmt::Debug for MeshEnds<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshEnds")
            .field("shard", &self.shard)
            .field("peers", &self.senders.len())
            .finish()
    }
}

/// Makes the channels of a full mesh between `shards` shards, each holding at most `capacity`
/// events in flight. `ends[i]` belongs to shard `i`. Call it once, before the shards start.
pub fn full_mesh<T: Send + 'static>(shards: usize, capacity: usize) -> Vec<MeshEnds<T>> {
    let mut ends: Vec<MeshEnds<T>> = (0..shards)
        .map(|shard| MeshEnds {
            shard,
            senders: Vec::with_capacity(shards.saturating_sub(1)),
            receivers: Vec::with_capacity(shards.saturating_sub(1)),
        })
        .collect();
    for from in 0..shards {
        for to in (0..shards).filter(|&to| to != from) {
            let (sender, receiver) = shared_channel::new_bounded(capacity.max(1));
            ends[from].senders.push(sender);
            ends[to].receivers.push(receiver);
        }
    }
    ends
}

/// This shard's end of the mesh.
pub struct Mesh<T: Send> {
    /// The forwarders' queues, one per peer; emptied by [`Mesh::close`].
    peers: RefCell<Vec<LocalSender<T>>>,
    forwarding: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    senders: Rc<Vec<ConnectedSender<T>>>,
    receiving: RefCell<Vec<glommio::task::JoinHandle<()>>>,
}

impl<T: Send> std::fmt::Debug for Mesh<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("peers", &self.senders.len())
            .finish()
    }
}

impl<T: Send + Clone + 'static> Mesh<T> {
    /// Connects this shard's ends (every shard must join with its own ends; this returns once
    /// all peers have connected theirs, or dropped them) and starts the tasks that feed `handler`
    /// with every event the other shards publish, in their order.
    pub async fn join(ends: MeshEnds<T>, handler: impl Fn(T) + 'static) -> Self {
        // Connect every end at once: each connect waits for its peer's.
        let receivers: Vec<_> = ends
            .receivers
            .into_iter()
            .map(|r| glommio::spawn_local(r.connect()).detach())
            .collect();
        let senders: Vec<_> = ends
            .senders
            .into_iter()
            .map(|s| glommio::spawn_local(s.connect()).detach())
            .collect();
        let handler = Rc::new(handler);
        let mut receiving = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            let Some(receiver) = receiver.await else {
                continue;
            };
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
        let mut connected = Vec::with_capacity(senders.len());
        for sender in senders {
            if let Some(sender) = sender.await {
                connected.push(sender);
            }
        }
        let senders = Rc::new(connected);
        let mut peers = Vec::with_capacity(senders.len());
        let mut forwarding = Vec::with_capacity(senders.len());
        for idx in 0..senders.len() {
            let (tx, rx) = local_channel::new_unbounded::<T>();
            let senders = senders.clone();
            forwarding.push(
                glommio::spawn_local(async move {
                    while let Some(event) = rx.recv().await {
                        if senders[idx].send(event).await.is_err() {
                            tracing::debug!(peer = idx, "mesh peer gone; dropping its events");
                            break;
                        }
                    }
                })
                .detach(),
            );
            peers.push(tx);
        }
        Self {
            peers: RefCell::new(peers),
            forwarding: RefCell::new(forwarding),
            senders,
            receiving: RefCell::new(receiving),
        }
    }

    /// Leaves the mesh: sends what is still queued, closes this shard's senders (peers'
    /// receivers end once they have taken everything) and waits until every peer has closed its
    /// own, so this shard's receivers have ended too. Every shard must call it before its
    /// executor exits, while all are still running: glommio notifies a peer's executor when a
    /// channel end is dropped, and an executor should not be notified once it has exited.
    /// Publishing after `close` does nothing.
    pub async fn close(&self) {
        // Dropping the queues' senders ends each forwarder once it has sent what is queued.
        self.peers.borrow_mut().clear();
        let forwarding = std::mem::take(&mut *self.forwarding.borrow_mut());
        for task in forwarding {
            task.await;
        }
        for sender in self.senders.iter() {
            sender.close();
        }
        let receiving = std::mem::take(&mut *self.receiving.borrow_mut());
        for task in receiving {
            task.await;
        }
    }

    /// Sends `event` to every other shard without waiting.
    pub fn publish(&self, event: T) {
        let peers = self.peers.borrow();
        let Some((last, rest)) = peers.split_last() else {
            return;
        };
        for peer in rest {
            let _ = peer.try_send(event.clone());
        }
        let _ = last.try_send(event);
    }

    /// The number of other shards.
    pub fn peer_count(&self) -> usize {
        self.senders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs one executor per set of ends; each publishes `0..n` tagged with its shard and
    /// returns what it received, once every shard has closed the mesh.
    fn run_mesh(shards: usize, n: u32, capacity: usize) -> Vec<Vec<(usize, u32)>> {
        let gate = crate::ExitGate::new(shards);
        let handles: Vec<_> = full_mesh::<(usize, u32)>(shards, capacity)
            .into_iter()
            .enumerate()
            .map(|(shard, ends)| {
                let gate = gate.clone();
                crate::executor::test_shard(move || async move {
                    let seen = Rc::new(RefCell::new(Vec::new()));
                    let (got_all, all_in) = local_channel::new_bounded::<()>(1);
                    let sink = seen.clone();
                    let expected = n as usize * (shards - 1);
                    let mesh = Mesh::join(ends, move |e| {
                        sink.borrow_mut().push(e);
                        if sink.borrow().len() == expected {
                            let _ = got_all.try_send(());
                        }
                    })
                    .await;
                    assert_eq!(mesh.peer_count(), shards - 1);
                    for i in 0..n {
                        mesh.publish((shard, i));
                    }
                    if expected > 0 {
                        all_in.recv().await;
                    }
                    mesh.close().await;
                    assert!(gate.arrive_and_wait(Duration::from_secs(10)));
                    let seen = seen.borrow().clone();
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn every_shard_gets_every_peers_events_in_publish_order() {
        // A capacity far below the event count: forwarders must wait for room, never deadlock.
        let received = run_mesh(3, 2000, 8);
        for (shard, seen) in received.iter().enumerate() {
            for peer in (0..3).filter(|&p| p != shard) {
                let from_peer: Vec<u32> = seen
                    .iter()
                    .filter(|(p, _)| *p == peer)
                    .map(|(_, i)| *i)
                    .collect();
                assert_eq!(
                    from_peer,
                    (0..2000).collect::<Vec<_>>(),
                    "{peer} -> {shard}"
                );
            }
            assert!(seen.iter().all(|(p, _)| *p != shard), "no event to itself");
        }
    }

    #[test]
    fn a_single_shard_mesh_has_no_peers() {
        assert_eq!(run_mesh(1, 10, 4), vec![Vec::new()]);
    }

    #[test]
    fn ends_are_made_for_every_ordered_pair() {
        let ends = full_mesh::<u8>(4, 2);
        assert_eq!(ends.len(), 4);
        for (i, e) in ends.iter().enumerate() {
            assert_eq!(e.shard, i);
            assert_eq!(e.senders.len(), 3);
            assert_eq!(e.receivers.len(), 3);
        }
    }
}
