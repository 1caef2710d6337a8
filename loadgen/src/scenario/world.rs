//! `world`: N players in the world, each moving R times a second and chatting C times a second
//! (open loop, at fixed intended times). Measured: the latency from the intended send time to
//! the arrival of each `S_MOVE` and `S_CHAT` at every receiver, and deliveries per second.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use gameserver::protocol::{pb, MessageId, RawFrame};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::clock;
use crate::conn::{disconnected, FrameReader, FrameWriter};
use crate::error::LoadgenError;
use crate::outcome::Outcome;
use crate::schedule::{phase, Schedule};
use crate::workers::{share, GateWaiter};

use super::broadcast::{parse_chat_time, SpawnCount};
use super::{Ctx, LoginPool};

/// How long receivers keep reading after the window, for messages still on their way.
const DRAIN: Duration = Duration::from_secs(1);

/// The world scenario's parameters.
#[derive(Debug, Clone)]
pub struct WorldParams {
    /// Players, over all threads.
    pub players: usize,
    /// Account index of the first player.
    pub first_account: usize,
    /// Moves per second per player.
    pub move_rate: f64,
    /// Chats per second per player (0: none).
    pub chat_rate: f64,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// The measured window of a world run.
#[derive(Debug, Clone, Copy)]
struct Span {
    opened: Instant,
    start: Instant,
    end: Instant,
}

/// One worker of the world scenario.
pub async fn worker(
    w: usize,
    ctx: Ctx,
    params: WorldParams,
    gate: GateWaiter,
) -> Result<Outcome, LoadgenError> {
    let range = share(params.players, ctx.threads, w);
    let pool = LoginPool::new(&ctx);
    let out = Rc::new(RefCell::new(Outcome::default()));
    let mut tasks = Vec::with_capacity(range.len());
    for i in range {
        let (ctx, params, pool, out) = (ctx.clone(), params.clone(), pool.clone(), out.clone());
        let mut gate = gate.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let setup = async {
                let mut conn = pool.enter(params.first_account + i).await?.conn;
                let mut spawns = SpawnCount::default();
                while !spawns.has(params.players - 1) {
                    spawns.on_message(&conn.recv_msg().await?);
                }
                Ok(conn)
            };
            let conn = tokio::select! {
                conn = setup => conn,
                _ = gate.aborted() => Err(LoadgenError::Aborted),
            };
            let conn = conn.inspect_err(|_| ctx.live.fail())?;
            ctx.ready();
            let opened = gate.wait().await?;
            let span = Span {
                opened,
                start: opened + params.warmup,
                end: opened + params.warmup + params.duration,
            };
            let (reader, writer) = conn.into_split();
            let (sent, received) = tokio::join!(
                send(writer, &params, i, span),
                receive(reader, span, &out, &ctx)
            );
            let mut o = out.borrow_mut();
            match sent {
                Ok(n) => o.bump("sent", n),
                Err(e) => o.error(&e),
            }
            if let Err(e) = received {
                o.error(&e);
            }
            Ok::<(), LoadgenError>(())
        }));
    }
    let mut failure = None;
    for t in tasks {
        if let Err(e) = t.await.map_err(|e| LoadgenError::Worker(e.to_string()))? {
            failure.get_or_insert(e);
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let out = out.borrow().clone();
    Ok(out)
}

/// Sends this player's moves and chats at their intended times until the window ends.
async fn send<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    params: &WorldParams,
    i: usize,
    span: Span,
) -> Result<u64, LoadgenError> {
    let p = phase(i, params.players);
    let moves = Schedule::new(span.opened, params.move_rate, p);
    let chats = Schedule::new(span.opened, params.chat_rate, p);
    let (mut next_move, mut next_chat) = (0u64, 0u64);
    let mut sent = 0;
    loop {
        let due_move = moves.map(|s| s.due(next_move));
        let due_chat = chats.map(|s| s.due(next_chat));
        let Some(next) = [due_move, due_chat].into_iter().flatten().min() else {
            return Ok(0);
        };
        if next >= span.end {
            return Ok(sent);
        }
        tokio::time::sleep_until(next.into()).await;
        let now = Instant::now();
        if let Some(s) = moves {
            let due = s.due_by(now).min(s.due_by(span.end));
            while next_move < due {
                let (x, y) = clock::micros_to_coords(clock::nanos_at(s.due(next_move)) / 1000);
                writer.queue(&pb::CMove { x, y, z: 0.0 })?;
                next_move += 1;
                sent += 1;
            }
        }
        if let Some(s) = chats {
            let due = s.due_by(now).min(s.due_by(span.end));
            while next_chat < due {
                let nanos = clock::nanos_at(s.due(next_chat));
                writer.queue(&pb::CChat {
                    text: format!("w {nanos}"),
                })?;
                next_chat += 1;
                sent += 1;
            }
        }
        writer.flush().await?;
    }
}

/// Reads until the window is over (plus a drain), timing every move and chat that arrives.
async fn receive<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    span: Span,
    out: &RefCell<Outcome>,
    ctx: &Ctx,
) -> Result<(), LoadgenError> {
    let give_up = span.end + DRAIN;
    loop {
        let frame = match tokio::time::timeout_at(give_up.into(), reader.recv()).await {
            Err(_) => return Ok(()),
            Ok(frame) => frame?,
        };
        let mut counted = book(&frame, span, out)?;
        while let Some(frame) = reader.try_recv()? {
            counted += book(&frame, span, out)?;
        }
        ctx.live.add_done(counted);
    }
}

/// Which kind of delivery a frame is, and when it was meant to leave (µs since the epoch).
fn sent_micros(frame: &RawFrame) -> Result<Option<(&'static str, u64)>, LoadgenError> {
    let bad = |e: prost::DecodeError| LoadgenError::Unexpected(format!("bad frame: {e}"));
    Ok(match frame.id {
        id if id == MessageId::SMove as u16 => {
            let m = pb::SMove::decode(frame.body.clone()).map_err(bad)?;
            clock::coords_to_micros(m.x, m.y).map(|t| ("move", t))
        }
        id if id == MessageId::SChat as u16 => {
            let c = pb::SChat::decode(frame.body.clone()).map_err(bad)?;
            parse_chat_time(&c.text).map(|t| ("chat", t / 1000))
        }
        id if id == MessageId::SDisconnect as u16 => {
            let d = pb::SDisconnect::decode(frame.body.clone()).unwrap_or_default();
            return Err(disconnected(&d));
        }
        _ => None,
    })
}

/// Books one frame; 1 if it was a delivery counted in the window.
fn book(frame: &RawFrame, span: Span, out: &RefCell<Outcome>) -> Result<u64, LoadgenError> {
    let received = Instant::now();
    let mut o = out.borrow_mut();
    if frame.id == MessageId::SError as u16 {
        let e = pb::SError::decode(frame.body.clone()).unwrap_or_default();
        o.errors
            .add(format!("s_error_{}_for_{}", e.result, e.request_id));
        return Ok(0);
    }
    let Some((kind, micros)) = sent_micros(frame)? else {
        return Ok(0);
    };
    let sent = clock::instant_at(micros * 1000);
    if sent >= span.start && sent < span.end {
        o.latency(kind)
            .record(received.saturating_duration_since(sent));
        o.count_at(received.saturating_duration_since(span.start));
        return Ok(1);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use gameserver::protocol::{encode_frame, FrameDecoder};

    fn frame_of<M: gameserver::protocol::Body>(msg: &M) -> RawFrame {
        let mut wire = BytesMut::new();
        encode_frame(msg, &mut wire).unwrap();
        let mut d = FrameDecoder::new(65535);
        d.extend(&wire);
        d.next_frame().unwrap().unwrap()
    }

    #[test]
    fn moves_and_chats_carry_their_send_time() {
        let (x, y) = clock::micros_to_coords(5_000_123);
        let mv = frame_of(&pb::SMove {
            player_id: 1,
            x,
            y,
            z: 0.0,
        });
        assert_eq!(sent_micros(&mv).unwrap(), Some(("move", 5_000_123)));
        let chat = frame_of(&pb::SChat {
            player_id: 1,
            text: "w 7000000".into(),
        });
        assert_eq!(sent_micros(&chat).unwrap(), Some(("chat", 7000)));
        let pong = frame_of(&pb::SPong::default());
        assert_eq!(sent_micros(&pong).unwrap(), None);
    }

    #[test]
    fn a_disconnect_ends_the_receiver() {
        let d = frame_of(&pb::SDisconnect {
            reason: pb::DisconnectReason::RateLimited as i32,
            detail: "too many".into(),
        });
        assert!(matches!(
            sent_micros(&d),
            Err(LoadgenError::Disconnected { reason, .. }) if reason == "rate_limited"
        ));
    }
}
