//! The gateway's local copy of the rate stream.
//!
//! One upstream `StreamRates` for every symbol (with the gateway's own
//! token), reconnecting with `resume_after` so nothing is missed. Each tick is
//! serialised to JSON once; WebSocket and SSE connections share those bytes.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::extract::ws::Utf8Bytes;
use fxcast_proto::v1::{ListSymbolsRequest, StreamRatesRequest, stream_rates_response::Event};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{
    json::{RateJson, RateMessage, SymbolJson},
    metrics::Metrics,
    upstream::{Bearer, Upstream},
};

/// One tick, decoded and serialised once.
#[derive(Debug)]
pub(crate) struct RateTick {
    /// The rate.
    pub(crate) rate: RateJson,
    /// `{"type":"rate",...}`: the WebSocket frame and SSE data, shared.
    pub(crate) json: Utf8Bytes,
}

struct SymbolChannel {
    // Held while pushing and broadcasting, and while a new reader takes its
    // snapshot and subscribes, so readers see each tick exactly once.
    history: Mutex<VecDeque<Arc<RateTick>>>,
    sender: broadcast::Sender<Arc<RateTick>>,
}

/// What a new reader of one symbol starts from.
#[derive(Debug)]
pub(crate) struct TickSubscription {
    /// Held ticks after the resume point (or the latest one), oldest first.
    pub(crate) backlog: Vec<Arc<RateTick>>,
    /// Live ticks.
    pub(crate) live: broadcast::Receiver<Arc<RateTick>>,
}

/// Per-symbol history and broadcast of ticks. A cheap `Clone` handle.
#[derive(Clone)]
pub(crate) struct Ticker {
    symbols: Arc<Vec<SymbolJson>>,
    channels: Arc<HashMap<String, SymbolChannel>>,
    history: usize,
    metrics: Metrics,
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticker")
            .field("symbols", &self.symbols.len())
            .finish_non_exhaustive()
    }
}

impl Ticker {
    /// Learns the symbols from the upstream (retrying until it answers or
    /// `stop` fires) and starts following every one of them.
    ///
    /// # Errors
    /// The upstream's status when it refuses the gateway's credentials.
    pub(crate) async fn start(
        upstream: Upstream,
        history: usize,
        buffer: usize,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> Result<Self, tonic::Status> {
        let (token, _) = upstream.service_token().await?;
        let symbols = upstream
            .rates(Bearer::token(&token)?)
            .list_symbols(ListSymbolsRequest {})
            .await?
            .into_inner()
            .symbols
            .into_iter()
            .map(|s| SymbolJson {
                symbol: s.symbol,
                tick_size: s.tick_size,
                price_scale: s.price_scale,
                markup: s.markup,
                latest_sequence: s.latest_sequence,
            })
            .collect::<Vec<_>>();
        let channels = symbols
            .iter()
            .map(|s| {
                let (sender, _) = broadcast::channel(buffer.max(1));
                (
                    s.symbol.clone(),
                    SymbolChannel {
                        history: Mutex::new(VecDeque::new()),
                        sender,
                    },
                )
            })
            .collect();
        let ticker = Self {
            symbols: Arc::new(symbols),
            channels: Arc::new(channels),
            history: history.max(1),
            metrics,
        };
        tokio::spawn(ticker.clone().follow(upstream, stop));
        Ok(ticker)
    }

    /// Symbols the upstream serves, in order.
    pub(crate) fn symbols(&self) -> &[SymbolJson] {
        &self.symbols
    }

    /// Whether the symbol exists.
    pub(crate) fn knows(&self, symbol: &str) -> bool {
        self.channels.contains_key(symbol)
    }

    /// Symbols without a rate yet.
    pub(crate) fn missing(&self) -> Vec<String> {
        self.symbols
            .iter()
            .filter(|s| {
                self.channels[&s.symbol]
                    .history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
            })
            .map(|s| s.symbol.clone())
            .collect()
    }

    /// The newest tick of `symbol`.
    pub(crate) fn latest(&self, symbol: &str) -> Option<Arc<RateTick>> {
        self.channels
            .get(symbol)?
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .back()
            .cloned()
    }

    /// Starts reading `symbol`: without `resume_after` the backlog is the
    /// latest tick, with it every held tick after that sequence.
    pub(crate) fn subscribe(
        &self,
        symbol: &str,
        resume_after: Option<u64>,
    ) -> Option<TickSubscription> {
        let channel = self.channels.get(symbol)?;
        let history = channel.history.lock().unwrap_or_else(|e| e.into_inner());
        let backlog = match resume_after {
            None => history.back().cloned().into_iter().collect(),
            Some(after) => history
                .iter()
                .filter(|t| t.rate.sequence > after)
                .cloned()
                .collect(),
        };
        Some(TickSubscription {
            backlog,
            live: channel.sender.subscribe(),
        })
    }

    fn ingest(&self, rate: RateJson) {
        let Some(channel) = self.channels.get(&rate.symbol) else {
            return;
        };
        let json = serde_json::to_string(&RateMessage {
            kind: "rate",
            rate: &rate,
        })
        .expect("rates serialise");
        let tick = Arc::new(RateTick {
            rate,
            json: Utf8Bytes::from(json),
        });
        let mut history = channel.history.lock().unwrap_or_else(|e| e.into_inner());
        if history
            .back()
            .is_some_and(|last| last.rate.sequence >= tick.rate.sequence)
        {
            return;
        }
        if history.len() == self.history {
            history.pop_front();
        }
        history.push_back(Arc::clone(&tick));
        let _ = channel.sender.send(tick);
        self.metrics.ticks_received.inc();
    }

    fn resume_points(&self) -> HashMap<String, u64> {
        self.channels
            .iter()
            .filter_map(|(symbol, c)| {
                let last = c
                    .history
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .back()
                    .map(|t| t.rate.sequence)?;
                Some((symbol.clone(), last))
            })
            .collect()
    }

    /// Follows the upstream stream until `stop`, reconnecting with backoff.
    async fn follow(self, upstream: Upstream, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.follow_once(&upstream) => result,
            };
            match result {
                Ok(()) => tracing::info!("upstream rate stream ended; reconnecting"),
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "upstream rate stream failed; reconnecting")
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn follow_once(&self, upstream: &Upstream) -> Result<(), tonic::Status> {
        let (token, _) = upstream.service_token().await?;
        let request = StreamRatesRequest {
            symbols: Vec::new(),
            resume_after_sequence: None,
            resume_after: self.resume_points(),
        };
        let mut stream = upstream
            .rates(Bearer::token(&token)?)
            .stream_rates(request)
            .await?
            .into_inner();
        while let Some(message) = stream.message().await? {
            match message.event {
                Some(Event::Rate(rate)) => self.ingest(RateJson::from(&rate)),
                Some(Event::Gap(gap)) => {
                    tracing::warn!(symbol = %gap.symbol, message = %gap.message, "gap in the upstream rate stream");
                }
                None => {}
            }
        }
        Ok(())
    }
}
