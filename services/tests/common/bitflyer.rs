//! A local stand-in for bitFlyer Lightning's realtime API on `127.0.0.1:0`:
//! it speaks the same JSON-RPC 2.0 over WebSocket, and the test scripts each
//! connection (acknowledge subscriptions, send tickers in the real format,
//! send garbage, drop the connection, refuse the next ones).

#![allow(dead_code, unreachable_pub)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::server::{ErrorResponse, Request, Response},
        http::StatusCode,
    },
};

/// bitFlyer during maintenance: the WebSocket upgrade is answered 503.
#[expect(
    clippy::result_large_err,
    reason = "the signature of tungstenite's handshake callback"
)]
fn refuse(_: &Request, _: Response) -> Result<Response, ErrorResponse> {
    let mut response = ErrorResponse::new(Some("maintenance".into()));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    Err(response)
}

/// The fake server.
pub struct FakeBitflyer {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<FakeConnection>,
    refusing: Arc<AtomicBool>,
    refusals: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for FakeBitflyer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBitflyer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, accepted) = mpsc::unbounded_channel();
        let refusing = Arc::new(AtomicBool::new(false));
        let (refused_tx, refusals) = watch::channel(0u64);
        let refusing_now = Arc::clone(&refusing);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                stream.set_nodelay(true).unwrap();
                if refusing_now.load(Ordering::SeqCst) {
                    let refused = tokio_tungstenite::accept_hdr_async(stream, refuse).await;
                    assert!(refused.is_err());
                    refused_tx.send_modify(|n| *n += 1);
                    continue;
                }
                match tokio_tungstenite::accept_async(stream).await {
                    Ok(ws) => {
                        let _ = tx.send(FakeConnection { ws });
                    }
                    Err(err) => panic!("fake bitFlyer handshake failed: {err}"),
                }
            }
        });
        Self {
            addr,
            accepted,
            refusing,
            refusals,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/json-rpc", self.addr)
    }

    /// While on, every new connection's WebSocket upgrade is answered 503.
    pub fn refuse_connections(&self, on: bool) {
        self.refusing.store(on, Ordering::SeqCst);
    }

    /// Waits until at least `n` connections have been refused in total.
    pub async fn wait_refusals(&mut self, n: u64) {
        tokio::time::timeout(Duration::from_secs(10), self.refusals.wait_for(|r| *r >= n))
            .await
            .expect("no refused connection attempt within 10 s")
            .unwrap();
    }

    pub fn refusals(&self) -> u64 {
        *self.refusals.borrow()
    }

    /// The next accepted connection.
    pub async fn accept(&mut self) -> FakeConnection {
        tokio::time::timeout(Duration::from_secs(10), self.accepted.recv())
            .await
            .expect("no connection to the fake bitFlyer within 10 s")
            .unwrap()
    }

    /// Whether a connection was accepted that the test has not taken.
    pub fn has_pending_connection(&mut self) -> bool {
        !self.accepted.is_empty()
    }
}

/// One accepted client connection.
pub struct FakeConnection {
    ws: WebSocketStream<TcpStream>,
}

impl FakeConnection {
    /// Reads `n` subscribe requests, checks they are JSON-RPC 2.0, answers
    /// each with `result: true`, and returns the channels, sorted.
    pub async fn expect_subscriptions(&mut self, n: usize) -> Vec<String> {
        let mut channels = Vec::new();
        while channels.len() < n {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("no subscribe request within 10 s")
                .expect("client went away")
                .unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let request: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(request["jsonrpc"], "2.0", "{request}");
            assert_eq!(request["method"], "subscribe", "{request}");
            let id = request["id"].as_u64().expect("a numeric id");
            channels.push(request["params"]["channel"].as_str().unwrap().to_owned());
            self.send(&format!(r#"{{"jsonrpc":"2.0","id":{id},"result":true}}"#))
                .await;
        }
        channels.sort();
        channels
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws.send(Message::binary(bytes.to_vec())).await.unwrap();
    }

    pub async fn send_ticker(&mut self, ticker: &Ticker) {
        self.send(&ticker.notification()).await;
    }

    /// Drops the TCP connection without a WebSocket close handshake.
    pub fn drop_abruptly(self) {
        drop(self.ws);
    }
}

/// The fields of a ticker that tests vary; the rest are realistic constants.
#[derive(Debug, Clone)]
pub struct Ticker {
    pub product: &'static str,
    pub bid: &'static str,
    pub ask: &'static str,
    pub tick_id: u64,
    /// UTC, 7 fractional digits as bitFlyer writes them.
    pub timestamp: &'static str,
}

impl Ticker {
    /// A `channelMessage` notification exactly as bitFlyer sends it: prices
    /// are bare JSON numbers.
    pub fn notification(&self) -> String {
        let Ticker {
            product,
            bid,
            ask,
            tick_id,
            timestamp,
        } = self;
        format!(
            r#"{{"jsonrpc":"2.0","method":"channelMessage","params":{{"channel":"lightning_ticker_{product}","message":{{"product_code":"{product}","state":"RUNNING","timestamp":"{timestamp}","tick_id":{tick_id},"best_bid":{bid},"best_ask":{ask},"best_bid_size":0.01,"best_ask_size":0.0455,"total_bid_depth":421.10836527,"total_ask_depth":450.67930478,"market_bid_size":0.0,"market_ask_size":0.0,"ltp":{ask},"volume":1916.28004622,"volume_by_product":1916.28004622}}}}}}"#
        )
    }

    /// The ticker's timestamp as a protobuf timestamp.
    pub fn source_time(&self) -> prost_types::Timestamp {
        humantime::parse_rfc3339(self.timestamp).unwrap().into()
    }
}
