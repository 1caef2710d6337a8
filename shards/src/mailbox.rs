//! Work handed to a shard from any thread, run on the shard's own thread.
//!
//! glommio can wake a task from a foreign thread, but that path has had reference-count bugs
//! (glommio issues #379 and #671), and a heap corruption was seen here once while DB threads
//! woke shard tasks directly. So nothing outside a shard touches its tasks' wakers: other threads
//! (the DB pool, the shutdown trigger) put closures in the shard's mailbox and nudge it through a
//! socketpair, which the shard awaits like any socket; the closures then run on the shard, where
//! every wake is local.

use std::io::{self, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use futures::io::AsyncReadExt;

/// Work for a shard: runs on the shard's thread.
pub type Delivery = Box<dyn FnOnce() + Send>;

/// The senders' shared end: dropping the last sender closes the socket, which ends
/// [`Mailbox::run`].
#[derive(Debug)]
struct Nudge {
    /// Set while the shard has been nudged and has not yet drained the queue.
    pending: Arc<AtomicBool>,
    socket: StdUnixStream,
}

/// The sending side: `Send + Sync`, cheap to clone, usable from any thread.
#[derive(Debug, Clone)]
pub struct MailboxSender {
    queue: Sender<Delivery>,
    nudge: Arc<Nudge>,
}

/// The shard's side. Move it into the shard and run [`Mailbox::run`] there.
#[derive(Debug)]
pub struct Mailbox {
    queue: Receiver<Delivery>,
    pending: Arc<AtomicBool>,
    wake: OwnedFd,
}

/// The mailbox's shard has stopped; the delivery was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shard's mailbox is closed")]
pub struct MailboxClosed;

/// A new mailbox (a socketpair and a queue).
pub fn mailbox() -> io::Result<(MailboxSender, Mailbox)> {
    let (socket, wake) = StdUnixStream::pair()?;
    socket.set_nonblocking(true)?;
    wake.set_nonblocking(true)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let pending = Arc::new(AtomicBool::new(false));
    Ok((
        MailboxSender {
            queue: tx,
            nudge: Arc::new(Nudge {
                pending: pending.clone(),
                socket,
            }),
        },
        Mailbox {
            queue: rx,
            pending,
            wake: wake.into(),
        },
    ))
}

impl MailboxSender {
    /// Hands `work` to the shard. Never blocks.
    pub fn send(&self, work: Delivery) -> Result<(), MailboxClosed> {
        self.queue.send(work).map_err(|_| MailboxClosed)?;
        if !self.nudge.pending.swap(true, Ordering::AcqRel) {
            // WouldBlock means the socket is full of nudges not yet read: the shard will wake.
            let _ = (&self.nudge.socket).write(&[1]);
        }
        Ok(())
    }
}

impl Mailbox {
    /// Runs deliveries as they arrive, on this shard, until every sender is gone. Must run
    /// inside a glommio executor.
    pub async fn run(self) {
        // SAFETY: the fd was moved out of the socketpair; the stream owns it from here.
        let mut wake = unsafe { glommio::net::UnixStream::from_raw_fd(self.wake.into_raw_fd()) };
        let mut buf = [0u8; 64];
        loop {
            // Clear the flag before draining: a sender that pushes after the drain sees it
            // clear and nudges again, so nothing waits unseen.
            self.pending.store(false, Ordering::Release);
            while let Ok(work) = self.queue.try_recv() {
                work();
            }
            match wake.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Every sender is gone: run what they left.
        while let Ok(work) = self.queue.try_recv() {
            work();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::thread::ThreadId;

    #[test]
    fn work_from_another_thread_runs_on_the_shard_in_order_and_wakes_a_local_task() {
        let (sender, mailbox) = mailbox().unwrap();
        let (give_tx, give_rx) = crossbeam_channel::bounded(1);
        let shard = crate::executor::test_shard(move || async move {
            glommio::spawn_local(mailbox.run()).detach();
            let (done_tx, done_rx) = futures::channel::oneshot::channel::<()>();
            give_tx.send(done_tx).unwrap();
            // Woken by a delivery that runs on this thread.
            done_rx.await.unwrap();
            std::thread::current().id()
        });
        let done_tx = give_rx.recv().unwrap();
        let seen: Arc<Mutex<Vec<(u32, ThreadId)>>> = Arc::default();
        for i in 0..100 {
            let seen = seen.clone();
            sender
                .send(Box::new(move || {
                    seen.lock().unwrap().push((i, std::thread::current().id()));
                }))
                .unwrap();
        }
        sender
            .send(Box::new(move || {
                let _ = done_tx.send(());
            }))
            .unwrap();
        let shard_thread = shard.join().unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 100);
        for (n, (i, thread)) in seen.iter().enumerate() {
            assert_eq!(*i as usize, n, "in order");
            assert_eq!(*thread, shard_thread, "on the shard's thread");
        }
    }

    #[test]
    fn run_ends_once_every_sender_is_gone_after_running_what_they_sent() {
        let (sender, mailbox) = mailbox().unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let other = sender.clone();
        sender
            .send(Box::new(move || flag.store(true, Ordering::SeqCst)))
            .unwrap();
        drop(sender);
        let shard = crate::executor::test_shard(move || mailbox.run());
        drop(other);
        shard.join().unwrap();
        assert!(ran.load(Ordering::SeqCst));
    }
}
