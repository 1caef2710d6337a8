//! `idle`: N connections to the world service, each sends one `C_PING` and waits for the
//! `S_PONG`, then all sit idle (pinging every 15 s, as PROTOCOL.md asks of clients). With
//! `--server-pid`, the server's resident memory per connection is reported.

use std::time::Duration;

use gameserver::protocol::{pb, ServerMessage};

use crate::accounts::unexpected;
use crate::clock;
use crate::conn::FrameConn;
use crate::error::LoadgenError;
use crate::outcome::Outcome;
use crate::workers::{share, GateWaiter};

use super::{for_each_limited, Ctx};

/// How often an idle client pings, as PROTOCOL.md asks.
const PING_EVERY: Duration = Duration::from_secs(15);

/// The idle scenario's parameters.
#[derive(Debug, Clone)]
pub struct IdleParams {
    /// Connections, over all threads.
    pub conns: usize,
    /// How long they are held once all are open.
    pub hold: Duration,
    /// Idle on the login service instead of the world service.
    pub on_login: bool,
}

/// One worker of the idle scenario.
pub async fn worker(
    w: usize,
    ctx: Ctx,
    params: IdleParams,
    mut gate: GateWaiter,
) -> Result<Outcome, LoadgenError> {
    let range = share(params.conns, ctx.threads, w);
    let addr = if params.on_login {
        ctx.accounts.login
    } else {
        ctx.accounts.world
    };
    let c = ctx.clone();
    let opened = for_each_limited(range, ctx.connect_concurrency, move |i| {
        let c = c.clone();
        async move {
            let mut conn = c.connector.connect(addr, i).await?;
            ping(&mut conn).await?;
            c.ready();
            Ok(conn)
        }
    })
    .await;
    let conns = opened.inspect_err(|_| ctx.live.fail())?;
    let start = gate.wait().await?;
    let end = start + params.hold;
    let mut tasks = Vec::with_capacity(conns.len());
    for mut conn in conns {
        tasks.push(tokio::task::spawn_local(async move {
            let mut next_ping = start + PING_EVERY;
            loop {
                let wake = next_ping.min(end);
                match tokio::time::timeout_at(wake.into(), conn.recv_msg()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) if wake >= end => break,
                    Err(_) => {
                        conn.send(&pb::CPing {
                            client_time: clock::now_nanos(),
                        })
                        .await?;
                        next_ping += PING_EVERY;
                    }
                }
            }
            conn.close().await;
            Ok(())
        }));
    }
    let mut out = Outcome::default();
    for t in tasks {
        match t.await.map_err(|e| LoadgenError::Worker(e.to_string()))? {
            Ok(()) => {
                out.bump("held", 1);
                out.count_at(Duration::ZERO);
            }
            Err(e) => out.error(&e),
        }
    }
    Ok(out)
}

async fn ping(conn: &mut FrameConn) -> Result<(), LoadgenError> {
    conn.send(&pb::CPing {
        client_time: clock::now_nanos(),
    })
    .await?;
    match conn
        .recv_msg_within(Duration::from_secs(30), "S_PONG")
        .await?
    {
        ServerMessage::Pong(_) => Ok(()),
        other => Err(unexpected("S_PONG", &other)),
    }
}
