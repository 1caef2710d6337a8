//! `broadcast` (seed 003's test): N clients enter the world and wait until each has seen every
//! other spawn; then every client chats once at the same moment. Measured: the time until every
//! client has every message (N × N deliveries, the sender's own echo included) and the latency
//! of each delivery.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gameserver::protocol::{pb, MessageId, RawFrame, ServerMessage};
use prost::Message;

use crate::clock;
use crate::conn::{disconnected, FrameConn};
use crate::error::LoadgenError;
use crate::outcome::Outcome;
use crate::workers::{share, GateWaiter};

use super::{Ctx, LoginPool};

/// The broadcast scenario's parameters.
#[derive(Debug, Clone)]
pub struct BroadcastParams {
    /// Clients in the world, over all threads.
    pub clients: usize,
    /// Account index of the first client.
    pub first_account: usize,
    /// How long the measured phase may take before clients give up.
    pub timeout: Duration,
}

/// The text of a chat sent at `sent_nanos`.
pub fn chat_text(sent_nanos: u64) -> String {
    format!("bc {sent_nanos}")
}

/// The send time in a chat text made by [`chat_text`] (or by the world scenario's chats).
pub fn parse_chat_time(text: &str) -> Option<u64> {
    let (_, nanos) = text.split_once(' ')?;
    nanos.parse().ok()
}

/// Counts the other players a client has seen: `S_SPAWN` adds, `S_DESPAWN` removes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpawnCount {
    seen: i64,
}

impl SpawnCount {
    /// Books one message.
    pub fn on_message(&mut self, msg: &ServerMessage) {
        match msg {
            ServerMessage::Spawn(s) => self.seen += s.players.len() as i64,
            ServerMessage::Despawn(d) => self.seen -= d.player_ids.len() as i64,
            _ => {}
        }
    }

    /// True once `others` other players are in view.
    pub fn has(&self, others: usize) -> bool {
        self.seen >= others as i64
    }
}

/// One worker of the broadcast scenario.
pub async fn worker(
    w: usize,
    ctx: Ctx,
    params: BroadcastParams,
    gate: GateWaiter,
) -> Result<Outcome, LoadgenError> {
    let range = share(params.clients, ctx.threads, w);
    let pool = LoginPool::new(&ctx);
    let out = Rc::new(RefCell::new(Outcome::default()));
    let mut tasks = Vec::with_capacity(range.len());
    for i in range {
        let (ctx, params, pool, out) = (ctx.clone(), params.clone(), pool.clone(), out.clone());
        let mut gate = gate.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let setup = async {
                let entered = pool.enter(params.first_account + i).await?;
                let mut conn = entered.conn;
                let mut spawns = SpawnCount::default();
                while !spawns.has(params.clients - 1) {
                    spawns.on_message(&conn.recv_msg().await?);
                }
                Ok::<FrameConn, LoadgenError>(conn)
            };
            let conn = tokio::select! {
                conn = setup => conn,
                _ = gate.aborted() => Err(LoadgenError::Aborted),
            };
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    ctx.live.fail();
                    return Err(e);
                }
            };
            ctx.ready();
            let start = gate.wait().await?;
            let result = receive_all(&mut conn, &ctx, &params, start, &out).await;
            ctx.live.finished.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = result {
                let mut o = out.borrow_mut();
                o.error(&e);
                o.bump("clients_incomplete", 1);
            }
            Ok(conn)
        }));
    }
    let mut conns = Vec::with_capacity(tasks.len());
    let mut failure = None;
    for t in tasks {
        match t.await.map_err(|e| LoadgenError::Worker(e.to_string()))? {
            Ok(conn) => conns.push(conn),
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // Leaving now would send despawns to clients other threads are still timing: wait for them.
    let give_up = Instant::now() + params.timeout;
    while ctx.live.finished.load(Ordering::Relaxed) < params.clients as u64
        && Instant::now() < give_up
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(conns);
    let out = out.borrow().clone();
    Ok(out)
}

/// Books one frame received at `received`: 1 if it was a chat.
fn book_chat(
    frame: RawFrame,
    start: Instant,
    received: Instant,
    out: &RefCell<Outcome>,
) -> Result<usize, LoadgenError> {
    if frame.id == MessageId::SChat as u16 {
        let chat = pb::SChat::decode(frame.body)
            .map_err(|e| LoadgenError::Unexpected(format!("bad S_CHAT: {e}")))?;
        let mut o = out.borrow_mut();
        if let Some(sent) = parse_chat_time(&chat.text) {
            o.latency("delivery")
                .record(received.saturating_duration_since(clock::instant_at(sent)));
        }
        o.count_at(received.saturating_duration_since(start));
        Ok(1)
    } else if frame.id == MessageId::SDisconnect as u16 {
        let d = pb::SDisconnect::decode(frame.body).unwrap_or_default();
        Err(disconnected(&d))
    } else {
        Ok(0)
    }
}

/// Sends this client's chat, then reads until every client's chat has arrived.
async fn receive_all(
    conn: &mut FrameConn,
    ctx: &Ctx,
    params: &BroadcastParams,
    start: Instant,
    out: &RefCell<Outcome>,
) -> Result<(), LoadgenError> {
    conn.send(&pb::CChat {
        text: chat_text(clock::now_nanos()),
    })
    .await?;
    let deadline = start + params.timeout;
    let mut got = 0usize;
    while got < params.clients {
        let frame = tokio::time::timeout_at(deadline.into(), conn.recv())
            .await
            .map_err(|_| LoadgenError::Timeout("every chat of the broadcast"))??;
        // Book this frame and every other one already read, then tell the progress bar once
        // (one shared counter bumped per delivery would bounce its cache line between threads).
        let received = Instant::now();
        let mut batch = 0;
        let mut next = Some(frame);
        while let Some(frame) = next {
            batch += book_chat(frame, start, received, out)?;
            next = conn.try_recv()?;
        }
        got += batch;
        ctx.live.add_done(batch as u64);
    }
    let took = Instant::now().saturating_duration_since(start);
    let mut o = out.borrow_mut();
    o.latency("client_complete").record(took);
    o.keep_max("completion_us", took.as_micros() as u64);
    o.bump("clients_complete", 1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_text_carries_the_send_time() {
        assert_eq!(parse_chat_time(&chat_text(987_654_321)), Some(987_654_321));
        assert_eq!(parse_chat_time("hello"), None);
        assert_eq!(parse_chat_time("hello there"), None);
    }

    fn spawn(n: u64) -> ServerMessage {
        ServerMessage::Spawn(pb::SSpawn {
            players: (0..n)
                .map(|id| pb::Player {
                    player_id: id,
                    ..Default::default()
                })
                .collect(),
        })
    }

    #[test]
    fn spawn_count_adds_spawns_and_removes_despawns() {
        let mut c = SpawnCount::default();
        assert!(c.has(0));
        c.on_message(&spawn(3));
        c.on_message(&ServerMessage::Despawn(pb::SDespawn {
            player_ids: vec![1],
        }));
        c.on_message(&ServerMessage::Chat(pb::SChat::default()));
        assert!(c.has(2));
        assert!(!c.has(3));
        c.on_message(&spawn(1));
        assert!(c.has(3));
    }
}
