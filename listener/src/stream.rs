//! A connection ready for a protocol: plaintext, or TLS after its
//! handshake, or an in-process pipe. The handshake runs in the connection's
//! own task (never in the accept loop, where one slow client would hold up
//! the others) and within the header timeout.
//!
//! In-process connections ([`local`]) let a component of the same process
//! (the all-in-one gateway in front of its own gRPC server) reach a server
//! without a socket: no TLS to terminate, no client certificate to hold, no
//! connection slot to take.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::Conn;

/// An accepted connection whose TLS handshake (if the listener has TLS)
/// has not run yet.
pub struct Handshake {
    pub(crate) conn: Conn,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("conn", &self.conn)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Handshake {
    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote_addr()
    }

    /// Runs the TLS handshake, if any.
    ///
    /// # Errors
    /// The handshake failed (a plaintext client on a TLS port, an
    /// untrusted client certificate) or did not finish within the header
    /// timeout.
    pub async fn establish(self) -> io::Result<Stream> {
        let Some(acceptor) = self.tls else {
            return Ok(Stream::Plain(self.conn));
        };
        match tokio::time::timeout(self.timeout, acceptor.accept(self.conn)).await {
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake not finished within the header timeout",
            )),
        }
    }
}

/// A connection as its protocol sees it.
#[derive(Debug)]
pub enum Stream {
    /// Plaintext TCP.
    Plain(Conn),
    /// TLS over TCP.
    Tls(Box<TlsStream<Conn>>),
    /// An in-process pipe from a [`LocalConnector`].
    Local(DuplexStream),
}

impl Stream {
    /// The TCP connection underneath, unless in-process.
    pub fn conn(&self) -> Option<&Conn> {
        match self {
            Self::Plain(conn) => Some(conn),
            Self::Tls(tls) => Some(tls.get_ref().0),
            Self::Local(_) => None,
        }
    }

    /// The protocol the TLS handshake agreed (`h2`, `http/1.1`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Self::Tls(tls) => tls.get_ref().1.alpn_protocol(),
            Self::Plain(_) | Self::Local(_) => None,
        }
    }
}

/// Bytes buffered each way in an in-process connection.
const LOCAL_BUFFER: usize = 256 * 1024;

/// Opens in-process connections to the server holding the matching
/// [`LocalIncoming`]. A cheap `Clone` handle.
#[derive(Debug, Clone)]
pub struct LocalConnector {
    tx: mpsc::UnboundedSender<DuplexStream>,
}

/// The server side of in-process connections: pass it to
/// [`crate::Listener::into_incoming_with`].
#[derive(Debug)]
pub struct LocalIncoming {
    pub(crate) rx: mpsc::UnboundedReceiver<DuplexStream>,
}

/// A connector and the incoming side it feeds.
pub fn local() -> (LocalConnector, LocalIncoming) {
    let (tx, rx) = mpsc::unbounded_channel();
    (LocalConnector { tx }, LocalIncoming { rx })
}

impl LocalConnector {
    /// A new connection to the server.
    ///
    /// # Errors
    /// `NotConnected` once the server has stopped.
    pub fn connect(&self) -> io::Result<DuplexStream> {
        let (client, server) = tokio::io::duplex(LOCAL_BUFFER);
        self.tx.send(server).map_err(|_| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the in-process server has stopped",
            )
        })?;
        Ok(client)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Self::Local(pipe) => Pin::new(pipe).poll_read(cx, buf),
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
            Self::Plain(conn) => Pin::new(conn).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            Self::Local(pipe) => Pin::new(pipe).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
            Self::Local(pipe) => Pin::new(pipe).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(conn) => conn.is_write_vectored(),
            Self::Tls(tls) => tls.is_write_vectored(),
            Self::Local(pipe) => pipe.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_flush(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            Self::Local(pipe) => Pin::new(pipe).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(conn) => Pin::new(conn).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            Self::Local(pipe) => Pin::new(pipe).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Stream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.conn().map_or(
            tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            },
            tonic::transport::server::Connected::connect_info,
        )
    }
}
