//! One blocking connection to a service, plaintext or TLS, sending and receiving frames.
//! One thread owns it; reads honour a timeout so a caller can interleave sending and receiving.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::pki_types::ServerName;

use crate::protocol::{
    encode_frame, encode_raw_frame, Body, FrameDecoder, ProtocolError, ServerMessage,
    MAX_SERVER_FRAME,
};

/// What went wrong on a client connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed (refused, reset, ...).
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// No message arrived in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent something that is not protocol.
    #[error("bad frame from the server: {0}")]
    Protocol(#[from] ProtocolError),
    /// A message could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[from] crate::protocol::EncodeError),
}

/// rustls reports handshake failures as `InvalidData` I/O errors; give them back their type.
fn tls_error(e: io::Error) -> ClientError {
    if !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        return ClientError::Io(e);
    }
    match e
        .into_inner()
        .map(|inner| inner.downcast::<rustls::Error>())
    {
        Some(Ok(tls)) => ClientError::Tls(*tls),
        _ => ClientError::Io(io::Error::other("TLS handshake failed")),
    }
}

/// TLS settings of a client: the trusted roots and the name to check.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The client config (trusting the dev CA, say).
    pub config: Arc<rustls::ClientConfig>,
    /// The server name the certificate must carry.
    pub server_name: ServerName<'static>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// A connection to the login or world service.
pub struct Connection {
    stream: Stream,
    decoder: FrameDecoder,
    out: BytesMut,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.stream.tcp().peer_addr().ok())
            .finish()
    }
}

impl Connection {
    /// Connects (and completes the TLS handshake when `tls` is given) within `timeout`.
    pub fn connect(
        addr: SocketAddr,
        tls: Option<&Tls>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let tcp = TcpStream::connect_timeout(&addr, timeout)?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let conn =
                    rustls::ClientConnection::new(tls.config.clone(), tls.server_name.clone())?;
                let mut s = rustls::StreamOwned::new(conn, tcp);
                while s.conn.is_handshaking() {
                    s.conn.complete_io(&mut s.sock).map_err(tls_error)?;
                }
                Stream::Tls(Box::new(s))
            }
        };
        Ok(Self {
            stream,
            decoder: FrameDecoder::new(MAX_SERVER_FRAME),
            out: BytesMut::new(),
            buf: vec![0; 16 * 1024],
        })
    }

    /// Sends one message.
    pub fn send<M: Body>(&mut self, msg: &M) -> Result<(), ClientError> {
        self.out.clear();
        encode_frame(msg, &mut self.out)?;
        self.stream.write_all(&self.out)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Sends a frame with any id and body (for tests of bad input).
    pub fn send_raw_frame(&mut self, id: u16, body: &[u8]) -> Result<(), ClientError> {
        self.out.clear();
        encode_raw_frame(id, body, &mut self.out)?;
        self.send_bytes(&self.out.clone())
    }

    /// Sends raw bytes, framed or not.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        Ok(())
    }

    /// The next message, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<ServerMessage, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(ServerMessage::decode(&frame)?);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            self.stream.tcp().set_read_timeout(Some(left))?;
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.decoder.extend(&self.buf[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(ClientError::Timeout)
                }
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(ClientError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next message, waiting at most 10 seconds.
    pub fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        self.recv_timeout(Duration::from_secs(10))
    }

    /// Waits until the server closes the connection, skipping messages; returns what it skipped.
    /// A reset counts as closed.
    pub fn recv_until_closed(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<ServerMessage>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left) {
                Ok(m) => seen.push(m),
                Err(ClientError::Closed) => return Ok(seen),
                Err(ClientError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Ok(seen)
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closes the connection politely: TLS close_notify when on TLS, then the socket.
    pub fn close(mut self) {
        if let Stream::Tls(s) = &mut self.stream {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
        let _ = self.stream.tcp().shutdown(std::net::Shutdown::Both);
    }

    /// Closes the connection with a TCP reset (no goodbye), as a crashed client would.
    pub fn reset(self) {
        let sock = socket2::SockRef::from(self.stream.tcp());
        let _ = sock.set_linger(Some(Duration::ZERO));
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.tcp().local_addr()
    }
}
