//! Local fan-out of received ticks to streaming clients.
//!
//! The process holds exactly one transport subscription per symbol topic (so
//! a network transport sees one subscriber per process however many clients
//! stream). Each received payload is decoded once into an `Arc<Tick>`, kept
//! in a bounded per-symbol history for resumption, and broadcast to local
//! streams.

use std::sync::Arc;

use fxcast_transport::{Delivery, Transport};
use tokio::task::JoinSet;

use crate::{
    Error, LatestRates, SymbolTable, Tick,
    feed::FeedHealth,
    rates_topic,
    stream::{RingSubscription, SymbolRings},
};

/// Settings of [`RateHub`].
#[derive(Debug, Clone, Copy)]
pub struct HubConfig {
    /// Ticks kept per symbol for `resume_after_sequence`.
    pub history: usize,
    /// Ticks buffered per symbol for the slowest local stream before it lags.
    pub stream_buffer: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            history: 4096,
            stream_buffer: 1024,
        }
    }
}

/// What a new local stream of one symbol starts from.
pub type SymbolSubscription = RingSubscription<Tick>;

/// Per-symbol history and broadcast of received ticks. A cheap `Clone` handle.
#[derive(Clone)]
pub struct RateHub {
    rings: SymbolRings<Tick>,
    latest: LatestRates,
    /// In a process without a feed: where the arrival of each tick is
    /// recorded, so a publisher that stops is noticed.
    arrivals: Option<FeedHealth>,
}

impl std::fmt::Debug for RateHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateHub")
            .field("symbols", &self.rings.iter().count())
            .finish_non_exhaustive()
    }
}

impl RateHub {
    /// Creates the hub for `symbols`; ticks it receives also update `latest`.
    pub fn new(symbols: &SymbolTable, latest: LatestRates, config: HubConfig) -> Self {
        Self {
            rings: SymbolRings::new(symbols.names(), config.history, config.stream_buffer),
            latest,
            arrivals: None,
        }
    }

    /// Records the arrival of every fresh tick in `health` (a process
    /// without a feed of its own watches its publisher this way).
    #[must_use]
    pub fn recording_arrivals(mut self, health: FeedHealth) -> Self {
        self.arrivals = Some(health);
        self
    }

    /// Subscribes to every symbol's topic on `transport` and spawns one ingest
    /// task per symbol into `tasks`. Returns once every subscription is live.
    ///
    /// # Errors
    /// The transport's error when a subscription fails.
    pub async fn connect(
        &self,
        transport: &Arc<dyn Transport>,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), Error> {
        for (symbol, _) in self.rings.iter() {
            let topic = rates_topic(symbol);
            let mut subscription = transport.subscribe(&topic).await?;
            let hub = self.clone();
            let transport = Arc::clone(transport);
            let symbol = symbol.to_owned();
            tasks.spawn(async move {
                while let Some(delivery) = subscription.next().await {
                    match delivery {
                        Delivery::Message(payload) => match Tick::decode(&topic, payload) {
                            Ok(tick) => hub.ingest(Arc::new(tick)),
                            Err(err) => {
                                tracing::warn!(%topic, error = %err, "dropping undecodable rate")
                            }
                        },
                        Delivery::Gap(gap) => {
                            tracing::warn!(%topic, %gap, "transport gap on rate ingest");
                            // Skip to the latest rate in shared storage, if
                            // the transport has any; streams announce the
                            // sequences in between as a gap.
                            hub.recover(&transport, &symbol).await;
                        }
                    }
                }
                tracing::debug!(%topic, "rate ingest ended: transport closed");
            });
        }
        Ok(())
    }

    /// Ingests the latest rate of every symbol that the transport holds in
    /// shared storage (Momento's cache), so streams, `GetLatestRate` and the
    /// order check have a rate before the next tick arrives.
    pub async fn prime(&self, transport: &Arc<dyn Transport>) {
        futures_util::future::join_all(
            self.rings
                .iter()
                .map(|(symbol, _)| self.recover(transport, symbol)),
        )
        .await;
    }

    /// Ingests `symbol`'s retained rate, if the transport holds a newer one.
    async fn recover(&self, transport: &Arc<dyn Transport>, symbol: &str) {
        let topic = rates_topic(symbol);
        match transport.retained(&topic).await {
            Ok(Some(payload)) => match Tick::decode_retained(&topic, payload) {
                Ok(tick) if tick.symbol() == symbol => self.ingest(Arc::new(tick)),
                Ok(_) => tracing::warn!(%topic, "retained rate of another symbol; ignored"),
                Err(err) => tracing::warn!(%topic, error = %err, "undecodable retained rate"),
            },
            Ok(None) => {}
            Err(err) => tracing::warn!(%topic, error = %err, "cannot read the retained rate"),
        }
    }

    /// Records a received tick and hands it to every local stream of its
    /// symbol. Ticks of unknown symbols or older than the newest held are
    /// ignored.
    pub fn ingest(&self, tick: Arc<Tick>) {
        let Some(ring) = self.rings.get(tick.symbol()) else {
            tracing::warn!(
                symbol = tick.symbol(),
                "ignoring tick of an unconfigured symbol"
            );
            return;
        };
        if let Some(health) = &self.arrivals
            && !tick.rate.stale
        {
            health.record_arrival(tick.symbol(), tick.received_at);
        }
        self.latest.update(Arc::clone(&tick));
        ring.push(tick);
    }

    /// Starts a local stream of `symbol`. Without `resume_after` the backlog
    /// is the latest tick; with it, every held tick with a higher sequence.
    ///
    /// # Errors
    /// [`Error::UnknownSymbol`] for a symbol the hub does not carry.
    pub fn subscribe(
        &self,
        symbol: &str,
        resume_after: Option<u64>,
    ) -> Result<SymbolSubscription, Error> {
        self.rings
            .subscribe(symbol, resume_after)
            .ok_or_else(|| Error::UnknownSymbol {
                symbol: symbol.to_owned(),
                known: self
                    .rings
                    .iter()
                    .map(|(symbol, _)| symbol)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The newest tick the hub holds for `symbol`.
    pub fn latest(&self, symbol: &str) -> Option<Arc<Tick>> {
        self.rings.latest(symbol)
    }

    /// The held tick of `symbol` whose `rate_id` is `rate_id`, if the hub
    /// still holds it (the order check of a quoted rate).
    pub fn find(&self, symbol: &str, rate_id: &str) -> Option<Arc<Tick>> {
        // rate_id is `<SYMBOL>-<run id>-<sequence>`.
        let sequence: u64 = rate_id.rsplit('-').next()?.parse().ok()?;
        let tick = self.rings.get(symbol)?.get(sequence)?;
        (tick.rate.rate_id == rate_id).then_some(tick)
    }
}
