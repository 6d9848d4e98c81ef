//! The whole stack in-process, as `fxcast serve` runs it.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use fxcast_app::{App, TransportConfig};
use fxcast_gateway::{GatewayConfig, WsLimits};
use fxcast_proto::v1::{Rate, rate_service_client::RateServiceClient};
use fxcast_services::{Config, FeedKind, RatesCore, auth::IssuedToken, feed::Quote};
use rust_decimal::Decimal;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{Authed, Bearer, Ws};

/// Every scope a test user normally needs.
pub const ALL_SCOPES: &str = "rates:subscribe=* rates:publish orders:place orders:read";

/// A running fxcast: rate core, gRPC on [`Stack::addr`] and the gateway on
/// [`Stack::http`], the gateway reading the core over in-process gRPC pipes.
pub struct Stack {
    /// The gRPC address.
    pub addr: SocketAddr,
    /// The gateway's HTTP address.
    pub http: SocketAddr,
    pub core: Arc<RatesCore>,
    /// Cancelling it stops both servers without recording the sequences,
    /// as a crash would; [`Stack::handle`] then completes.
    pub stop: CancellationToken,
    pub handle: JoinHandle<Result<(), fxcast_app::Error>>,
    pub data_dir: PathBuf,
    /// An HTTP client for the gateway.
    pub client: reqwest::Client,
    /// The data directory this stack made, removed when it is dropped.
    _temporary: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts `config` with the default gateway; a fresh temporary data
    /// directory is used unless the config names one.
    pub async fn start(config: Config) -> Self {
        Self::start_with(config, GatewayConfig::default()).await
    }

    /// Starts `config` with `gateway`.
    pub async fn start_with(config: Config, gateway: GatewayConfig) -> Self {
        Self::start_on(config, gateway, TransportConfig::Memory).await
    }

    /// Starts `config` with `gateway` on `transport`.
    pub async fn start_on(
        mut config: Config,
        gateway: GatewayConfig,
        transport: TransportConfig,
    ) -> Self {
        let temporary =
            (config.data_dir == Config::default().data_dir).then(|| tempfile::tempdir().unwrap());
        if let Some(dir) = &temporary {
            config.data_dir = dir.path().to_owned();
        }
        let data_dir = config.data_dir.clone();
        let loopback = ([127, 0, 0, 1], 0).into();
        let app = App::build(fxcast_app::Config {
            grpc_listen: loopback,
            http_listen: loopback,
            transport,
            core: config,
            gateway,
        })
        .await
        .unwrap();
        Self {
            addr: app.grpc_addr(),
            http: app.http_addr(),
            core: Arc::clone(app.core()),
            stop: app.stop_token().clone(),
            handle: tokio::spawn(app.join()),
            data_dir,
            client: reqwest::Client::new(),
            _temporary: temporary,
        }
    }

    /// A server without a feed: the test publishes every rate itself.
    pub async fn quiet(symbols: &[&str]) -> Self {
        Self::start(Config {
            feed: FeedKind::None,
            symbols: symbols.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
        .await
    }

    /// A trading desk for gateway tests: USD_JPY and EUR_USD without a
    /// feed, anonymous browser tokens on, one rate each, gateway ready.
    pub async fn desk() -> Self {
        Self::desk_with(GatewayConfig {
            anonymous_tokens: true,
            ..Default::default()
        })
        .await
    }

    /// As [`Stack::desk`], with these WebSocket limits.
    pub async fn with_ws(ws: WsLimits) -> Self {
        Self::desk_with(GatewayConfig {
            anonymous_tokens: true,
            ws,
            ..Default::default()
        })
        .await
    }

    /// As [`Stack::desk`], with this gateway configuration.
    pub async fn desk_with(gateway: GatewayConfig) -> Self {
        let config = Config {
            feed: FeedKind::None,
            symbols: vec!["USD_JPY".into(), "EUR_USD".into()],
            ..Default::default()
        };
        let stack = Self::start_with(config, gateway).await;
        stack.publish("USD_JPY", "151.100", "151.110").await;
        stack.publish("EUR_USD", "1.08500", "1.08510").await;
        stack.wait_ready().await;
        stack
    }

    /// `http://<grpc address>`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://<gateway><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `ws://<gateway><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.http)
    }

    /// A token for `subject` with space-separated `scopes`, issued by the
    /// core's authority.
    pub fn token(&self, subject: &str, scopes: &str) -> String {
        self.issue(subject, scopes, None).token
    }

    /// As [`Stack::token`], living `ttl` (the default when `None`), with
    /// its id and expiry.
    pub fn issue(&self, subject: &str, scopes: &str, ttl: Option<Duration>) -> IssuedToken {
        let authority = self.core.authority();
        authority
            .issue(subject, scopes.parse().unwrap(), ttl)
            .unwrap()
    }

    /// The admin API key.
    pub fn api_key(&self) -> String {
        self.core.authority().api_key().to_owned()
    }

    /// A plain gRPC channel.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A gRPC channel that sends `token` on every call.
    pub async fn authed_channel(&self, token: &str) -> Authed {
        fxcast_proto::authed(self.channel().await, Bearer::token(token).unwrap())
    }

    /// A RateService client for subject "tester" with every scope.
    pub async fn client(&self) -> RateServiceClient<Authed> {
        self.client_as("tester", ALL_SCOPES).await
    }

    /// A RateService client for `subject` with `scopes`.
    pub async fn client_as(&self, subject: &str, scopes: &str) -> RateServiceClient<Authed> {
        RateServiceClient::new(self.authed_channel(&self.token(subject, scopes)).await)
    }

    /// Publishes a raw quote through the core's publisher.
    pub async fn publish(&self, symbol: &str, bid: &str, ask: &str) -> Rate {
        let quote = Quote {
            symbol: symbol.to_owned(),
            bid: bid.parse::<Decimal>().unwrap(),
            ask: ask.parse::<Decimal>().unwrap(),
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

    /// An anonymous browser token from `POST /v1/tokens`.
    pub async fn browser_token(&self) -> String {
        let response = self.post("/v1/tokens").await;
        assert_eq!(response.status(), 200);
        let body = crate::json_of(response).await;
        body["token"].as_str().unwrap().to_owned()
    }

    /// Waits until the gateway has a rate for every symbol (`/readyz`).
    pub async fn wait_ready(&self) {
        crate::wait_ready_at(&self.client, &self.url("")).await;
    }

    /// The gateway's WebSocket with a fresh browser token.
    pub async fn browser_ws(&self) -> Ws {
        self.ws(&self.browser_token().await).await
    }

    /// The gateway's WebSocket with `token`.
    pub async fn ws(&self, token: &str) -> Ws {
        let (ws, _) =
            tokio_tungstenite::connect_async(self.ws_url(&format!("/v1/stream?token={token}")))
                .await
                .unwrap();
        ws
    }

    /// The gateway's `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// The current value of the gateway metric line starting with `prefix`.
    pub async fn metric(&self, prefix: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}
