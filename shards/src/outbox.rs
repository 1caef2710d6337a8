//! A connection's send queue: bounded in bytes, fed by any task of the shard, flushed by the
//! connection's writer with vectored writes.
//!
//! Hand-written rather than a channel because the queue must count bytes (not messages) for the
//! slow-consumer cap, hand the writer a whole batch at once for one `writev`, and let a kick
//! replace everything still queued with one last frame. It lives on one shard, so it needs no
//! lock: `Rc<RefCell<..>>` and two waker slots.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{Buf, Bytes};
use futures::io::{AsyncWrite, AsyncWriteExt};

/// The most frames handed to one vectored write.
const MAX_BATCH: usize = 64;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// Queuing it would put more than the limit in flight: the peer is a slow consumer.
    #[error("send queue over its limit")]
    Overflow,
    /// The connection is closing; nothing more is sent.
    #[error("connection closing")]
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// Bytes queued plus bytes handed to the writer and not yet written.
    pending: usize,
    limit: usize,
    closing: bool,
    writer: Option<Waker>,
    watcher: Option<Waker>,
}

impl State {
    fn wake_all(&mut self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
        if let Some(w) = self.watcher.take() {
            w.wake();
        }
    }
}

/// A connection's bounded send queue. Cloning gives another handle to the same queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    state: Rc<RefCell<State>>,
}

impl Outbox {
    /// An empty queue that refuses to hold more than `limit` bytes not yet written.
    pub fn new(limit: usize) -> Self {
        Self {
            state: Rc::new(RefCell::new(State {
                limit,
                ..State::default()
            })),
        }
    }

    /// Queues a frame. Refused when closing, or when it would exceed the limit (the frame is
    /// then not queued; the caller decides to kick).
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut s = self.state.borrow_mut();
        if s.closing {
            return Err(PushError::Closed);
        }
        if s.pending + frame.len() > s.limit {
            return Err(PushError::Overflow);
        }
        s.pending += frame.len();
        s.queue.push_back(frame);
        if let Some(w) = s.writer.take() {
            w.wake();
        }
        Ok(())
    }

    /// Bytes queued or being written.
    pub fn pending_bytes(&self) -> usize {
        self.state.borrow().pending
    }

    /// True once [`Outbox::close`] has been called.
    pub fn is_closing(&self) -> bool {
        self.state.borrow().closing
    }

    /// Closes the queue: nothing more is accepted; `last` (an `S_DISCONNECT`, say) is sent after
    /// what is queued, or instead of it when `discard_queued` (a slow consumer gets no more of
    /// its backlog). The writer ends once it has written everything. Later calls do nothing.
    pub fn close(&self, last: Option<Bytes>, discard_queued: bool) {
        let mut s = self.state.borrow_mut();
        if s.closing {
            return;
        }
        s.closing = true;
        if discard_queued {
            let dropped: usize = s.queue.drain(..).map(|b| b.len()).sum();
            s.pending -= dropped;
        }
        if let Some(frame) = last {
            s.pending += frame.len();
            s.queue.push_back(frame);
        }
        s.wake_all();
    }

    /// Resolves once the queue is closing (for the reader, to stop reading a kicked connection).
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut s = self.state.borrow_mut();
            if s.closing {
                Poll::Ready(())
            } else {
                s.watcher = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// The writer: writes queued frames to `sink` in batches with vectored writes until the
    /// queue is closed and drained, then closes the sink's write side.
    pub async fn run_writer<W: AsyncWrite + Unpin>(&self, sink: &mut W) -> io::Result<()> {
        let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_BATCH);
        loop {
            let closing = poll_fn(|cx| {
                let mut s = self.state.borrow_mut();
                if s.queue.is_empty() && !s.closing {
                    s.writer = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                let n = s.queue.len().min(MAX_BATCH);
                batch.extend(s.queue.drain(..n));
                Poll::Ready(s.closing)
            })
            .await;
            if batch.is_empty() && closing {
                sink.flush().await?;
                return sink.close().await;
            }
            let written = write_all_vectored(sink, &mut batch).await;
            self.state.borrow_mut().pending -= written;
            if batch.is_empty() {
                sink.flush().await?;
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection stopped taking data",
                ));
            }
        }
    }
}

/// Writes every buffer of `batch` with vectored writes, emptying it; returns the bytes written.
/// On an error or a zero-length write it stops, leaving the unwritten rest in `batch`.
async fn write_all_vectored<W: AsyncWrite + Unpin>(sink: &mut W, batch: &mut Vec<Bytes>) -> usize {
    let mut written = 0;
    let mut first = 0;
    while first < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch[first..].iter().map(|b| IoSlice::new(b)).collect();
        let n = match sink.write_vectored(&slices).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        written += n;
        let mut left = n;
        while left > 0 {
            let front = &mut batch[first];
            if front.len() <= left {
                left -= front.len();
                first += 1;
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    batch.drain(..first);
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use std::pin::Pin;
    use std::task::Context;

    /// A sink that takes at most `max` bytes per write, to exercise partial writes.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
        writes: usize,
        closed: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut room = self.max;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room);
                self.out.extend_from_slice(&b[..take]);
                room -= take;
                n += take;
                if room == 0 {
                    break;
                }
            }
            self.writes += 1;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.closed = true;
            Poll::Ready(Ok(()))
        }
    }

    fn sink(max: usize) -> Trickle {
        Trickle {
            out: Vec::new(),
            max,
            writes: 0,
            closed: false,
        }
    }

    #[test]
    fn frames_are_written_in_order_through_partial_writes_then_closed() {
        let outbox = Outbox::new(1 << 20);
        for word in ["alpha", "beta", "gamma", "delta"] {
            outbox.push(Bytes::from(word)).unwrap();
        }
        outbox.close(Some(Bytes::from_static(b"bye")), false);
        let mut s = sink(3);
        block_on(outbox.run_writer(&mut s)).unwrap();
        assert_eq!(s.out, b"alphabetagammadeltabye");
        assert!(s.closed);
        assert_eq!(outbox.pending_bytes(), 0);
    }

    #[test]
    fn one_vectored_write_carries_a_whole_batch() {
        let outbox = Outbox::new(1 << 20);
        for _ in 0..10 {
            outbox.push(Bytes::from_static(b"0123456789")).unwrap();
        }
        outbox.close(None, false);
        let mut s = sink(usize::MAX);
        block_on(outbox.run_writer(&mut s)).unwrap();
        assert_eq!(s.out.len(), 100);
        assert_eq!(s.writes, 1);
    }

    #[test]
    fn over_the_limit_is_refused_and_nothing_is_queued() {
        let outbox = Outbox::new(10);
        outbox.push(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(b"12345")),
            Err(PushError::Overflow)
        );
        assert_eq!(outbox.pending_bytes(), 6);
        outbox.push(Bytes::from_static(b"1234")).unwrap();
    }

    #[test]
    fn closing_with_discard_sends_only_the_last_frame() {
        let outbox = Outbox::new(100);
        outbox.push(Bytes::from_static(b"backlog")).unwrap();
        outbox.close(Some(Bytes::from_static(b"kick")), true);
        assert_eq!(
            outbox.push(Bytes::from_static(b"late")),
            Err(PushError::Closed)
        );
        let mut s = sink(usize::MAX);
        block_on(outbox.run_writer(&mut s)).unwrap();
        assert_eq!(s.out, b"kick");
    }

    #[test]
    fn closed_resolves_after_close() {
        let outbox = Outbox::new(100);
        let watcher = outbox.clone();
        outbox.close(None, false);
        block_on(watcher.closed());
        assert!(watcher.is_closing());
    }
}
