//! Connection hygiene of momento-local with raw sockets: silent,
//! half-sent and preface-only connections are closed after the (here
//! short) timeouts, and a client beyond the cap is served once the idle
//! sockets ahead of it have timed out.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use fxcast_listener::ListenerConfig;
use fxcast_momento_local::{MomentoLocalConfig, serve};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_millis(300);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn start(max_connections: usize) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = MomentoLocalConfig {
        connections: ListenerConfig {
            max_connections,
            header_timeout: TIMEOUT,
            idle_timeout: TIMEOUT,
        },
        ..MomentoLocalConfig::default()
    };
    tokio::spawn(serve(listener, config, stop.clone().cancelled_owned()));
    (addr, stop)
}

/// Sends `bytes`, reads until the server closes; how long that took.
async fn time_to_close(addr: SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = socket.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{bytes:?} was never closed");
    started.elapsed()
}

#[tokio::test]
async fn silent_half_sent_and_preface_only_connections_are_closed() {
    let (addr, _stop) = start(64).await;
    for bytes in [
        &b""[..],
        b"POST /cache_client.Scs/Get HTTP/1.1\r\nHost: x\r\n",
        PREFACE,
        &PREFACE[..10],
    ] {
        let took = time_to_close(addr, bytes).await;
        assert!(
            took >= TIMEOUT && took < Duration::from_secs(3),
            "{bytes:?}: closed after {took:?}"
        );
    }
}

#[tokio::test]
async fn a_client_beyond_the_cap_is_served_once_idle_ones_time_out() {
    let (addr, _stop) = start(2).await;
    let idle: Vec<TcpStream> = {
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        idle
    };
    let started = Instant::now();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(PREFACE).await.unwrap();
    let mut buf = [0u8; 64];
    // The server's SETTINGS frame: the connection was accepted.
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0);
    assert!(started.elapsed() >= TIMEOUT, "{:?}", started.elapsed());
    drop(idle);
}
