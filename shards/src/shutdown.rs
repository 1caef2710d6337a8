//! One shutdown signal that reaches every shard. glommio has no pool-wide shutdown (its issue
//! #303): the process fires this once (from a signal-handling thread, say) and each shard drains
//! itself. The signal travels through each shard's [`Mailbox`](crate::mailbox::Mailbox), so the
//! shard's tasks are woken on their own thread.

use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};

use crate::mailbox::MailboxSender;

#[derive(Debug, Default)]
struct Targets {
    fired: bool,
    shards: Vec<(MailboxSender, oneshot::Sender<()>)>,
}

impl Targets {
    fn fire(&mut self) {
        self.fired = true;
        for (mailbox, tx) in self.shards.drain(..) {
            // A stopped shard has no one left to tell.
            let _ = mailbox.send(Box::new(move || {
                let _ = tx.send(());
            }));
        }
    }
}

impl Drop for Targets {
    fn drop(&mut self) {
        // The last trigger is gone: shards must not wait forever.
        self.fire();
    }
}

/// Fires the signal. Clones fire the same signal; when the last clone is dropped it fires too.
#[derive(Debug, Clone, Default)]
pub struct ShutdownTrigger {
    targets: Arc<Mutex<Targets>>,
}

/// One shard's view of the signal: resolves once it has fired. `Send`, so it can be made before
/// the shard starts; awaited only on that shard.
#[derive(Debug, Clone)]
pub struct ShutdownListener {
    rx: Shared<oneshot::Receiver<()>>,
}

impl ShutdownTrigger {
    /// A new, unfired signal with no shard listening yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A listener for the shard whose mailbox is `mailbox`. Made after firing, it is already
    /// fired once that mailbox runs.
    pub fn listener(&self, mailbox: &MailboxSender) -> ShutdownListener {
        let (tx, rx) = oneshot::channel();
        let mut targets = self.targets.lock().unwrap_or_else(PoisonError::into_inner);
        targets.shards.push((mailbox.clone(), tx));
        if targets.fired {
            targets.fire();
        }
        ShutdownListener { rx: rx.shared() }
    }

    /// Fires the signal; later calls do nothing more.
    pub fn fire(&self) {
        self.targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fire();
    }
}

impl ShutdownListener {
    /// Waits for the signal.
    pub async fn wait(&self) {
        let _ = self.rx.clone().await;
    }

    /// True once the signal has reached this shard.
    pub fn fired(&self) -> bool {
        self.rx.peek().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::mailbox;

    fn shard_waiting_for(
        listener: ShutdownListener,
        mailbox: crate::mailbox::Mailbox,
    ) -> glommio::ExecutorJoinHandle<bool> {
        crate::executor::test_shard(move || async move {
            glommio::spawn_local(mailbox.run()).detach();
            let before = listener.fired();
            listener.wait().await;
            !before && listener.fired()
        })
    }

    #[test]
    fn every_shard_wakes_once_fired_from_another_thread() {
        let trigger = ShutdownTrigger::new();
        let shards: Vec<_> = (0..2)
            .map(|_| {
                let (sender, mb) = mailbox().unwrap();
                shard_waiting_for(trigger.listener(&sender), mb)
            })
            .collect();
        let t = trigger.clone();
        std::thread::spawn(move || t.fire()).join().unwrap();
        for shard in shards {
            assert!(shard.join().unwrap());
        }
    }

    #[test]
    fn dropping_every_trigger_fires() {
        let trigger = ShutdownTrigger::new();
        let (sender, mb) = mailbox().unwrap();
        let shard = shard_waiting_for(trigger.listener(&sender), mb);
        drop(trigger);
        assert!(shard.join().unwrap());
    }
}
