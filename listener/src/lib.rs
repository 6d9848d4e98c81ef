//! Connection hygiene shared by every fxcast listener: the gRPC server, the
//! HTTP gateway and momento-local.
//!
//! [`bind`] binds with a backlog of [`BACKLOG`] (the kernel caps it at
//! `net.core.somaxconn`), not tokio's 1,024, so a burst of clients (every
//! browser reconnecting after a restart) queues instead of having SYNs
//! dropped. [`Listener`] wraps a bound [`TcpListener`] with
//! - a cap on concurrent connections (a semaphore: at the cap it stops
//!   accepting, so new clients wait in the kernel's backlog instead of
//!   taking file descriptors), logged once and counted in [`ListenerStats`];
//! - an accept loop that backs off (10 ms doubling to 1 s) on fd exhaustion
//!   (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) and logs it once, instead of
//!   spinning a core on the same error;
//! - `TCP_NODELAY` and TCP keepalive on every accepted socket.
//!
//! Each accepted [`Conn`] carries a watchdog: a connection that sends
//! nothing within [`ListenerConfig::header_timeout`] of being accepted, or
//! then neither reads nor writes for [`ListenerConfig::idle_timeout`], fails
//! its next read or write with `TimedOut`, so the server drops it. That
//! covers what the protocol layers cannot see: a silent socket, a partial
//! HTTP/2 preface, a partial HTTP/1 header on a gRPC port. The protocol
//! layers add their own: hyper's HTTP/1 header-read timeout and HTTP/2
//! keepalive pings ([`ListenerConfig::http2_keepalive_interval`]), which
//! close an HTTP/2 peer that stops answering even while the server writes.
//!
//! It is its own crate because momento-local stands beside the fxcast
//! crates and must not depend on them; this one knows nothing of fxcast.
//!
//! With [`Tls`] a listener serves TLS (rustls): the handshake runs in each
//! connection's task within the header timeout, and the certificate is
//! reloaded when its files change. A plaintext listener bound beyond
//! loopback says so in a warning at start: bearer tokens would cross the
//! network in the clear.
//!
//! # Layout
//! - this file: [`ListenerConfig`], [`Listener`], [`ListenerStats`];
//! - `conn`: [`Conn`], the accepted socket with its watchdog;
//! - `stream`: [`Handshake`] and [`Stream`], a connection before and after
//!   its TLS handshake;
//! - `tls`: [`Tls`], the certificate, key and client CA, reloaded on change.

#![forbid(unsafe_code)]

mod conn;
mod stream;
pub mod tls;

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
pub use conn::Conn;
pub use stream::{Handshake, LocalConnector, LocalIncoming, Stream, local};
pub use tls::{Tls, TlsFiles};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

/// File descriptors kept free of connections for everything else a
/// process opens (the journal, transports, outgoing clients).
const RESERVED_FDS: u64 = 128;

/// The listen backlog [`bind`] asks for; Linux caps it at
/// `net.core.somaxconn` (4,096 by default since 5.4).
pub const BACKLOG: u32 = 4096;

/// A listener on `addr` with a backlog of [`BACKLOG`] and `SO_REUSEADDR`
/// (a restarted server binds at once despite connections in TIME_WAIT).
///
/// # Errors
/// When the socket cannot be created or bound (address in use, no
/// permission).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own bind: not on Windows, where it lets another process
    // bind the same port.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Connection limits and timeouts of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Most connections open at once; further clients wait in the backlog.
    pub max_connections: usize,
    /// A new connection must send its first bytes (and an HTTP/1 request
    /// its whole header) within this long.
    pub header_timeout: Duration,
    /// A connection that neither reads nor writes for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ListenerConfig {
    /// [`default_max_connections`], a 10 s header timeout, a 2 min idle
    /// timeout.
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

impl ListenerConfig {
    /// How often an HTTP/2 connection is pinged: half the idle timeout, so
    /// a live peer answers before it would count as idle.
    pub fn http2_keepalive_interval(&self) -> Duration {
        self.idle_timeout / 2
    }

    /// How long an HTTP/2 ping may go unanswered before the connection is
    /// closed: the header timeout.
    pub fn http2_keepalive_timeout(&self) -> Duration {
        self.header_timeout
    }

    /// How long a TCP connection may be silent before the kernel probes
    /// it: the idle timeout.
    pub fn tcp_keepalive(&self) -> Duration {
        self.idle_timeout
    }

    /// Checks the settings before a port is bound.
    ///
    /// # Errors
    /// A message naming the unusable setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("max connections must be at least 1".into());
        }
        if self.header_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err("header and idle timeouts must be positive".into());
        }
        Ok(())
    }
}

/// The default connection cap of a listener: half of the open-files limit
/// (as raised at start) less a reserve, so two listeners together cannot
/// exhaust it; at least 16.
pub fn default_max_connections() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let per_listener = soft.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(per_listener).unwrap_or(usize::MAX).max(16)
}

/// Counters of one listener, shared with whoever reports them.
#[derive(Debug, Default)]
pub struct ListenerStats {
    open: AtomicU64,
    accepted: AtomicU64,
    cap_reached: AtomicU64,
    fd_exhausted: AtomicU64,
    timed_out: AtomicU64,
    warned_cap: AtomicBool,
    warned_fds: AtomicBool,
}

impl ListenerStats {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Times the accept loop found every connection slot taken.
    pub fn cap_reached(&self) -> u64 {
        self.cap_reached.load(Ordering::Relaxed)
    }

    /// Times accepting failed for want of file descriptors.
    pub fn fd_exhausted(&self) -> u64 {
        self.fd_exhausted.load(Ordering::Relaxed)
    }

    /// Connections closed by the header or idle timeout.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// A bound listener with a connection cap, a backing-off accept loop and
/// per-connection timeouts.
#[derive(Debug)]
pub struct Listener {
    name: &'static str,
    inner: TcpListener,
    config: ListenerConfig,
    slots: Arc<Semaphore>,
    stats: Arc<ListenerStats>,
    tls: Option<Tls>,
}

impl Listener {
    /// Wraps `inner`, serving TLS when `tls` is given; `name` (`gRPC`,
    /// `HTTP`, `momento-local`) labels its log lines. Warns when a
    /// plaintext listener is reachable beyond loopback.
    pub fn new(
        name: &'static str,
        inner: TcpListener,
        config: ListenerConfig,
        tls: Option<Tls>,
    ) -> Self {
        if tls.is_none()
            && let Ok(addr) = inner.local_addr()
            && !addr.ip().is_loopback()
        {
            tracing::warn!(
                listener = name,
                %addr,
                "plaintext listener reachable beyond loopback: tokens and API keys cross the network in the clear (see --tls-cert/--tls-key)"
            );
        }
        Self {
            name,
            inner,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            config,
            stats: Arc::default(),
            tls,
        }
    }

    /// The address bound.
    ///
    /// # Errors
    /// The socket's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The settings in force.
    pub fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// This listener's counters.
    pub fn stats(&self) -> Arc<ListenerStats> {
        Arc::clone(&self.stats)
    }

    /// The next connection, once a slot is free. Never fails: transient
    /// accept errors are retried, fd exhaustion with a backoff.
    pub async fn accept(&self) -> Conn {
        let permit = self.slot().await;
        // Out of descriptors: 10 ms, doubling up to 1 s, until one is free
        // (built at the first failure: most accepts need none).
        let mut delays = None;
        loop {
            match self.inner.accept().await {
                Ok((stream, remote)) => return self.admit(stream, remote, permit),
                Err(err) if is_fd_exhaustion(&err) => {
                    self.stats.fd_exhausted.fetch_add(1, Ordering::Relaxed);
                    if !self.stats.warned_fds.swap(true, Ordering::Relaxed) {
                        tracing::warn!(listener = self.name, error = %err, "out of file descriptors: accepting with a backoff (lower --max-connections or raise the open-files limit)");
                    }
                    let delays = delays.get_or_insert_with(|| {
                        ExponentialBuilder::new()
                            .with_min_delay(Duration::from_millis(10))
                            .with_max_delay(Duration::from_secs(1))
                            .without_max_times()
                            .build()
                    });
                    tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
                }
                // The peer reset before the accept (ECONNABORTED) and the like.
                Err(err) => tracing::debug!(listener = self.name, error = %err, "accept failed"),
            }
        }
    }

    /// The next connection, its TLS handshake still to run (in the
    /// connection's own task: [`Handshake::establish`]).
    pub async fn accept_handshake(&self) -> Handshake {
        let conn = self.accept().await;
        Handshake {
            conn,
            tls: self.tls.as_ref().map(Tls::acceptor),
            timeout: self.config.header_timeout,
        }
    }

    /// The established connections as a stream, for `tonic`'s
    /// `serve_with_incoming*`. TLS handshakes run concurrently in tasks of
    /// their own; one that fails is logged and dropped, so the stream never
    /// yields an error. Accepting stops when the stream is dropped.
    pub fn into_incoming(
        self,
    ) -> impl futures_util::Stream<Item = io::Result<Stream>> + Send + 'static {
        self.into_incoming_with(None)
    }

    /// [`Listener::into_incoming`], plus the in-process connections of
    /// `local`.
    pub fn into_incoming_with(
        self,
        local: Option<LocalIncoming>,
    ) -> impl futures_util::Stream<Item = io::Result<Stream>> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        if let Some(mut local) = local {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(pipe) = local.rx.recv().await {
                    if tx.send(Ok(Stream::Local(pipe))).await.is_err() {
                        return;
                    }
                }
            });
        }
        tokio::spawn(async move {
            loop {
                let handshake = tokio::select! {
                    handshake = self.accept_handshake() => handshake,
                    () = tx.closed() => return,
                };
                let tx = tx.clone();
                let name = self.name;
                let establish = async move {
                    let peer = handshake.remote_addr();
                    match handshake.establish().await {
                        Ok(stream) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Err(err) => {
                            tracing::debug!(listener = name, %peer, error = %err, "TLS handshake failed")
                        }
                    }
                };
                if self.tls.is_some() {
                    tokio::spawn(establish);
                } else {
                    establish.await;
                }
            }
        });
        futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
    }

    async fn slot(&self) -> OwnedSemaphorePermit {
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return permit;
        }
        self.stats.cap_reached.fetch_add(1, Ordering::Relaxed);
        if self.stats.warned_cap.swap(true, Ordering::Relaxed) {
            tracing::debug!(listener = self.name, "connection cap reached");
        } else {
            tracing::warn!(
                listener = self.name,
                max_connections = self.config.max_connections,
                "connection cap reached: new clients wait until a connection closes (logged once; see --max-connections)"
            );
        }
        // The semaphore is never closed.
        match Arc::clone(&self.slots).acquire_owned().await {
            Ok(permit) => permit,
            Err(_) => std::future::pending().await,
        }
    }

    fn admit(&self, stream: TcpStream, remote: SocketAddr, permit: OwnedSemaphorePermit) -> Conn {
        // Nagle's algorithm would hold small frames (ticks) back for tens of ms.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let keepalive = socket2::TcpKeepalive::new().with_time(self.config.tcp_keepalive());
        if let Err(err) = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %err, "cannot set TCP keepalive");
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Conn::new(
            stream,
            remote,
            &self.config,
            conn::Slot {
                _permit: permit,
                stats: Arc::clone(&self.stats),
            },
        )
    }
}

fn is_fd_exhaustion(err: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12))
        || err.kind() == io::ErrorKind::OutOfMemory
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More clients than tokio's default backlog (1,024) connect to a
    /// listener that accepts none of them: every handshake completes in the
    /// kernel's queue instead of having its SYN dropped.
    #[tokio::test]
    async fn a_burst_beyond_1024_clients_queues_in_the_backlog() {
        const CLIENTS: usize = 1_500;
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if somaxconn <= CLIENTS {
            // The kernel caps every backlog below the burst: nothing to judge.
            eprintln!("net.core.somaxconn is {somaxconn}: the burst cannot queue here");
            return;
        }
        // The client sockets need file descriptors of this process (the
        // queued connections take none until accepted).
        let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
        if fds < CLIENTS as u64 + 64 {
            eprintln!("{fds} open files allowed: the burst cannot be opened here");
            return;
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::with_capacity(CLIENTS);
        for n in 0..CLIENTS {
            // A dropped SYN is retried after a second: the connect hangs.
            let connect = TcpStream::connect(addr);
            match tokio::time::timeout(Duration::from_millis(500), connect).await {
                Ok(Ok(client)) => clients.push(client),
                Ok(Err(err)) => panic!("client {n}: {err}"),
                Err(_) => panic!("client {n} was not queued: the backlog is full"),
            }
        }
        drop(listener);
    }
}
