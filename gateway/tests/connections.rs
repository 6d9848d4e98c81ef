//! Connection hygiene on both listeners of `fxcast serve`, with raw
//! sockets: silent, half-sent and preface-only connections are closed after
//! the (here short) timeouts, and a flood of idle sockets beyond the cap
//! neither starves a real client for good nor spins the accept loop.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use fxcast_app::TransportConfig;
use fxcast_gateway::GatewayConfig;
use fxcast_listener::ListenerConfig;
use fxcast_services::{Config, FeedKind};
use fxcast_testkit::{Stack, capture_logs};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const TIMEOUT: Duration = Duration::from_millis(300);
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn stack(max_connections: usize) -> Stack {
    let connections = ListenerConfig {
        max_connections,
        header_timeout: TIMEOUT,
        idle_timeout: TIMEOUT,
    };
    let core = Config {
        feed: FeedKind::None,
        symbols: vec!["USD_JPY".into()],
        connections,
        ..Config::default()
    };
    let gateway = GatewayConfig {
        connections,
        ..GatewayConfig::default()
    };
    Stack::start_on(core, gateway, TransportConfig::Memory).await
}

/// Sends `bytes` and reads until the server closes; how long that took.
async fn time_to_close(addr: SocketAddr, bytes: &[u8]) -> Duration {
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    // Whatever comes first (the server's HTTP/2 SETTINGS, PINGs or GOAWAY)
    // is read to the end, which an error ends too.
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer));
    assert!(closed.await.is_ok(), "{addr}: {bytes:?} was never closed");
    started.elapsed()
}

#[tokio::test]
async fn silent_half_sent_and_preface_only_connections_are_closed() {
    let h = stack(64).await;
    // What a client may send before it stalls.
    let stalls: [&[u8]; 4] = [
        b"",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        PREFACE,
        &PREFACE[..10],
    ];
    for addr in [h.addr, h.http] {
        for bytes in stalls {
            let took = time_to_close(addr, bytes).await;
            // The gRPC port may refuse an HTTP/1 header at once; what is
            // well-formed so far waits for the timeout.
            let refused = addr == h.addr && bytes.starts_with(b"GET");
            assert!(
                (refused || took >= TIMEOUT) && took < Duration::from_secs(3),
                "{addr} {bytes:?}: closed after {took:?}"
            );
        }
    }
}

/// User plus system CPU time of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

// The current-thread runtime runs the servers on this thread, so the
// thread's subscriber sees their log lines.
#[tokio::test]
async fn a_flood_beyond_the_cap_waits_without_spinning() {
    let (captured, _guard) = capture_logs(tracing::Level::INFO);
    let cap = 4;
    let h = stack(cap).await;

    let before = cpu_ticks();
    let mut idle = Vec::new();
    for _ in 0..3 * cap {
        idle.push(TcpStream::connect(h.http).await.unwrap());
    }
    // Served once the idle sockets ahead of it have timed out.
    let started = Instant::now();
    let response = h.get("/healthz").await;
    assert_eq!(response.status(), 200);
    let waited = started.elapsed();
    assert!(
        waited >= TIMEOUT,
        "served at once ({waited:?}) despite the cap"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    let used = cpu_ticks() - before;
    // Clock ticks are 10 ms: a spinning accept loop would burn the whole wait.
    assert!(used <= 50, "{used} CPU ticks while the cap was reached");

    let logs = captured.text();
    assert_eq!(
        logs.matches("connection cap reached").count(),
        1,
        "logged once: {logs}"
    );
    assert!(
        logs.contains("listener=\"HTTP\"") || logs.contains("listener=HTTP"),
        "{logs}"
    );
    assert!(h.metric("fxcast_gateway_listener_cap_reached_total").await >= 1.0);
    assert!(h.metric("fxcast_gateway_listener_timed_out_total").await >= 1.0);
    drop(idle);
}
