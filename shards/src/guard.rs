//! Containing a panic to the task that caused it. A panicking glommio task unwinds the whole
//! executor (glommio issue #671), which would drop every session of the shard; a session's
//! future runs inside [`contain_panic`] so that only that session ends.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

/// Runs `fut`; a panic inside it becomes `Err` with the panic's message.
pub async fn contain_panic<F: Future>(fut: F) -> Result<F::Output, String> {
    AssertUnwindSafe(fut)
        .catch_unwind()
        .await
        .map_err(panic_message)
}

/// The message a panic carried (`panic!` with a string or a format), or a placeholder.
pub fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "panic with a non-string payload".to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_task_ends_alone_and_the_executor_keeps_running() {
        let handle = crate::executor::test_shard(|| async {
            let (tx, rx) = glommio::channels::local_channel::new_bounded::<u32>(1);
            let panicking = glommio::spawn_local(contain_panic(async {
                glommio::yield_if_needed().await;
                panic!("session bug {}", 7);
            }));
            let healthy = glommio::spawn_local(async move { rx.recv().await });
            let caught = panicking.await;
            tx.send(42).await.unwrap();
            (caught, healthy.await)
        });
        let (caught, healthy) = handle.join().unwrap();
        assert_eq!(caught, Err("session bug 7".to_string()));
        assert_eq!(healthy, Some(42));
    }

    #[test]
    fn a_task_that_does_not_panic_returns_its_value() {
        let out = futures::executor::block_on(contain_panic(async { 5 }));
        assert_eq!(out, Ok(5));
    }
}
