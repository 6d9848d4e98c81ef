//! The running application: `build` -> handles -> `shutdown`.

use std::{future::Future, net::SocketAddr, sync::Arc};

use fxcast_gateway::{Upstream, serve_gateway};
use fxcast_services::RatesCore;
use fxcast_transport::{
    MemoryTransport, MirroredTransport, Transport,
    momento::{MomentoConfig, MomentoTransport},
    nats::NatsTransport,
    redis::RedisTransport,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{Config, Error, TransportConfig};

/// fxcast all in one: the rate core with its feed, gRPC, and the gateway
/// talking to that gRPC server over loopback, as `fxcast serve` runs it.
/// Tests and benches build the same thing on `127.0.0.1:0`.
#[derive(Debug)]
pub struct App {
    core: Arc<RatesCore>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    stop: CancellationToken,
    grpc: JoinHandle<Result<(), fxcast_services::Error>>,
    http: JoinHandle<Result<(), fxcast_gateway::Error>>,
    /// The FIX session to the LP, logged out at shutdown.
    fix: Option<fxcast_fix::FixSession>,
}

impl App {
    /// Binds both listeners, connects the transport, starts the core and
    /// both servers. Returns once they accept connections; the log line
    /// `fxcast listening` names the addresses actually bound.
    ///
    /// # Errors
    /// When a listener cannot be bound, the transport cannot be reached, or
    /// the core refuses its configuration.
    pub async fn build(config: Config) -> Result<Self, Error> {
        let data_dir = config.core.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| Error::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let grpc = bind("gRPC", config.grpc_listen)?;
        let http = bind("HTTP", config.http_listen)?;
        tracing::info!(data_dir = %data_dir.display(), "starting fxcast");
        let mut config = config;
        let fix = config.fix_session();
        config.gateway.momento_ops_plan = momento_ops_plan(&config);
        let transport = connect(config.transport).await?;
        let stop = CancellationToken::new();
        let core = Arc::new(RatesCore::start(config.core, transport, stop.child_token()).await?);
        let grpc_addr = grpc.local_addr().map_err(Error::Io)?;
        let http_addr = http.local_addr().map_err(Error::Io)?;
        // Logged once the core is up (keys and API key exist), so whoever
        // reads this line can connect and authenticate at once.
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "fxcast listening");

        let grpc_core = Arc::clone(&core);
        let (connector, local) = fxcast_listener::local();
        let grpc_stop = stop.clone();
        // Either server ending ends the application: no half-running process.
        let grpc_task = tokio::spawn(async move {
            let result = grpc_core
                .serve_grpc_with_local(grpc, Some(local), grpc_stop.clone().cancelled_owned())
                .await;
            grpc_stop.cancel();
            result
        });
        let upstream = Upstream::new(in_process_channel(connector)?, core.authority().api_key());
        let http_stop = stop.clone();
        let http_task = tokio::spawn(async move {
            let result = serve_gateway(upstream, config.gateway, http, http_stop.clone()).await;
            http_stop.cancel();
            result
        });
        Ok(Self {
            core,
            grpc_addr,
            http_addr,
            stop,
            grpc: grpc_task,
            http: http_task,
            fix,
        })
    }

    /// The rate core (publisher, authority, orders) of this process.
    pub fn core(&self) -> &Arc<RatesCore> {
        &self.core
    }

    /// The address the gRPC server is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address the HTTP gateway is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Cancelled when the application stops; long-lived work of the
    /// caller can hang off it.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Runs until `signal` completes or a server fails, then shuts down.
    ///
    /// # Errors
    /// The first server error.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        let stop = self.stop.clone();
        tokio::select! {
            () = signal => tracing::info!("shutting down"),
            () = stop.cancelled() => {}
        }
        self.shutdown().await
    }

    /// Closes streams, drains both servers and records where every
    /// symbol's sequence continues, so a clean restart leaves no gap.
    ///
    /// # Errors
    /// A server's error.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.stop.cancel();
        let core = Arc::clone(&self.core);
        let fix = self.fix.clone();
        let servers = self.join().await;
        if let Some(fix) = fix {
            fix.logout(std::time::Duration::from_secs(2)).await;
        }
        if let Err(err) = core.publisher().checkpoint().await {
            tracing::warn!(error = %err, "could not record the sequences; the next run skips ahead");
        }
        servers?;
        tracing::info!("stopped");
        Ok(())
    }

    /// Waits until both servers have ended (after [`App::stop_token`] is
    /// cancelled) without recording the sequences: what a crash leaves.
    ///
    /// # Errors
    /// A server's error.
    pub async fn join(self) -> Result<(), Error> {
        let grpc = finished(self.grpc.await);
        let http = finished(self.http.await);
        grpc.and(http)
    }
}

fn finished<E: Into<Error>>(
    result: Result<Result<(), E>, tokio::task::JoinError>,
) -> Result<(), Error> {
    result
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
        .map_err(Into::into)
}

fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    fxcast_listener::bind(addr).map_err(|source| Error::Bind { what, addr, source })
}

/// Logs what the Momento settings will spend per second on rates, and
/// returns it for the gateway's metrics; empty without Momento.
fn momento_ops_plan(config: &Config) -> Vec<(&'static str, f64)> {
    let (TransportConfig::Momento(momento) | TransportConfig::Bridge(momento)) = &config.transport
    else {
        return Vec::new();
    };
    let core = &config.core;
    let ticks = (core.feed == fxcast_services::feed::FeedKind::Simulated)
        .then(|| 1.0 / core.simulator.tick_interval.as_secs_f64());
    let Some(plan) = momento.ops_plan(core.symbols.len(), ticks) else {
        tracing::warn!(
            "momento: --momento-publish-rate 0 with a live feed: every rate is published, so \
             operations grow with the feed's tick rate and are not bounded"
        );
        return Vec::new();
    };
    tracing::info!(
        symbols = core.symbols.len(),
        publishes_per_second = plan.publishes,
        cache_writes_per_second = plan.cache_writes,
        deliveries_per_subscriber_per_second = plan.deliveries_per_subscriber,
        "momento operations these settings spend on rates (orders add one publish per event)"
    );
    vec![
        ("publishes", plan.publishes),
        ("cache_writes", plan.cache_writes),
        ("deliveries_per_subscriber", plan.deliveries_per_subscriber),
    ]
}

async fn connect(config: TransportConfig) -> Result<Arc<dyn Transport>, Error> {
    async fn momento(config: MomentoConfig) -> Result<Arc<dyn Transport>, Error> {
        let cache = config.cache.clone();
        match MomentoTransport::connect(config).await {
            Ok(transport) => Ok(Arc::new(transport)),
            Err(source) => Err(Error::Momento { cache, source }),
        }
    }
    Ok(match config {
        TransportConfig::Memory => Arc::new(MemoryTransport::default()),
        TransportConfig::Given(transport) => transport,
        TransportConfig::Momento(config) => momento(config).await?,
        TransportConfig::Nats(config) => Arc::new(
            NatsTransport::connect(config)
                .await
                .map_err(|source| Error::Nats { source })?,
        ),
        TransportConfig::Redis(config) => Arc::new(
            RedisTransport::connect(config)
                .await
                .map_err(|source| Error::Redis { source })?,
        ),
        TransportConfig::Bridge(config) => Arc::new(MirroredTransport::new(
            Arc::new(MemoryTransport::default()),
            momento(config).await?,
            "rates.",
        )),
    })
}

/// The gateway's channel to this process's own gRPC server: in-process
/// pipes rather than loopback sockets, so it needs no TLS, no client
/// certificate and no slot under the gRPC listener's connection cap.
fn in_process_channel(
    connector: fxcast_listener::LocalConnector,
) -> Result<tonic::transport::Channel, Error> {
    let connect = tower::service_fn(move |_: tonic::transport::Uri| {
        let pipe = connector.connect().map(hyper_util::rt::TokioIo::new);
        std::future::ready(pipe)
    });
    Ok(
        fxcast_gateway::upstream_endpoint("http://in-process")?
            .connect_with_connector_lazy(connect),
    )
}
