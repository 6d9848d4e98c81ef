//! Local fan-out of received ticks to streaming clients.
//!
//! The process holds exactly one transport subscription per symbol topic (so
//! a network transport sees one subscriber per process however many clients
//! stream). Each received payload is decoded once into an `Arc<Tick>`, kept
//! in a bounded per-symbol history for resumption, and broadcast to local
//! streams.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use fxcast_transport::{Delivery, Transport};
use tokio::{sync::broadcast, task::JoinSet};

use crate::{Error, LatestRates, SymbolTable, Tick, rates_topic};

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

struct SymbolChannel {
    // Held while pushing history *and* broadcasting, and while a new stream
    // snapshots history and subscribes: so a stream sees every tick exactly
    // once, either in its snapshot or live.
    history: Mutex<VecDeque<Arc<Tick>>>,
    sender: broadcast::Sender<Arc<Tick>>,
}

/// What a new local stream of one symbol starts from.
#[derive(Debug)]
pub struct SymbolSubscription {
    /// Ticks to deliver first, oldest first.
    pub backlog: Vec<Arc<Tick>>,
    /// Live ticks after the backlog.
    pub live: broadcast::Receiver<Arc<Tick>>,
}

/// Per-symbol history and broadcast of received ticks. A cheap `Clone` handle.
#[derive(Clone)]
pub struct RateHub {
    channels: Arc<HashMap<String, SymbolChannel>>,
    latest: LatestRates,
    history: usize,
}

impl std::fmt::Debug for RateHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateHub")
            .field("symbols", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl RateHub {
    /// Creates the hub for `symbols`; ticks it receives also update `latest`.
    pub fn new(symbols: &SymbolTable, latest: LatestRates, config: HubConfig) -> Self {
        let channels = symbols
            .names()
            .map(|name| {
                let (sender, _) = broadcast::channel(config.stream_buffer.max(1));
                let channel = SymbolChannel {
                    history: Mutex::new(VecDeque::new()),
                    sender,
                };
                (name.to_owned(), channel)
            })
            .collect();
        Self {
            channels: Arc::new(channels),
            latest,
            history: config.history.max(1),
        }
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
        for symbol in self.channels.keys() {
            let topic = rates_topic(symbol);
            let mut subscription = transport.subscribe(&topic).await?;
            let hub = self.clone();
            let transport = Arc::clone(transport);
            let symbol = symbol.clone();
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
            self.channels
                .keys()
                .map(|symbol| self.recover(transport, symbol)),
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
        let Some(channel) = self.channels.get(tick.symbol()) else {
            tracing::warn!(
                symbol = tick.symbol(),
                "ignoring tick of an unconfigured symbol"
            );
            return;
        };
        self.latest.update(Arc::clone(&tick));
        let mut history = channel.history.lock().unwrap_or_else(|e| e.into_inner());
        if history
            .back()
            .is_some_and(|last| last.sequence() >= tick.sequence())
        {
            return;
        }
        if history.len() == self.history {
            history.pop_front();
        }
        history.push_back(Arc::clone(&tick));
        // No receivers is fine: nobody streams this symbol right now.
        let _ = channel.sender.send(tick);
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
        let channel = self
            .channels
            .get(symbol)
            .ok_or_else(|| Error::UnknownSymbol {
                symbol: symbol.to_owned(),
                known: self.channels.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        let history = channel.history.lock().unwrap_or_else(|e| e.into_inner());
        let backlog = match resume_after {
            None => history.back().cloned().into_iter().collect(),
            Some(after) => history
                .iter()
                .filter(|t| t.sequence() > after)
                .cloned()
                .collect(),
        };
        let live = channel.sender.subscribe();
        Ok(SymbolSubscription { backlog, live })
    }

    /// The newest tick the hub holds for `symbol`.
    pub fn latest(&self, symbol: &str) -> Option<Arc<Tick>> {
        let channel = self.channels.get(symbol)?;
        channel
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
    }

    /// The held tick of `symbol` whose `rate_id` is `rate_id`, if the hub
    /// still holds it (the order check of a quoted rate).
    pub fn find(&self, symbol: &str, rate_id: &str) -> Option<Arc<Tick>> {
        // rate_id is `<SYMBOL>-<run id>-<sequence>`; history is in sequence order.
        let sequence: u64 = rate_id.rsplit('-').next()?.parse().ok()?;
        let channel = self.channels.get(symbol)?;
        let history = channel.history.lock().unwrap_or_else(|e| e.into_inner());
        let index = history
            .binary_search_by_key(&sequence, |t| t.sequence())
            .ok()?;
        let tick = &history[index];
        (tick.rate.rate_id == rate_id).then(|| Arc::clone(tick))
    }

    /// Number of local streams of `symbol`.
    pub fn stream_count(&self, symbol: &str) -> usize {
        self.channels
            .get(symbol)
            .map_or(0, |c| c.sender.receiver_count())
    }
}
