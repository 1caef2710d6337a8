//! The scenarios. Each has a worker function that runs on one loadgen thread with its share of
//! the clients, reports readiness through [`Live::ready`], waits at the start gate, and returns
//! its [`Outcome`].

pub mod broadcast;
pub mod churn;
pub mod echo;
pub mod idle;
pub mod login;
pub mod world;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::accounts::{Accounts, Entered};
use crate::conn::{Connector, FrameConn};
use crate::error::LoadgenError;
use crate::stats::Live;

/// What every worker of a run shares.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// How to connect.
    pub connector: Connector,
    /// Addresses and accounts.
    pub accounts: Accounts,
    /// Counters for the progress bar.
    pub live: Arc<Live>,
    /// Loadgen threads in the run.
    pub threads: usize,
    /// Connections one thread opens (or provisions) at once.
    pub connect_concurrency: usize,
}

impl Ctx {
    /// Marks one client ready for the measured phase.
    pub fn ready(&self) {
        self.live.ready.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `task(i)` for every `i` in `items` on this thread, at most `limit` at once, and returns
/// the results in order. Stops at the first error.
pub async fn for_each_limited<T, F, Fut>(
    items: std::ops::Range<usize>,
    limit: usize,
    task: F,
) -> Result<Vec<T>, LoadgenError>
where
    T: 'static,
    F: Fn(usize) -> Fut + 'static,
    Fut: Future<Output = Result<T, LoadgenError>> + 'static,
{
    let permits = Rc::new(Semaphore::new(limit.max(1)));
    let task = Rc::new(task);
    let mut handles = Vec::with_capacity(items.len());
    for i in items {
        let permits = permits.clone();
        let task = task.clone();
        handles.push(tokio::task::spawn_local(async move {
            let _permit = permits.acquire().await;
            task(i).await
        }));
    }
    let mut out = Vec::with_capacity(handles.len());
    let mut failure = None;
    for h in handles {
        match h.await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(LoadgenError::Worker(e.to_string()));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Login connections shared by the client tasks of one thread: a task borrows one to register
/// (if need be) and log in, then enters the world on its own connection. At most `limit` tasks
/// provision at once; connections are reused, so a big run pays few handshakes.
#[derive(Debug)]
pub struct LoginPool {
    ctx: Ctx,
    idle: RefCell<Vec<FrameConn>>,
    permits: Semaphore,
    opened: Cell<usize>,
}

impl LoginPool {
    /// A pool for `ctx`, provisioning at most `ctx.connect_concurrency` accounts at once.
    pub fn new(ctx: &Ctx) -> Rc<Self> {
        Rc::new(Self {
            ctx: ctx.clone(),
            idle: RefCell::new(Vec::new()),
            permits: Semaphore::new(ctx.connect_concurrency.max(1)),
            opened: Cell::new(0),
        })
    }

    /// Registers account `index` if need be.
    pub async fn register(&self, index: usize) -> Result<(), LoadgenError> {
        let _permit = self.permits.acquire().await;
        let user = self.ctx.accounts.username(index)?;
        let mut login = self.take().await?;
        let result = self.ctx.accounts.register(&mut login, &user).await;
        self.give_back(login, &result);
        result
    }

    /// Logs account `index` in, registering it first when `register` says so: its token.
    pub async fn token(&self, index: usize, register: bool) -> Result<String, LoadgenError> {
        let _permit = self.permits.acquire().await;
        self.token_unlimited(index, register).await
    }

    async fn token_unlimited(&self, index: usize, register: bool) -> Result<String, LoadgenError> {
        let user = self.ctx.accounts.username(index)?;
        let mut login = self.take().await?;
        let result = async {
            if register {
                self.ctx.accounts.register(&mut login, &user).await?;
            }
            self.ctx.accounts.login(&mut login, &user).await
        }
        .await;
        self.give_back(login, &result);
        result.map(|(_, token)| token)
    }

    /// Registers (if need be), logs in and enters account `index`.
    pub async fn enter(&self, index: usize) -> Result<Entered, LoadgenError> {
        let _permit = self.permits.acquire().await;
        let token = self.token_unlimited(index, true).await?;
        self.ctx
            .accounts
            .enter(&self.ctx.connector, token, index)
            .await
    }

    async fn take(&self) -> Result<FrameConn, LoadgenError> {
        let popped = self.idle.borrow_mut().pop();
        match popped {
            Some(conn) => Ok(conn),
            None => {
                let n = self.opened.get();
                self.opened.set(n + 1);
                self.ctx.connector.connect(self.ctx.accounts.login, n).await
            }
        }
    }

    /// Keeps a login connection for the next task unless it failed.
    fn give_back<T>(&self, conn: FrameConn, result: &Result<T, LoadgenError>) {
        let broken = matches!(
            result,
            Err(LoadgenError::Io(_) | LoadgenError::Closed | LoadgenError::Timeout(_))
                | Err(LoadgenError::Disconnected { .. })
        );
        if !broken {
            self.idle.borrow_mut().push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limited_tasks_all_run_and_keep_their_order() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let running = Rc::new(std::cell::Cell::new(0usize));
        let peak = Rc::new(std::cell::Cell::new(0usize));
        let (r, p) = (running.clone(), peak.clone());
        let out = local
            .block_on(&rt, async move {
                for_each_limited(0..20, 3, move |i| {
                    let (r, p) = (r.clone(), p.clone());
                    async move {
                        r.set(r.get() + 1);
                        p.set(p.get().max(r.get()));
                        tokio::task::yield_now().await;
                        r.set(r.get() - 1);
                        Ok(i * 2)
                    }
                })
                .await
            })
            .unwrap();
        assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.get(), 3);
    }

    #[test]
    fn the_first_error_is_returned() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let result = local.block_on(&rt, async {
            for_each_limited(0..5, 2, |i| async move {
                if i == 3 {
                    Err(LoadgenError::Closed)
                } else {
                    Ok(i)
                }
            })
            .await
        });
        assert!(matches!(result, Err(LoadgenError::Closed)));
    }
}
