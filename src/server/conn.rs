//! One connection's life on a glommio shard: admission at accept, the TLS handshake under an
//! absolute deadline, then the connection core ([`Connection`]) fed with bytes and time while
//! the outbox's writer sends. The rules (deadlines, decoding, what each message does) are the
//! core's; this file only moves bytes, time and events. A panic anywhere in a connection's task
//! ends that connection alone, and its place is given back.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::rc::Rc;
use std::time::Instant;

use futures::future::{select, Either};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use futures_lite::future::or;
use shards::guard::contain_panic;
use shards::net::Tcp;
use shards::outbox::Outbox;
use shards::split::split;

use crate::hub::micros_since_start;
use crate::protocol::pb::DisconnectReason;
use crate::protocol::{ServerMessage, Service};
use crate::service::{self, RequestKind};
use crate::session::{disconnect, Admit, Connection, Event, Limit, Now};
use crate::world::ConnId;

use super::shard::Shard;

/// Bytes read from the socket at a time.
const READ_BUF: usize = 4096;

/// Runs `fut` until `deadline`; `None` when the deadline came first.
pub(super) async fn with_deadline<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let wait = deadline.saturating_duration_since(Instant::now());
    or(async { Some(fut.await) }, async {
        glommio::timer::sleep(wait).await;
        None
    })
    .await
}

/// Serves one accepted connection until it closes.
pub(super) async fn serve(shard: Rc<Shard>, stream: glommio::net::TcpStream, service: Service) {
    let accepted_at = Instant::now();
    let peer = stream.peer_addr().ok();
    let ip = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
    let (admit, warning) = shard.admission.borrow_mut().admit(ip, accepted_at);
    if let Some(w) = warning {
        tracing::warn!(
            shard = shard.id,
            %service,
            limit = ?w.limit,
            refused = w.refused,
            "connection limit reached; refusing connections"
        );
    }
    match admit {
        Admit::Accept => {}
        Admit::RefuseSilently(_) => return,
        Admit::RefuseWithMessage(limit) => {
            let refused = contain_panic(refuse(&shard, stream, accepted_at, limit)).await;
            if let Err(panic) = refused {
                tracing::error!(shard = shard.id, ?peer, %panic, "refusal panicked");
            }
            shard.admission.borrow_mut().refusal_done();
            return;
        }
    }
    let (id, outbox) = shard.with_hub(|h| h.register());
    shard.stat_add(1);
    let served = contain_panic(serve_admitted(
        &shard,
        stream,
        service,
        (id, outbox.clone()),
        peer,
        accepted_at,
    ))
    .await;
    if let Err(panic) = served {
        tracing::error!(shard = shard.id, conn = id, ?peer, %panic, "session panicked; closed it");
        outbox.close(None, true);
    }
    let left = contain_panic(async { shard.with_hub(|h| h.unregister(id)) }).await;
    if let Err(panic) = left {
        tracing::error!(shard = shard.id, conn = id, %panic, "leaving the world panicked");
    }
    shard.admission.borrow_mut().release(ip);
    shard.stat_add(-1);
}

/// Answers a connection over the limit with `S_DISCONNECT{SERVER_FULL}` (after the handshake,
/// within the handshake and flush deadlines) and closes it.
async fn refuse(shard: &Shard, stream: glommio::net::TcpStream, accepted_at: Instant, _: Limit) {
    let outbox = Outbox::new(shard.config.server.send_queue_limit_bytes);
    let last = shards::chunk::encode(|buf| {
        disconnect(DisconnectReason::ServerFull, "server full").encode(buf)
    })
    .ok();
    outbox.close(last, false);
    let flush = || Instant::now() + shard.policy.close_flush_timeout;
    let tcp = Tcp::new(stream);
    match &shard.tls {
        Some(acceptor) => {
            let deadline = accepted_at + shard.config.tls.handshake_timeout();
            if let Some(Ok(tls)) = with_deadline(deadline, acceptor.accept(tcp)).await {
                let (_, mut wr) = split(tls);
                let _ = with_deadline(flush(), outbox.run_writer(&mut wr)).await;
            }
        }
        None => {
            let (_, mut wr) = split(tcp);
            let _ = with_deadline(flush(), outbox.run_writer(&mut wr)).await;
        }
    }
}

async fn serve_admitted(
    shard: &Rc<Shard>,
    stream: glommio::net::TcpStream,
    service: Service,
    (id, outbox): (ConnId, Outbox),
    peer: Option<SocketAddr>,
    accepted_at: Instant,
) {
    let conn = Connection::new(
        service,
        shard.policy,
        &shard.config.rate,
        accepted_at,
        (shard.id, id, peer),
    );
    let tcp = Tcp::new(stream);
    match &shard.tls {
        Some(acceptor) => {
            let deadline = accepted_at + shard.config.tls.handshake_timeout();
            match with_deadline(deadline, acceptor.accept(tcp)).await {
                Some(Ok(tls)) => drive(shard, tls, conn, id, &outbox, peer).await,
                Some(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                None => tracing::debug!(?peer, "TLS handshake deadline passed"),
            }
        }
        None => drive(shard, tcp, conn, id, &outbox, peer).await,
    }
}

/// Runs the reader (bytes and time into the core, events out) beside the outbox's writer until
/// the connection is done, then gives the writer until the flush deadline.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    shard: &Rc<Shard>,
    stream: S,
    mut conn: Connection,
    id: ConnId,
    outbox: &Outbox,
    peer: Option<SocketAddr>,
) {
    let (mut rd, mut wr) = split(stream);
    let ip = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
    let reader = pin!(read_loop(shard, &mut rd, &mut conn, id, outbox, ip));
    let writer = pin!(outbox.run_writer(&mut wr));
    match select(reader, writer).await {
        Either::Left(((), writer)) => {
            // The core has queued its last message (if any); nothing more is sent.
            outbox.close(None, false);
            let flush_until = Instant::now() + shard.policy.close_flush_timeout;
            if with_deadline(flush_until, writer).await.is_none() {
                tracing::debug!(
                    shard = shard.id,
                    conn = id,
                    "last frames not flushed in time"
                );
            }
        }
        Either::Right((Err(e), _)) => {
            tracing::debug!(shard = shard.id, conn = id, error = %e, "write failed");
        }
        Either::Right((Ok(()), _)) => {}
    }
}

enum Wake {
    Data(usize),
    Gone,
    Closing,
    Deadline,
}

/// Feeds the core until it is closing: what it reads, the time its deadlines come, the answers
/// to its requests; carries out its events.
async fn read_loop<R: AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    rd: &mut R,
    conn: &mut Connection,
    id: ConnId,
    outbox: &Outbox,
    ip: IpAddr,
) {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Send(msg) => shard.with_hub(|h| h.send(id, &msg)),
                Event::Request(request) => {
                    let kind = RequestKind::of(&request);
                    let answer = match shard.db(move |s| service::run(s, request, ip)).await {
                        Ok(answer) => answer,
                        Err(why) => service::no_answer(kind, why, shard.id),
                    };
                    conn.complete(answer, Now::current());
                }
                Event::Enter(player) => {
                    shard.with_hub(|h| h.enter(id, player, micros_since_start()))
                }
                Event::Chat(text) => shard.with_hub(|h| h.chat(id, text)),
                Event::Move(position) => shard.with_hub(|h| h.move_to(id, position)),
                Event::Close { last } => {
                    close_with(outbox, last.as_ref());
                    return;
                }
            }
        }
        if conn.is_closing() || outbox.is_closing() {
            return;
        }
        let wait = conn
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()));
        let woke = or(
            async {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => Wake::Gone,
                    Ok(n) => Wake::Data(n),
                }
            },
            or(
                async {
                    outbox.closed().await;
                    Wake::Closing
                },
                async {
                    match wait {
                        Some(wait) => glommio::timer::sleep(wait).await,
                        None => futures::future::pending::<()>().await,
                    }
                    Wake::Deadline
                },
            ),
        )
        .await;
        match woke {
            Wake::Data(n) => conn.handle_input(&buf[..n], Now::current()),
            Wake::Gone => {
                conn.handle_eof();
                return;
            }
            Wake::Closing => return,
            Wake::Deadline => conn.handle_timeout(Now::current()),
        }
    }
}

/// Sends `last` after what is queued and closes the outbox.
fn close_with(outbox: &Outbox, last: Option<&ServerMessage>) {
    let frame = last.and_then(|msg| shards::chunk::encode(|buf| msg.encode(buf)).ok());
    outbox.close(frame, false);
}
