//! Non-blocking connections that speak the frame format: TCP or TLS, frames in and out through
//! the `gameserver` library's decoder and encoder.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use gameserver::protocol::{
    encode_frame, pb, Body, FrameDecoder, RawFrame, ServerMessage, MAX_SERVER_FRAME,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::LoadgenError;

/// Bytes asked of the socket per read: big enough that a broadcast burst takes few reads.
const READ_CHUNK: usize = 16 * 1024;

/// How a run reaches the server: TLS or not, the connect deadline, the source addresses.
#[derive(Clone)]
pub struct Connector {
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    sources: Arc<Vec<IpAddr>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .field("timeout", &self.timeout)
            .field("sources", &self.sources)
            .finish()
    }
}

impl Connector {
    /// Plaintext connections.
    pub fn plain(timeout: Duration) -> Self {
        Self {
            tls: None,
            timeout,
            sources: Arc::new(Vec::new()),
        }
    }

    /// TLS connections trusting the CA in `ca` and checking the certificate for `server_name`.
    /// Fails with a message naming the file when it is missing or holds no certificate.
    pub fn tls(
        ca: &std::path::Path,
        server_name: &str,
        timeout: Duration,
    ) -> Result<Self, LoadgenError> {
        let config = gameserver::tls::client_config_trusting(ca)
            .map_err(|source| LoadgenError::TlsSetup { source })?;
        let name = gameserver::tls::server_name(server_name)
            .map_err(|source| LoadgenError::TlsSetup { source })?;
        Ok(Self {
            tls: Some((TlsConnector::from(config), name)),
            timeout,
            sources: Arc::new(Vec::new()),
        })
    }

    /// Spreads connections over these local addresses (connection `n` binds `sources[n % len]`),
    /// so that a per-address limit of the server does not cap a run from one machine.
    pub fn with_sources(mut self, sources: Vec<IpAddr>) -> Self {
        self.sources = Arc::new(sources);
        self
    }

    /// Connects to `addr` (TCP, then TLS when configured) within the connect timeout.
    /// `n` picks the source address.
    pub async fn connect(&self, addr: SocketAddr, n: usize) -> Result<FrameConn, LoadgenError> {
        match tokio::time::timeout(self.timeout, self.connect_inner(addr, n)).await {
            Ok(result) => result,
            Err(_) => Err(LoadgenError::ConnectTimeout { addr }),
        }
    }

    async fn connect_inner(&self, addr: SocketAddr, n: usize) -> Result<FrameConn, LoadgenError> {
        let connect_err = |source| LoadgenError::Connect { addr, source };
        let tcp = if self.sources.is_empty() {
            TcpStream::connect(addr).await.map_err(connect_err)?
        } else {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(connect_err)?;
            let source = self.sources[n % self.sources.len()];
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(connect_err)?;
            socket.connect(addr).await.map_err(connect_err)?
        };
        tcp.set_nodelay(true).map_err(connect_err)?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| LoadgenError::TlsHandshake { addr, source })?;
                Stream::Tls(Box::new(tls))
            }
        };
        Ok(FrameConn::new(stream))
    }
}

/// A TCP or TLS stream.
#[derive(Debug)]
pub enum Stream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The reading side of a frame connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            decoder: FrameDecoder::new(MAX_SERVER_FRAME),
            buf: vec![0; READ_CHUNK],
        }
    }

    /// The next frame; [`LoadgenError::Closed`] when the server closed the stream.
    pub async fn recv(&mut self) -> Result<RawFrame, LoadgenError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            match self.inner.read(&mut self.buf).await {
                Ok(0) => return Err(LoadgenError::Closed),
                Ok(n) => self.decoder.extend(&self.buf[..n]),
                Err(e) if is_gone(&e) => return Err(LoadgenError::Closed),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// A frame already received and buffered, without reading the socket.
    pub fn try_recv(&mut self) -> Result<Option<RawFrame>, LoadgenError> {
        Ok(self.decoder.next_frame()?)
    }

    /// The next frame, decoded. `S_DISCONNECT` is turned into [`LoadgenError::Disconnected`].
    pub async fn recv_msg(&mut self) -> Result<ServerMessage, LoadgenError> {
        let frame = self.recv().await?;
        match ServerMessage::decode(&frame)? {
            ServerMessage::Disconnect(d) => Err(disconnected(&d)),
            msg => Ok(msg),
        }
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe
    )
}

/// The error for an `S_DISCONNECT` the server sent.
pub fn disconnected(d: &pb::SDisconnect) -> LoadgenError {
    let reason = pb::DisconnectReason::try_from(d.reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("DISCONNECT_REASON_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| format!("reason_{}", d.reason));
    LoadgenError::Disconnected {
        reason,
        detail: d.detail.clone(),
    }
}

/// The writing side of a frame connection: frames are queued, then flushed together.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    out: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            out: BytesMut::with_capacity(1024),
        }
    }

    /// Adds one frame to what the next [`flush`](Self::flush) sends.
    pub fn queue<M: Body>(&mut self, msg: &M) -> Result<(), LoadgenError> {
        encode_frame(msg, &mut self.out)
            .map_err(|e| LoadgenError::Unexpected(format!("cannot encode: {e}")))
    }

    /// Writes every queued frame.
    pub async fn flush(&mut self) -> Result<(), LoadgenError> {
        if !self.out.is_empty() {
            let result = self.inner.write_all(&self.out).await;
            self.out.clear();
            result.map_err(|e| {
                if is_gone(&e) {
                    LoadgenError::Closed
                } else {
                    e.into()
                }
            })?;
        }
        Ok(())
    }
}

/// A connection to one service, reading and writing frames.
#[derive(Debug)]
pub struct FrameConn {
    reader: FrameReader<Stream>,
    /// Frames queued and not yet written (the writer shares `reader`'s stream until split).
    writer_out: BytesMut,
}

impl FrameConn {
    fn new(stream: Stream) -> Self {
        Self {
            reader: FrameReader::new(stream),
            writer_out: BytesMut::with_capacity(1024),
        }
    }

    /// Adds one frame to what the next [`flush`](Self::flush) sends.
    pub fn queue<M: Body>(&mut self, msg: &M) -> Result<(), LoadgenError> {
        encode_frame(msg, &mut self.writer_out)
            .map_err(|e| LoadgenError::Unexpected(format!("cannot encode: {e}")))
    }

    /// Writes every queued frame.
    pub async fn flush(&mut self) -> Result<(), LoadgenError> {
        if !self.writer_out.is_empty() {
            let result = self.reader.inner.write_all(&self.writer_out).await;
            self.writer_out.clear();
            result.map_err(|e| {
                if is_gone(&e) {
                    LoadgenError::Closed
                } else {
                    e.into()
                }
            })?;
        }
        Ok(())
    }

    /// Queues and writes one frame.
    pub async fn send<M: Body>(&mut self, msg: &M) -> Result<(), LoadgenError> {
        self.queue(msg)?;
        self.flush().await
    }

    /// The next frame.
    pub async fn recv(&mut self) -> Result<RawFrame, LoadgenError> {
        self.reader.recv().await
    }

    /// A frame already received and buffered, without reading the socket.
    pub fn try_recv(&mut self) -> Result<Option<RawFrame>, LoadgenError> {
        self.reader.try_recv()
    }

    /// The next frame, decoded (`S_DISCONNECT` becomes an error).
    pub async fn recv_msg(&mut self) -> Result<ServerMessage, LoadgenError> {
        self.reader.recv_msg().await
    }

    /// The next decoded message within `wait`.
    pub async fn recv_msg_within(
        &mut self,
        wait: Duration,
        what: &'static str,
    ) -> Result<ServerMessage, LoadgenError> {
        tokio::time::timeout(wait, self.recv_msg())
            .await
            .map_err(|_| LoadgenError::Timeout(what))?
    }

    /// Separate halves for a reading task and a writing task on the same thread. Frames the
    /// decoder already holds stay with the reader.
    pub fn into_split(
        self,
    ) -> (
        FrameReader<tokio::io::ReadHalf<Stream>>,
        FrameWriter<tokio::io::WriteHalf<Stream>>,
    ) {
        let FrameReader {
            inner,
            decoder,
            buf,
        } = self.reader;
        let (rd, wr) = tokio::io::split(inner);
        let mut writer = FrameWriter::new(wr);
        writer.out = self.writer_out;
        (
            FrameReader {
                inner: rd,
                decoder,
                buf,
            },
            writer,
        )
    }

    /// Closes with a TCP reset instead of a goodbye, as a crashed client would.
    pub fn reset(self) {
        let sock = socket2::SockRef::from(self.reader.inner.tcp());
        let _ = sock.set_linger(Some(Duration::ZERO));
    }

    /// Closes politely (TLS close_notify when on TLS, then FIN).
    pub async fn close(mut self) {
        let _ = self.reader.inner.shutdown().await;
    }
}
