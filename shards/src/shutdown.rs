//! One shutdown signal that every shard can await. glommio has no pool-wide shutdown (its issue
//! #303), so the process fires this once (from a signal-handling thread, say) and each shard
//! drains itself.

use std::sync::{Arc, Mutex, PoisonError};

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};

/// Fires the signal. Clones fire the same signal. When the last clone is dropped the signal
/// fires too, so a lost owner never leaves shards waiting forever.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

/// Resolves once the signal has fired. Cheap to clone; `Send`, so it can go to every shard.
#[derive(Debug, Clone)]
pub struct ShutdownListener {
    rx: Shared<oneshot::Receiver<()>>,
}

/// A new, unfired signal.
pub fn shutdown_signal() -> (ShutdownTrigger, ShutdownListener) {
    let (tx, rx) = oneshot::channel();
    (
        ShutdownTrigger {
            tx: Arc::new(Mutex::new(Some(tx))),
        },
        ShutdownListener { rx: rx.shared() },
    )
}

impl ShutdownTrigger {
    /// Fires the signal; later calls do nothing.
    pub fn fire(&self) {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(tx) = tx {
            let _ = tx.send(());
        }
    }
}

impl ShutdownListener {
    /// Waits for the signal.
    pub async fn wait(&self) {
        let _ = self.rx.clone().await;
    }

    /// True once the signal has fired (or its trigger is gone).
    pub fn fired(&self) -> bool {
        self.rx.peek().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn every_listener_wakes_once_fired() {
        let (trigger, listener) = shutdown_signal();
        let other = listener.clone();
        assert!(!listener.fired());
        let t2 = trigger.clone();
        std::thread::spawn(move || t2.fire()).join().unwrap();
        block_on(listener.wait());
        block_on(other.wait());
        trigger.fire();
    }

    #[test]
    fn dropping_every_trigger_fires() {
        let (trigger, listener) = shutdown_signal();
        drop(trigger);
        block_on(listener.wait());
    }
}
