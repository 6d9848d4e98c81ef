//! A real fxcast gRPC server in-process on an ephemeral port.

#![allow(dead_code, unreachable_pub)]

use std::{sync::Arc, time::Duration};

use fxcast_proto::v1::{
    Rate, StreamRatesResponse, rate_service_client::RateServiceClient, stream_rates_response::Event,
};
use fxcast_services::{Config, FeedKind, RatesCore, feed::Quote};
use fxcast_transport::{MemoryTransport, Transport};
use rust_decimal::Decimal;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{
    Streaming,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub AsciiMetadataValue);

impl Bearer {
    pub fn new(token: &str) -> Self {
        Self(MetadataValue::try_from(format!("Bearer {token}")).unwrap())
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type AuthedChannel = InterceptedService<Channel, Bearer>;

/// Every scope a test user normally needs.
pub const ALL_SCOPES: &str = "rates:subscribe=* rates:publish orders:place orders:read";

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub core: Arc<RatesCore>,
    pub stop: CancellationToken,
    pub handle: JoinHandle<Result<(), fxcast_services::Error>>,
    pub data_dir: std::path::PathBuf,
}

impl TestServer {
    /// Starts a server; a fresh temporary data directory is used unless the
    /// config names one.
    pub async fn start(mut config: Config) -> Self {
        if config.data_dir == Config::default().data_dir {
            config.data_dir = tempfile::tempdir().unwrap().keep();
        }
        let data_dir = config.data_dir.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::default());
        let core = Arc::new(
            RatesCore::start(config, transport, stop.child_token())
                .await
                .unwrap(),
        );
        let server_core = Arc::clone(&core);
        let server_stop = stop.clone();
        let handle = tokio::spawn(async move {
            server_core
                .serve_grpc(listener, server_stop.cancelled_owned())
                .await
        });
        Self {
            addr,
            core,
            stop,
            handle,
            data_dir,
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

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A token for `subject` with space-separated `scopes`.
    pub fn token(&self, subject: &str, scopes: &str) -> String {
        self.core
            .authority()
            .issue(subject, scopes.parse().unwrap(), None)
            .unwrap()
            .token
    }

    /// A channel that sends `token` on every call.
    pub async fn authed_channel(&self, token: &str) -> AuthedChannel {
        InterceptedService::new(self.channel().await, Bearer::new(token))
    }

    /// A RateService client for subject "tester" with every scope.
    pub async fn client(&self) -> RateServiceClient<AuthedChannel> {
        self.client_as("tester", ALL_SCOPES).await
    }

    /// A RateService client for `subject` with `scopes`.
    pub async fn client_as(&self, subject: &str, scopes: &str) -> RateServiceClient<AuthedChannel> {
        RateServiceClient::new(self.authed_channel(&self.token(subject, scopes)).await)
    }

    /// The admin API key.
    pub fn api_key(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("api-key")).unwrap()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
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
}

/// Next stream message within 10 s, or panic.
pub async fn next_event(stream: &mut Streaming<StreamRatesResponse>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no stream message within 10 s")
        .expect("stream failed")
        .expect("stream ended")
        .event
        .expect("empty event")
}

pub async fn next_rate(stream: &mut Streaming<StreamRatesResponse>) -> Rate {
    match next_event(stream).await {
        Event::Rate(rate) => rate,
        Event::Gap(gap) => panic!("unexpected gap: {gap:?}"),
    }
}
