//! One connection's life on a shard: the connection limit, the TLS handshake under an absolute
//! deadline, the reader (frames in, deadlines for the first frame and idleness) and the writer
//! (the outbox), with a panic in the session contained to the session.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::time::Instant;

use futures::future::{select, Either};
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use futures_lite::future::or;
use shards::net::Tcp;
use shards::outbox::Outbox;
use shards::split::split;

use crate::protocol::pb::DisconnectReason;
use crate::protocol::{ClientMessage, FrameDecoder, ProtocolError, ServerMessage, Service};
use crate::session::{disconnect, LoginSession, WorldSession};
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
    let tcp = Tcp::new(stream);
    let peer = tcp.peer_addr().ok();
    let registered = shard.register_conn();
    match &shard.tls {
        Some(acceptor) => {
            let deadline = accepted_at + shard.config.tls.handshake_timeout();
            match with_deadline(deadline, acceptor.accept(tcp)).await {
                Some(Ok(tls)) => {
                    drive(&shard, tls, service, registered.clone(), peer, accepted_at).await
                }
                Some(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                None => tracing::debug!(?peer, "TLS handshake deadline passed"),
            }
        }
        None => drive(&shard, tcp, service, registered.clone(), peer, accepted_at).await,
    }
    if let Some((id, _)) = registered {
        shard.unregister_conn(id);
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    shard: &Rc<Shard>,
    stream: S,
    service: Service,
    registered: Option<(ConnId, Outbox)>,
    peer: Option<SocketAddr>,
    accepted_at: Instant,
) {
    let (mut rd, mut wr) = split(stream);
    let flush_deadline = || Instant::now() + shard.config.server.close_flush_timeout();
    let Some((id, outbox)) = registered else {
        shard.note_refused(service);
        let outbox = Outbox::new(shard.config.server.send_queue_limit_bytes);
        let last = shard.encode(&disconnect(DisconnectReason::ServerFull, "server full"));
        outbox.close(last, false);
        let _ = with_deadline(flush_deadline(), outbox.run_writer(&mut wr)).await;
        return;
    };
    let session = shards::guard::contain_panic(async {
        let reader = pin!(read_loop(
            shard,
            id,
            service,
            &mut rd,
            &outbox,
            peer,
            accepted_at
        ));
        let writer = pin!(outbox.run_writer(&mut wr));
        match select(reader, writer).await {
            Either::Left((last, writer)) => {
                outbox.close(last.and_then(|m| shard.encode(&m)), false);
                if with_deadline(flush_deadline(), writer).await.is_none() {
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
    })
    .await;
    if let Err(panic) = session {
        tracing::error!(shard = shard.id, conn = id, ?peer, %panic, "session panicked; closed it");
    }
}

enum Read {
    Data(usize),
    Gone,
    Closing,
    Deadline,
}

/// Reads frames and hands them to the service until the connection ends. Returns the last
/// message to send before closing, if any.
async fn read_loop<R: AsyncRead + Unpin>(
    shard: &Rc<Shard>,
    conn: ConnId,
    service: Service,
    rd: &mut R,
    outbox: &Outbox,
    peer: Option<SocketAddr>,
    accepted_at: Instant,
) -> Option<ServerMessage> {
    let cfg = &shard.config.server;
    let mut decoder = FrameDecoder::new(cfg.max_client_frame);
    let mut buf = vec![0u8; READ_BUF];
    let mut handler = match service {
        Service::Login => Handler::Login(LoginSession),
        Service::World => Handler::World(WorldSession::new(&shard.config.rate, accepted_at)),
    };
    // An absolute deadline, moved only by complete frames: trickling bytes does not keep a
    // connection alive (slowloris).
    let mut deadline = accepted_at + cfg.first_frame_timeout();
    loop {
        let read = or(
            async {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => Read::Gone,
                    Ok(n) => Read::Data(n),
                }
            },
            or(
                async {
                    outbox.closed().await;
                    Read::Closing
                },
                async {
                    glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())).await;
                    Read::Deadline
                },
            ),
        )
        .await;
        let n = match read {
            Read::Data(n) => n,
            Read::Gone | Read::Closing => return None,
            Read::Deadline => {
                tracing::debug!(shard = shard.id, conn, ?peer, "idle timeout");
                return Some(disconnect(
                    DisconnectReason::IdleTimeout,
                    "no frame in time",
                ));
            }
        };
        decoder.extend(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return Some(protocol_error(shard, conn, peer, &e)),
            };
            deadline = Instant::now() + cfg.idle_timeout();
            let msg = match ClientMessage::decode(&frame, service) {
                Ok(msg) => msg,
                Err(e) => return Some(protocol_error(shard, conn, peer, &e)),
            };
            let outcome = match &mut handler {
                Handler::Login(session) => {
                    super::login::handle(shard, conn, session, msg, peer).await
                }
                Handler::World(session) => super::world::handle(shard, conn, session, msg).await,
            };
            if let Err(last) = outcome {
                return last;
            }
            if outbox.is_closing() {
                return None;
            }
        }
    }
}

enum Handler {
    Login(LoginSession),
    World(WorldSession),
}

fn protocol_error(
    shard: &Shard,
    conn: ConnId,
    peer: Option<SocketAddr>,
    e: &ProtocolError,
) -> ServerMessage {
    tracing::debug!(shard = shard.id, conn, ?peer, error = %e, "protocol error; closing");
    disconnect(e.disconnect_reason(), e.to_string())
}
