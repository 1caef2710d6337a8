//! What a [`Hub`](super::Hub) needs of a connection's send queue, so that each runtime can bring
//! its own: the glommio and tokio-per-core shards use the shard-local
//! [`Outbox`](shards::outbox::Outbox); the multi-thread tokio variant a thread-safe one.

use bytes::Bytes;
pub use shards::outbox::PushError;

/// A connection's bounded send queue, as the hub sees it. Clones are handles to one queue.
pub trait SendQueue: Clone {
    /// An empty queue refusing to hold more than `limit` bytes not yet written.
    fn with_limit(limit: usize) -> Self;
    /// Queues a frame; refused when closing or over the limit (nothing is queued then).
    fn push(&self, frame: Bytes) -> Result<(), PushError>;
    /// Closes the queue: `last` goes out after what is queued, or instead of it when
    /// `discard_queued`; nothing more is taken. Later calls do nothing.
    fn close(&self, last: Option<Bytes>, discard_queued: bool);
    /// Bytes queued or being written.
    fn pending_bytes(&self) -> usize;
}

impl SendQueue for shards::outbox::Outbox {
    fn with_limit(limit: usize) -> Self {
        Self::new(limit)
    }

    fn push(&self, frame: Bytes) -> Result<(), PushError> {
        shards::outbox::Outbox::push(self, frame)
    }

    fn close(&self, last: Option<Bytes>, discard_queued: bool) {
        shards::outbox::Outbox::close(self, last, discard_queued)
    }

    fn pending_bytes(&self) -> usize {
        shards::outbox::Outbox::pending_bytes(self)
    }
}
