//! Assembly of the rate core and the gRPC server around it.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::StreamExt;

use fxcast_proto::v1::{
    order_service_server::OrderServiceServer, rate_service_server::RateServiceServer,
    token_service_server::TokenServiceServer,
};
use fxcast_transport::Transport;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    sync::mpsc,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Config, Error, LatestRates, RateHub, RatePublisher, RateServiceImpl, SymbolTable,
    auth::{AuthLayer, TokenAuthority, TokenServiceImpl},
    feed::{Feed, FeedHealth, FeedKind},
    orders::{
        JOURNAL_FILE, OrderExecutor, OrderForwarder, OrderJournal, OrderRoute, OrderServiceImpl,
    },
    sequences::{SEQUENCES_FILE, SequenceStore},
};

/// The running rate core: symbols, latest-rate cache, local fan-out and the
/// publisher with its feed. Everything the services and the gateway share.
#[derive(Debug)]
pub struct RatesCore {
    symbols: SymbolTable,
    latest: LatestRates,
    hub: RateHub,
    publisher: RatePublisher,
    feed_health: FeedHealth,
    transport: Arc<dyn Transport>,
    authority: TokenAuthority,
    orders: Orders,
    config: Config,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl RatesCore {
    /// Connects to `transport` and starts the feed. Returns once the local
    /// subscriptions are live, so no tick of the feed is missed.
    ///
    /// Long-lived streams end when `shutdown` is cancelled.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad symbol configuration, or the transport's
    /// error when subscribing fails.
    pub async fn start(
        config: Config,
        transport: Arc<dyn Transport>,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let symbols =
            SymbolTable::build(&config.symbols, &config.markup, &config.symbol_overrides)?;
        let authority = TokenAuthority::open(&config.data_dir, config.auth.clone())?;
        let latest = LatestRates::with_shared(Arc::clone(&transport), config.latest_fresh_for);
        let feed_health = FeedHealth::new(symbols.names(), config.stale_after);
        let mut hub = RateHub::new(&symbols, latest.clone(), config.hub);
        let mut tasks = JoinSet::new();
        if config.feed == FeedKind::None {
            // The rates come from another process: its silence is this
            // process's staleness.
            hub = hub.recording_arrivals(feed_health.clone());
            tasks.spawn(crate::feed::watch_arrivals(
                latest.clone(),
                feed_health.clone(),
                shutdown.clone(),
            ));
        }
        hub.connect(&transport, &mut tasks).await?;
        // What other processes published before this one started.
        hub.prime(&transport).await;
        // The authority has created the data directory.
        let publisher = durable_publisher(&config, &transport, &latest, &symbols)?;
        let orders = Self::start_orders(
            &config, &authority, &symbols, &latest, &hub, &transport, &shutdown,
        )
        .await?;

        crate::auth::start_following(&transport, &authority, &shutdown, &mut tasks).await;
        let mut core = Self {
            symbols,
            latest,
            hub,
            publisher,
            feed_health,
            transport,
            authority,
            orders,
            config,
            shutdown,
            tasks,
        };
        if let Some(feed) =
            core.config
                .feed
                .build(&core.config.simulator, &core.symbols, &core.feed_health)?
        {
            core.spawn_feed(feed);
        }
        tracing::info!(
            symbols = %core.symbols,
            transport = core.transport.name(),
            feed = ?core.config.feed,
            run_id = core.publisher.run_id(),
            "rate core started"
        );
        Ok(core)
    }

    /// The order path: forwarded to the executor upstream, or executed here
    /// against the journal in the data directory (which the authority has
    /// created).
    async fn start_orders(
        config: &Config,
        authority: &TokenAuthority,
        symbols: &SymbolTable,
        latest: &LatestRates,
        hub: &RateHub,
        transport: &Arc<dyn Transport>,
        shutdown: &CancellationToken,
    ) -> Result<Orders, Error> {
        if let Some(upstream) = &config.orders.upstream {
            tracing::info!(upstream = %upstream.url, "orders go to the executor upstream");
            return Ok(Orders::Upstream(OrderForwarder::new(
                upstream,
                authority.clone(),
                shutdown.clone(),
            )?));
        }
        let journal = OrderJournal::open(
            &config.data_dir.join(JOURNAL_FILE),
            config.orders.journal_sync,
        )?;
        let executor = OrderExecutor::start(
            &config.orders,
            journal,
            symbols.clone(),
            latest.clone(),
            hub.clone(),
            Arc::clone(transport),
            shutdown.clone(),
        )
        .await?;
        Ok(Orders::Local(executor))
    }

    /// Runs `feed` into the publisher until shutdown.
    pub fn spawn_feed(&mut self, feed: Box<dyn Feed>) {
        let (tx, rx) = mpsc::channel(1024);
        let source = feed.name();
        let shutdown = self.shutdown.clone();
        // The supervisor publishes the quotes and marks silent symbols stale.
        self.tasks.spawn(crate::feed::supervise(
            self.publisher.clone(),
            rx,
            source,
            self.feed_health.clone(),
            self.shutdown.clone(),
        ));
        self.tasks.spawn(async move {
            tokio::select! {
                result = feed.run(tx) => match result {
                    Ok(()) => tracing::info!(feed = source, "feed ended"),
                    Err(err) => tracing::error!(feed = source, error = %err, "feed failed"),
                },
                () = shutdown.cancelled() => {}
            }
        });
    }

    /// The symbols this core prices.
    pub fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    /// The latest-rate cache.
    pub fn latest(&self) -> &LatestRates {
        &self.latest
    }

    /// The local fan-out of received ticks.
    pub fn hub(&self) -> &RateHub {
        &self.hub
    }

    /// The publisher (for `PublishRate` and feeds).
    pub fn publisher(&self) -> &RatePublisher {
        &self.publisher
    }

    /// Issues and verifies tokens.
    pub fn authority(&self) -> &TokenAuthority {
        &self.authority
    }

    /// This process's order executor; `None` when its orders go to the
    /// cluster's executor (`--orders-upstream`).
    pub fn orders(&self) -> Option<&OrderExecutor> {
        match &self.orders {
            Orders::Local(executor) => Some(executor),
            Orders::Upstream(_) => None,
        }
    }

    /// The transport in use.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// Ready once every symbol has a rate, none is stale, and the transport
    /// is connected.
    pub fn is_ready(&self) -> bool {
        self.transport.health().borrow().is_connected()
            && self
                .symbols
                .names()
                .all(|s| self.latest.get(s).is_some() && !self.feed_health.is_stale(s))
    }

    /// Per-symbol liveness of the feed and its connection counters (for
    /// readiness and metrics).
    pub fn feed_health(&self) -> &FeedHealth {
        &self.feed_health
    }

    /// The `RateService` implementation over this core.
    pub fn rate_service(&self) -> RateServiceImpl {
        RateServiceImpl {
            symbols: self.symbols.clone(),
            latest: self.latest.clone(),
            hub: self.hub.clone(),
            publisher: self.publisher.clone(),
            limits: self.config.stream_limits,
            shutdown: self.shutdown.clone(),
            authority: self.authority.clone(),
        }
    }

    /// The `OrderService` of this core: its own executor's, or the
    /// forwarder to the cluster's executor.
    pub fn order_service(&self) -> OrderRoute {
        match &self.orders {
            Orders::Local(executor) => OrderRoute::Local(OrderServiceImpl::new(
                executor.clone(),
                self.authority.clone(),
            )),
            Orders::Upstream(forwarder) => OrderRoute::Upstream(forwarder.clone()),
        }
    }

    /// Serves gRPC (RateService, OrderService, TokenService, health,
    /// reflection v1 and v1alpha) on
    /// `listener` until `shutdown` completes, then drains connections.
    ///
    /// The listener is capped and timed out by [`Config::connections`]
    /// (see `fxcast-listener`); HTTP/2 keepalive pings close peers that
    /// stop answering.
    ///
    /// # Errors
    /// [`Error::Server`] when the server fails.
    pub async fn serve_grpc(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        self.serve_grpc_with_local(listener, None, shutdown).await
    }

    /// [`RatesCore::serve_grpc`], also serving the in-process connections
    /// of `local` (the all-in-one gateway's, which need neither TLS nor a
    /// connection slot).
    ///
    /// # Errors
    /// [`Error::Server`] when the server fails.
    pub async fn serve_grpc_with_local(
        &self,
        listener: TcpListener,
        local: Option<fxcast_listener::LocalIncoming>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        use tonic::server::NamedService;
        use tonic_health::ServingStatus;
        // Serving from now until shutdown.
        let services = [
            RateServiceServer::<RateServiceImpl>::NAME,
            OrderServiceServer::<OrderRoute>::NAME,
        ];
        let (health, health_service) = tonic_health::server::health_reporter();
        for service in services {
            health
                .set_service_status(service, ServingStatus::Serving)
                .await;
        }
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(fxcast_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let unusable =
            |e: tonic_reflection::server::Error| Error::Config(format!("reflection: {e}"));
        let reflection_v1 = reflection().build_v1().map_err(unusable)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(unusable)?;

        // RateService (and the server as a whole, "") serve only while the
        // transport is connected: a reconnecting Momento shows up here.
        let transport_health = tokio::spawn(report_transport_health(
            self.transport.health(),
            health.clone(),
        ));
        let connections = self.config.connections;
        // TCP_NODELAY, keepalive, the cap and the timeouts.
        let incoming =
            fxcast_listener::Listener::new("gRPC", listener, connections, self.config.tls.clone())
                .into_incoming_with(local)
                .map(|stream| stream.map(FlatWrites));
        // One auth layer over every service; it exempts health and reflection
        // by path and puts the caller on each request for the handlers.
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(connections.http2_keepalive_interval()))
            .http2_keepalive_timeout(Some(connections.http2_keepalive_timeout()))
            .layer(AuthLayer::new(self.authority.clone()))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(RateServiceServer::new(self.rate_service()))
            .add_service(OrderServiceServer::new(self.order_service()))
            .add_service(TokenServiceServer::new(
                TokenServiceImpl::new(self.authority.clone())
                    .with_subscriber_access(
                        Arc::clone(&self.transport),
                        self.symbols.names().map(str::to_owned).collect(),
                    )
                    .with_shutdown(self.shutdown.clone())
                    .with_shared_revocations(Arc::clone(&self.transport)),
            ))
            .serve_with_incoming_shutdown(incoming, async {
                shutdown.await;
                transport_health.abort();
                for service in services {
                    health
                        .set_service_status(service, ServingStatus::NotServing)
                        .await;
                }
            })
            .await?;
        Ok(())
    }
}

/// Where this process's orders are executed.
#[derive(Debug)]
enum Orders {
    /// Here: journal and liquidity provider in this process.
    Local(OrderExecutor),
    /// At the cluster's executor.
    Upstream(OrderForwarder),
}

/// A publisher whose sequences continue where the last run in `config`'s
/// data directory left them.
fn durable_publisher(
    config: &Config,
    transport: &Arc<dyn Transport>,
    latest: &LatestRates,
    symbols: &SymbolTable,
) -> Result<RatePublisher, Error> {
    let run_id = format!("{:08x}", StdRng::from_os_rng().random::<u32>());
    let sequences = SequenceStore::open(&config.data_dir.join(SEQUENCES_FILE))?;
    Ok(RatePublisher::durable(
        Arc::clone(transport),
        latest.clone(),
        symbols.clone(),
        run_id,
        sequences,
    ))
}

/// Keeps the gRPC health of `RateService` and of the server (`""`) in step
/// with the transport's health.
async fn report_transport_health(
    mut transport: tokio::sync::watch::Receiver<fxcast_transport::TransportHealth>,
    reporter: tonic_health::server::HealthReporter,
) {
    let mut was_connected = true;
    loop {
        let health = transport.borrow_and_update().clone();
        let status = match &health {
            fxcast_transport::TransportHealth::Connected => {
                if !was_connected {
                    tracing::info!("transport connected again; RateService serving");
                }
                tonic_health::ServingStatus::Serving
            }
            fxcast_transport::TransportHealth::Reconnecting { reason } => {
                // Once per outage; the transport logs each failure itself.
                if was_connected {
                    tracing::warn!(%reason, "transport reconnecting; RateService not serving");
                }
                tonic_health::ServingStatus::NotServing
            }
        };
        was_connected = health.is_connected();
        reporter
            .set_service_status(
                <RateServiceServer<RateServiceImpl> as tonic::server::NamedService>::NAME,
                status,
            )
            .await;
        reporter.set_service_status("", status).await;
        // An in-process transport never changes: its sender is gone.
        if transport.changed().await.is_err() {
            return;
        }
    }
}

impl Drop for RatesCore {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gRPC connection that tells h2 it has no vectored writes. h2 then copies
/// a DATA frame under 1 KiB into its write buffer instead of chaining it
/// (from 256 bytes up) as a separate slice, and a chained frame is always
/// the last one of a write: so a unary answer (an `Order` is about 300
/// bytes) went out as two writes, HEADERS + DATA and then the trailers, each
/// a loopback segment and a wake-up of the client. Copied, the whole answer,
/// and the answers to every order of one journal commit on the connection,
/// leave in one write. Larger frames are still written without a copy.
struct FlatWrites(fxcast_listener::Stream);

impl AsyncRead for FlatWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for FlatWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl tonic::transport::server::Connected for FlatWrites {
    type ConnectInfo =
        <fxcast_listener::Stream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}
