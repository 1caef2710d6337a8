//! `echo`: N connections send `C_ECHO` and time the `S_ECHO`. Closed loop: each connection
//! keeps `depth` echoes in flight and sends the next when one returns. Open loop (`--rate`):
//! echoes leave at fixed intended times whatever comes back, and latency counts from the
//! intended time, so queueing in the server is not hidden.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use gameserver::protocol::{pb, MessageId, RawFrame};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::clock;
use crate::conn::{disconnected, FrameConn, FrameReader, FrameWriter};
use crate::error::LoadgenError;
use crate::outcome::Outcome;
use crate::schedule::{phase, Schedule};
use crate::workers::{share, GateWaiter};

use super::{for_each_limited, Ctx};

/// How long an open-loop run waits after the window for the last answers.
const DRAIN: Duration = Duration::from_secs(2);

/// The echo scenario's parameters.
#[derive(Debug, Clone)]
pub struct EchoParams {
    /// Connections, over all threads.
    pub conns: usize,
    /// Bytes of `data` in each `C_ECHO` (at least 8: the send time rides in the first 8).
    pub payload: usize,
    /// Echoes in flight per connection (closed loop).
    pub depth: usize,
    /// Open loop: echoes per second over all connections. `None`: closed loop.
    pub rate: Option<f64>,
    /// Load before the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Echo on the login service instead of the world service.
    pub on_login: bool,
}

/// The `data` of an echo sent at `sent_nanos` (since the run's epoch): the time, then filler.
pub fn payload(sent_nanos: u64, len: usize) -> Bytes {
    let mut data = BytesMut::with_capacity(len.max(8));
    data.put_u64_le(sent_nanos);
    data.resize(len.max(8), 0xa5);
    data.freeze()
}

/// The send time an `S_ECHO` body carries, if it is one of ours.
pub fn sent_nanos(frame: &RawFrame) -> Option<u64> {
    if frame.id != MessageId::SEcho as u16 {
        return None;
    }
    let echo = pb::SEcho::decode(frame.body.clone()).ok()?;
    let head: [u8; 8] = echo.data.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// Where an echo falls relative to the window.
#[derive(Debug, Clone, Copy)]
pub struct EchoWindow {
    /// Start of the measured window.
    pub start: Instant,
    /// End of the measured window.
    pub end: Instant,
}

impl EchoWindow {
    /// Records an answer to an echo sent (or, open loop, due) at `sent` and received at
    /// `received`: only echoes sent inside the window count.
    pub fn record(&self, out: &mut Outcome, sent: Instant, received: Instant) {
        if sent >= self.start && sent < self.end {
            out.latency("echo")
                .record(received.saturating_duration_since(sent));
            out.count_at(received.saturating_duration_since(self.start));
        }
    }
}

/// One worker of the echo scenario.
pub async fn worker(
    w: usize,
    ctx: Ctx,
    params: EchoParams,
    mut gate: GateWaiter,
) -> Result<Outcome, LoadgenError> {
    let range = share(params.conns, ctx.threads, w);
    let addr = if params.on_login {
        ctx.accounts.login
    } else {
        ctx.accounts.world
    };
    let c = ctx.clone();
    let conns = for_each_limited(range.clone(), ctx.connect_concurrency, move |i| {
        let c = c.clone();
        async move {
            let conn = c.connector.connect(addr, i).await?;
            c.ready();
            Ok(conn)
        }
    })
    .await?;
    let opened = gate.wait().await?;
    let window = EchoWindow {
        start: opened + params.warmup,
        end: opened + params.warmup + params.duration,
    };
    let out = Rc::new(RefCell::new(Outcome::default()));
    let mut tasks = Vec::with_capacity(conns.len());
    for (conn, i) in conns.into_iter().zip(range) {
        let (out, params, ctx) = (out.clone(), params.clone(), ctx.clone());
        tasks.push(tokio::task::spawn_local(async move {
            let result = match params.rate {
                None => closed_loop(conn, &params, window, &out, &ctx).await,
                Some(rate) => {
                    let per_conn = rate / params.conns.max(1) as f64;
                    let schedule = Schedule::new(opened, per_conn, phase(i, params.conns))
                        .ok_or_else(|| LoadgenError::Args("--rate must be above 0".into()))?;
                    open_loop(conn, &params, schedule, window, &out, &ctx).await
                }
            };
            if let Err(e) = result {
                out.borrow_mut().error(&e);
            }
            Ok::<(), LoadgenError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| LoadgenError::Worker(e.to_string()))??;
    }
    let out = out.borrow().clone();
    Ok(out)
}

async fn closed_loop(
    mut conn: FrameConn,
    params: &EchoParams,
    window: EchoWindow,
    out: &RefCell<Outcome>,
    ctx: &Ctx,
) -> Result<(), LoadgenError> {
    let send = |conn: &mut FrameConn| {
        conn.queue(&pb::CEcho {
            data: payload(clock::now_nanos(), params.payload),
        })
    };
    for _ in 0..params.depth.max(1) {
        send(&mut conn)?;
    }
    conn.flush().await?;
    out.borrow_mut().bump("sent", params.depth.max(1) as u64);
    loop {
        let frame = match tokio::time::timeout_at(window.end.into(), conn.recv()).await {
            Err(_) => return Ok(()),
            Ok(frame) => frame?,
        };
        let mut answered = handle(&frame, window, out)?;
        while let Some(frame) = conn.try_recv()? {
            answered += handle(&frame, window, out)?;
        }
        ctx.live.add_done(answered);
        if Instant::now() >= window.end {
            return Ok(());
        }
        for _ in 0..answered {
            send(&mut conn)?;
        }
        out.borrow_mut().bump("sent", answered);
        conn.flush().await?;
    }
}

/// Books one frame: 1 when it answered an echo.
fn handle(
    frame: &RawFrame,
    window: EchoWindow,
    out: &RefCell<Outcome>,
) -> Result<u64, LoadgenError> {
    let received = Instant::now();
    match sent_nanos(frame) {
        Some(sent) => {
            window.record(&mut out.borrow_mut(), clock::instant_at(sent), received);
            Ok(1)
        }
        None if frame.id == MessageId::SDisconnect as u16 => {
            let d = pb::SDisconnect::decode(frame.body.clone()).unwrap_or_default();
            Err(disconnected(&d))
        }
        None => {
            out.borrow_mut().bump("unexpected_frames", 1);
            Ok(0)
        }
    }
}

async fn open_loop(
    conn: FrameConn,
    params: &EchoParams,
    schedule: Schedule,
    window: EchoWindow,
    out: &RefCell<Outcome>,
    ctx: &Ctx,
) -> Result<(), LoadgenError> {
    let (reader, writer) = conn.into_split();
    let last_due = schedule.due_by(window.end);
    let (sent, received) = tokio::join!(
        open_loop_writer(writer, params, schedule, last_due),
        open_loop_reader(reader, window, last_due, out, ctx)
    );
    let mut o = out.borrow_mut();
    o.bump("sent", sent.as_ref().copied().unwrap_or(0));
    drop(o);
    sent?;
    received
}

async fn open_loop_writer<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    params: &EchoParams,
    schedule: Schedule,
    last_due: u64,
) -> Result<u64, LoadgenError> {
    let mut next = 0u64;
    while next < last_due {
        tokio::time::sleep_until(schedule.due(next).into()).await;
        // Everything due by now goes out at once, each stamped with its own intended time.
        let due = schedule.due_by(Instant::now()).min(last_due);
        while next < due {
            writer.queue(&pb::CEcho {
                data: payload(clock::nanos_at(schedule.due(next)), params.payload),
            })?;
            next += 1;
        }
        writer.flush().await?;
    }
    Ok(next)
}

async fn open_loop_reader<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    window: EchoWindow,
    expected: u64,
    out: &RefCell<Outcome>,
    ctx: &Ctx,
) -> Result<(), LoadgenError> {
    let give_up = window.end + DRAIN;
    let mut answered = 0;
    while answered < expected {
        let frame = match tokio::time::timeout_at(give_up.into(), reader.recv()).await {
            Err(_) => {
                out.borrow_mut().bump("unanswered", expected - answered);
                return Ok(());
            }
            Ok(frame) => frame?,
        };
        let n = handle(&frame, window, out)?;
        answered += n;
        ctx.live.add_done(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gameserver::protocol::{encode_frame, FrameDecoder};

    #[test]
    fn the_send_time_survives_the_echo() {
        let data = payload(123_456_789, 100);
        assert_eq!(data.len(), 100);
        // the server answers with the same bytes under S_ECHO
        let mut wire = BytesMut::new();
        encode_frame(&pb::SEcho { data }, &mut wire).unwrap();
        let mut decoder = FrameDecoder::new(65535);
        decoder.extend(&wire);
        let frame = decoder.next_frame().unwrap().unwrap();
        assert_eq!(sent_nanos(&frame), Some(123_456_789));
    }

    #[test]
    fn payloads_are_never_shorter_than_the_timestamp() {
        assert_eq!(payload(1, 0).len(), 8);
    }

    #[test]
    fn frames_that_are_not_our_echo_carry_no_time() {
        let frame = RawFrame {
            id: MessageId::SPong as u16,
            body: Bytes::new(),
        };
        assert_eq!(sent_nanos(&frame), None);
        let short = RawFrame {
            id: MessageId::SEcho as u16,
            body: Bytes::from_static(&[0x0a, 0x02, 1, 2]),
        };
        assert_eq!(sent_nanos(&short), None);
    }

    #[test]
    fn only_echoes_sent_inside_the_window_count() {
        let start = Instant::now();
        let w = EchoWindow {
            start,
            end: start + Duration::from_secs(1),
        };
        let mut out = Outcome::default();
        let ms = Duration::from_millis;
        w.record(&mut out, start - ms(1), start + ms(1)); // sent in warm-up
        w.record(&mut out, start + ms(10), start + ms(12)); // counts
        w.record(&mut out, start + ms(999), start + ms(1003)); // sent inside, back after: counts
        w.record(&mut out, start + ms(1000), start + ms(1001)); // sent after the window
        assert_eq!(out.count, 2);
        let s = out.latencies["echo"].summary().unwrap();
        assert!((s.p50_us - 2000.0).abs() < 5.0, "{s:?}");
        assert!((s.max_us - 4000.0).abs() < 5.0, "{s:?}");
    }
}
