//! `login`: logins and enters at a fixed rate (open loop). Each operation is what a game client
//! does to join: connect to the login service, `C_LOGIN`, connect to the world service with the
//! token, `C_ENTER`, and (once `S_ENTER{OK}` is in) leave. Measured from the intended start:
//! the time to the token (`login`) and to `S_ENTER` (`login_enter`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::LoadgenError;
use crate::outcome::Outcome;
use crate::schedule::{phase, Schedule};
use crate::workers::{share, GateWaiter};

use super::{Ctx, LoginPool};

/// The login scenario's parameters.
#[derive(Debug, Clone)]
pub struct LoginParams {
    /// Operations per second over all threads.
    pub rate: f64,
    /// The measured window.
    pub duration: Duration,
    /// Accounts the operations cycle through (each enters again only after the others).
    pub accounts: usize,
    /// Account index of the first.
    pub first_account: usize,
    /// Operations in flight per thread above which a due one is skipped (and counted).
    pub max_in_flight: usize,
}

/// The account operation `k` of worker `w` uses, cycling through the worker's share.
pub fn account_for(params: &LoginParams, threads: usize, w: usize, k: u64) -> usize {
    let mine = share(params.accounts, threads, w);
    let len = mine.len().max(1) as u64;
    params.first_account + mine.start + (k % len) as usize
}

/// One worker of the login scenario.
pub async fn worker(
    w: usize,
    ctx: Ctx,
    params: LoginParams,
    mut gate: GateWaiter,
) -> Result<Outcome, LoadgenError> {
    let mine = share(params.accounts, ctx.threads, w);
    let pool = LoginPool::new(&ctx);
    let p2 = pool.clone();
    let c2 = ctx.clone();
    let first = params.first_account;
    let registered = super::for_each_limited(mine, ctx.connect_concurrency, move |i| {
        let (pool, ctx) = (p2.clone(), c2.clone());
        async move {
            pool.register(first + i).await?;
            ctx.ready();
            Ok(())
        }
    })
    .await;
    if let Err(e) = registered {
        ctx.live.fail();
        return Err(e);
    }
    let opened = gate.wait().await?;
    let end = opened + params.duration;
    let per_worker = params.rate / ctx.threads.max(1) as f64;
    let schedule = Schedule::new(opened, per_worker, phase(w, ctx.threads))
        .ok_or_else(|| LoadgenError::Args("--rate must be above 0".into()))?;
    let out = Rc::new(RefCell::new(Outcome::default()));
    let in_flight = Rc::new(Cell::new(0usize));
    let mut tasks = Vec::new();
    let last = schedule.due_by(end);
    let mut k = 0u64;
    while k < last {
        tokio::time::sleep_until(schedule.due(k).into()).await;
        let due = schedule.due_by(Instant::now()).min(last);
        while k < due {
            let intended = schedule.due(k);
            if in_flight.get() >= params.max_in_flight {
                out.borrow_mut().bump("skipped_in_flight_limit", 1);
            } else {
                let index = account_for(&params, ctx.threads, w, k);
                let (ctx, out, in_flight) = (ctx.clone(), out.clone(), in_flight.clone());
                in_flight.set(in_flight.get() + 1);
                tasks.push(tokio::task::spawn_local(async move {
                    let result = operation(&ctx, index, intended, opened, &out).await;
                    if let Err(e) = result {
                        out.borrow_mut().error(&e);
                    }
                    in_flight.set(in_flight.get() - 1);
                }));
            }
            k += 1;
        }
    }
    for t in tasks {
        t.await.map_err(|e| LoadgenError::Worker(e.to_string()))?;
    }
    let out = out.borrow().clone();
    Ok(out)
}

async fn operation(
    ctx: &Ctx,
    index: usize,
    intended: Instant,
    opened: Instant,
    out: &RefCell<Outcome>,
) -> Result<(), LoadgenError> {
    let user = ctx.accounts.username(index)?;
    let mut login = ctx.connector.connect(ctx.accounts.login, index).await?;
    let (_, token) = ctx.accounts.login(&mut login, &user).await?;
    out.borrow_mut()
        .latency("login")
        .record(Instant::now().saturating_duration_since(intended));
    login.close().await;
    let entered = ctx.accounts.enter(&ctx.connector, token, index).await?;
    let now = Instant::now();
    {
        let mut o = out.borrow_mut();
        o.latency("login_enter")
            .record(now.saturating_duration_since(intended));
        o.count_at(now.saturating_duration_since(opened));
    }
    ctx.live.add_done(1);
    entered.conn.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_cycles_through_its_own_accounts() {
        let params = LoginParams {
            rate: 10.0,
            duration: Duration::from_secs(1),
            accounts: 5,
            first_account: 100,
            max_in_flight: 10,
        };
        let w0: Vec<_> = (0..4).map(|k| account_for(&params, 2, 0, k)).collect();
        let w1: Vec<_> = (0..4).map(|k| account_for(&params, 2, 1, k)).collect();
        assert_eq!(w0, vec![100, 101, 102, 100]);
        assert_eq!(w1, vec![103, 104, 103, 104]);
    }
}
