//! An accepted connection: the socket, its slot under the cap, and the
//! watchdog that times it out.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::OwnedSemaphorePermit,
    time::{Instant, Sleep},
};

use crate::{ListenerConfig, ListenerStats};

/// A connection's place under the cap; freed when the connection drops.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) _permit: OwnedSemaphorePermit,
    pub(crate) stats: Arc<ListenerStats>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An accepted TCP connection that fails its reads and writes with
/// `TimedOut` once it has been silent too long (see the crate docs).
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    slot: Slot,
    idle_timeout: Duration,
    /// Fires at the header deadline, then at the idle deadline; pushed back
    /// lazily (on firing) rather than on every read and write.
    watchdog: Pin<Box<Sleep>>,
    /// The last read or write, once the peer has sent something.
    last_activity: Option<Instant>,
}

impl Conn {
    pub(crate) fn new(
        stream: TcpStream,
        remote: SocketAddr,
        config: &ListenerConfig,
        slot: Slot,
    ) -> Self {
        slot.stats.open.fetch_add(1, Ordering::Relaxed);
        Self {
            local: stream.local_addr().ok(),
            stream,
            remote,
            slot,
            idle_timeout: config.idle_timeout,
            watchdog: Box::pin(tokio::time::sleep(config.header_timeout)),
            last_activity: None,
        }
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The local address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The socket, e.g. for a TLS handshake's peer details.
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    fn touch(&mut self) {
        self.last_activity = Some(Instant::now());
    }

    /// `Ready(TimedOut)` once the connection has been silent too long;
    /// otherwise `Pending`, with the watchdog registered on `cx`.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.watchdog.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let Some(last) = self.last_activity else {
                return Poll::Ready(self.expired("no request within the header timeout"));
            };
            let deadline = last + self.idle_timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(self.expired("idle timeout"));
            }
            self.watchdog.as_mut().reset(deadline);
        }
    }

    /// A write's outcome, seen by the watchdog.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                // Before the peer has said anything, the server's own
                // greeting (HTTP/2 SETTINGS) does not keep it open.
                if n > 0 && self.last_activity.is_some() {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            // A peer that stopped reading is as gone as a silent one.
            Poll::Pending => self.poll_expired(cx).map(Err),
        }
    }

    fn expired(&self, reason: &'static str) -> io::Error {
        self.slot.stats.timed_out.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %self.remote, reason, "closing connection");
        io::Error::new(io::ErrorKind::TimedOut, reason)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.touch();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
            Poll::Pending => this.poll_expired(cx).map(Err),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}
