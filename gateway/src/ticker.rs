//! The gateway's local copy of the rate stream.
//!
//! One upstream `StreamRates` for every symbol (with the gateway's own
//! token), reconnecting with `resume_after` so nothing is missed. Each tick is
//! serialised to JSON once; WebSocket and SSE connections share those bytes.

use std::{collections::HashMap, sync::Arc};

use axum::extract::ws::Utf8Bytes;
use fxcast_proto::v1::{ListSymbolsRequest, StreamRatesRequest, stream_rates_response::Event};
use fxcast_services::stream::{RingSubscription, Sequenced, SymbolRings};
use tokio_util::sync::CancellationToken;

use crate::{
    json::{RateJson, RateMessage, SymbolJson},
    metrics::Metrics,
    upstream::{Bearer, Upstream, follow_stream},
};

/// One tick, decoded and serialised once.
#[derive(Debug)]
pub(crate) struct RateTick {
    /// The rate.
    pub(crate) rate: RateJson,
    /// `{"type":"rate",...}`: the WebSocket frame and SSE data, shared.
    pub(crate) json: Utf8Bytes,
}

impl Sequenced for RateTick {
    fn symbol(&self) -> &str {
        &self.rate.symbol
    }

    fn sequence(&self) -> u64 {
        self.rate.sequence
    }
}

/// Per-symbol history and broadcast of ticks. A cheap `Clone` handle.
#[derive(Clone)]
pub(crate) struct Ticker {
    symbols: Arc<Vec<SymbolJson>>,
    rings: SymbolRings<RateTick>,
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
            .map(SymbolJson::from)
            .collect::<Vec<_>>();
        let rings = SymbolRings::new(symbols.iter().map(|s| s.symbol.as_str()), history, buffer);
        let ticker = Self {
            symbols: Arc::new(symbols),
            rings,
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
        self.rings.get(symbol).is_some()
    }

    /// Symbols without a rate yet.
    pub(crate) fn missing(&self) -> Vec<String> {
        self.symbols
            .iter()
            .filter(|s| self.rings.latest(&s.symbol).is_none())
            .map(|s| s.symbol.clone())
            .collect()
    }

    /// The newest tick of `symbol`.
    pub(crate) fn latest(&self, symbol: &str) -> Option<Arc<RateTick>> {
        self.rings.latest(symbol)
    }

    /// Starts reading `symbol`: without `resume_after` the backlog is the
    /// latest tick, with it every held tick after that sequence.
    pub(crate) fn subscribe(
        &self,
        symbol: &str,
        resume_after: Option<u64>,
    ) -> Option<RingSubscription<RateTick>> {
        self.rings.subscribe(symbol, resume_after)
    }

    fn ingest(&self, rate: RateJson) {
        let Some(ring) = self.rings.get(&rate.symbol) else {
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
        if ring.push(tick) {
            self.metrics.ticks_received.inc();
        }
    }

    fn resume_points(&self) -> HashMap<String, u64> {
        self.rings
            .iter()
            .filter_map(|(symbol, ring)| Some((symbol.to_owned(), ring.latest()?.rate.sequence)))
            .collect()
    }

    /// Follows the upstream stream until `stop`, reconnecting with backoff.
    async fn follow(self, upstream: Upstream, stop: CancellationToken) {
        let (this, upstream) = (&self, &upstream);
        follow_stream(&stop, || this.follow_once(upstream), |outcome, backoff| {
            match outcome {
                Ok(()) => tracing::info!("upstream rate stream ended; reconnecting"),
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "upstream rate stream failed; reconnecting")
                }
            }
            Some(backoff.next_delay())
        })
        .await;
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
