//! The whole stack in-process: rate core, gRPC server and gateway, each on
//! an ephemeral port, the gateway talking to the services over gRPC.

#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use fxcast_gateway::{GatewayConfig, Upstream, serve_gateway};
use fxcast_services::{Config, FeedKind, RatesCore, feed::Quote};
use fxcast_transport::{MemoryTransport, Transport};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};
use tokio_util::sync::CancellationToken;

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Harness {
    pub http: SocketAddr,
    pub core: Arc<RatesCore>,
    pub stop: CancellationToken,
    pub client: reqwest::Client,
}

impl Harness {
    pub async fn start(mut config: Config, gateway: GatewayConfig) -> Self {
        config.data_dir = tempfile::tempdir().unwrap().keep();
        let stop = CancellationToken::new();
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::default());
        let core = Arc::new(
            RatesCore::start(config, transport, stop.child_token())
                .await
                .unwrap(),
        );
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = grpc.local_addr().unwrap();
        let grpc_core = Arc::clone(&core);
        let grpc_stop = stop.clone();
        tokio::spawn(async move {
            grpc_core
                .serve_grpc(grpc, grpc_stop.cancelled_owned())
                .await
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect_lazy();
        let upstream = Upstream::new(channel, core.authority().api_key());
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        let gateway_stop = stop.clone();
        tokio::spawn(async move {
            serve_gateway(upstream, gateway, http, gateway_stop)
                .await
                .unwrap()
        });
        Self {
            http: http_addr,
            core,
            stop,
            client: reqwest::Client::new(),
        }
    }

    /// USD_JPY and EUR_USD without a feed, anonymous tokens on, one rate each.
    pub async fn quiet() -> Self {
        Self::quiet_with(GatewayConfig {
            anonymous_tokens: true,
            ..Default::default()
        })
        .await
    }

    /// As [`Harness::quiet`], with these WebSocket limits.
    pub async fn with_ws(ws: fxcast_gateway::WsLimits) -> Self {
        Self::quiet_with(GatewayConfig {
            anonymous_tokens: true,
            ws,
            ..Default::default()
        })
        .await
    }

    pub async fn quiet_with(gateway: GatewayConfig) -> Self {
        let config = Config {
            feed: FeedKind::None,
            symbols: vec!["USD_JPY".into(), "EUR_USD".into()],
            ..Default::default()
        };
        let harness = Self::start(config, gateway).await;
        harness.publish("USD_JPY", "151.100", "151.110").await;
        harness.publish("EUR_USD", "1.08500", "1.08510").await;
        harness.wait_ready().await;
        harness
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.http)
    }

    /// A token issued directly by the core's authority.
    pub fn token(&self, subject: &str, scopes: &str) -> String {
        self.core
            .authority()
            .issue(subject, scopes.parse().unwrap(), None)
            .unwrap()
            .token
    }

    pub fn api_key(&self) -> String {
        self.core.authority().api_key().to_owned()
    }

    /// An anonymous browser token from `POST /v1/tokens`.
    pub async fn browser_token(&self) -> String {
        let response = self
            .client
            .post(self.url("/v1/tokens"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn publish(&self, symbol: &str, bid: &str, ask: &str) -> fxcast_proto::v1::Rate {
        let quote = Quote {
            symbol: symbol.into(),
            bid: bid.parse().unwrap(),
            ask: ask.parse().unwrap(),
            source_time: std::time::SystemTime::now(),
        };
        self.core
            .publisher()
            .publish(quote, "test")
            .await
            .unwrap()
            .rate
            .clone()
    }

    /// Waits until the gateway has a rate for every symbol.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway never became ready"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn ws(&self, token: &str) -> Ws {
        let (ws, _) =
            tokio_tungstenite::connect_async(self.ws_url(&format!("/v1/stream?token={token}")))
                .await
                .unwrap();
        ws
    }

    /// The current value of a metric line starting with `prefix`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

pub async fn send_json(ws: &mut Ws, value: serde_json::Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// Subscribes `ws` to `symbols` and checks the acknowledgement.
pub async fn subscribe(ws: &mut Ws, symbols: &[&str]) {
    send_json(
        ws,
        serde_json::json!({"type": "subscribe", "symbols": symbols}),
    )
    .await;
    let ack = next_json(ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
}

/// Next JSON text message (skipping heartbeats unless asked for).
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no WebSocket message within 10 s")
            .expect("WebSocket closed")
            .expect("WebSocket error");
        if let Message::Text(text) = message {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] != "heartbeat" {
                return value;
            }
        }
    }
}
