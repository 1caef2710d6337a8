//! A glommio TCP stream whose vectored writes go out in one `sendmsg`.
//!
//! glommio 0.9's `TcpStream` has no `poll_write_vectored`, so the default would send one slice
//! per system call. Its `poll_write` first tries a non-blocking `send` and only waits for
//! writability when that would block; this wrapper does the same with `sendmsg` over all slices,
//! and falls back to glommio's `poll_write` (which registers the wait) when the socket is full.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A shard's TCP connection.
#[derive(Debug)]
pub struct Tcp {
    inner: TcpStream,
}

impl Tcp {
    /// Wraps an accepted stream and turns Nagle off (game traffic is small and latency-bound).
    pub fn new(inner: TcpStream) -> Self {
        // Failing to set TCP_NODELAY only costs latency; the connection still works.
        let _ = inner.set_nodelay(true);
        Self { inner }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        Ok(self.inner.peer_addr()?)
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        // SAFETY: the fd is owned by `self.inner`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.inner.as_raw_fd()) };
        let sock = socket2::SockRef::from(&fd);
        match sock.send_vectored_with_flags(bufs, libc_flags()) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Let glommio register the wait for writability (or send the first slice).
                Pin::new(&mut self.inner).poll_write(cx, first)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// `MSG_DONTWAIT | MSG_NOSIGNAL`: never block the shard, never raise SIGPIPE.
fn libc_flags() -> i32 {
    const MSG_DONTWAIT: i32 = 0x40;
    const MSG_NOSIGNAL: i32 = 0x4000;
    MSG_DONTWAIT | MSG_NOSIGNAL
}
