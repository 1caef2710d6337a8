//! `churn`: clients that log in, enter, chat once, wait for their own chat to come back, and
//! drop (politely, by reset, or alternating), over and over. Measured: cycles per second and the
//! time of one cycle.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use gameserver::protocol::{pb, ServerMessage};

use crate::clock;
use crate::error::LoadgenError;
use crate::outcome::Outcome;
use crate::workers::{share, GateWaiter};

use super::{Ctx, LoginPool};

/// How long a churner waits after a failed cycle before the next.
const AFTER_ERROR: Duration = Duration::from_millis(50);

/// How a churner leaves the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DropMode {
    /// TLS close_notify / FIN.
    Close,
    /// TCP reset, as a crashed client.
    Reset,
    /// Alternate close and reset.
    Mixed,
}

impl DropMode {
    /// Whether cycle `n` ends with a reset.
    pub fn resets(self, n: u64) -> bool {
        match self {
            Self::Close => false,
            Self::Reset => true,
            Self::Mixed => n % 2 == 1,
        }
    }
}

/// The churn scenario's parameters.
#[derive(Debug, Clone)]
pub struct ChurnParams {
    /// Churning clients, over all threads (each its own account).
    pub clients: usize,
    /// Account index of the first.
    pub first_account: usize,
    /// The measured window.
    pub duration: Duration,
    /// How clients leave.
    pub drop: DropMode,
}

/// One worker of the churn scenario.
pub async fn worker(
    w: usize,
    ctx: Ctx,
    params: ChurnParams,
    mut gate: GateWaiter,
) -> Result<Outcome, LoadgenError> {
    let mine = share(params.clients, ctx.threads, w);
    let pool = LoginPool::new(&ctx);
    let (p2, c2, first) = (pool.clone(), ctx.clone(), params.first_account);
    let registered = super::for_each_limited(mine.clone(), ctx.connect_concurrency, move |i| {
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
    let out = Rc::new(RefCell::new(Outcome::default()));
    let mut tasks = Vec::new();
    for i in mine {
        let (ctx, pool, out, params) = (ctx.clone(), pool.clone(), out.clone(), params.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                let began = Instant::now();
                match cycle(&ctx, &pool, params.first_account + i, params.drop.resets(n)).await {
                    Ok(()) => {
                        let now = Instant::now();
                        let mut o = out.borrow_mut();
                        if now < end {
                            o.latency("cycle").record(now - began);
                            o.count_at(now - opened);
                        }
                        drop(o);
                        ctx.live.add_done(1);
                    }
                    Err(e) => {
                        out.borrow_mut().error(&e);
                        tokio::time::sleep(AFTER_ERROR).await;
                    }
                }
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| LoadgenError::Worker(e.to_string()))?;
    }
    let out = out.borrow().clone();
    Ok(out)
}

async fn cycle(ctx: &Ctx, pool: &LoginPool, index: usize, reset: bool) -> Result<(), LoadgenError> {
    let token = pool.token(index, false).await?;
    let entered = ctx.accounts.enter(&ctx.connector, token, index).await?;
    let mut conn = entered.conn;
    let text = format!("ch {}", clock::now_nanos());
    conn.send(&pb::CChat { text: text.clone() }).await?;
    loop {
        match conn
            .recv_msg_within(Duration::from_secs(10), "own chat")
            .await?
        {
            ServerMessage::Chat(c) if c.player_id == entered.id && c.text == text => break,
            _ => {}
        }
    }
    if reset {
        conn.reset();
    } else {
        conn.close().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_modes_pick_reset_or_close() {
        assert!(!DropMode::Close.resets(1));
        assert!(DropMode::Reset.resets(0));
        assert_eq!(
            (0..4)
                .map(|n| DropMode::Mixed.resets(n))
                .collect::<Vec<_>>(),
            vec![false, true, false, true]
        );
    }
}
