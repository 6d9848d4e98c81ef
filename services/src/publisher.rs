//! The rate publisher: feed quotes in, published rates out.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use bytes::Bytes;
use fxcast_proto::v1::Rate;
use fxcast_transport::Transport;
use prost::Message;
use tokio::sync::{Mutex, mpsc};

use crate::{
    Error, LatestRates, SymbolTable, Tick, feed::Quote, rates_topic, sequences::SequenceStore,
};

/// A marked-up price ready to be numbered and published.
struct Priced {
    symbol: String,
    bid: rust_decimal::Decimal,
    ask: rust_decimal::Decimal,
    source_time: Option<prost_types::Timestamp>,
    source: String,
    stale: bool,
}

/// Turns raw quotes into published rates: applies the symbol's markup,
/// assigns its gap-free sequence and a `rate_id`, encodes the rate once,
/// records it as the latest and publishes the bytes on `rates.<SYMBOL>`.
///
/// A cheap `Clone` handle; the feed and `PublishRate` share one.
#[derive(Clone)]
pub struct RatePublisher {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Arc<dyn Transport>,
    latest: LatestRates,
    symbols: SymbolTable,
    run_id: String,
    // The last published sequence per symbol. A tokio mutex held across the
    // publish so topic order always equals sequence order, even with
    // concurrent publishers of one symbol.
    sequences: HashMap<String, Mutex<u64>>,
    // Where sequences continue after a restart (none: they start at 1).
    store: Option<SequenceStore>,
}

impl std::fmt::Debug for RatePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RatePublisher")
            .field("run_id", &self.inner.run_id)
            .finish_non_exhaustive()
    }
}

impl RatePublisher {
    /// Creates a publisher whose sequences start at 1. `run_id`
    /// distinguishes this run's `rate_id`s from those of other runs.
    pub fn new(
        transport: Arc<dyn Transport>,
        latest: LatestRates,
        symbols: SymbolTable,
        run_id: String,
    ) -> Self {
        Self::build(transport, latest, symbols, run_id, None)
    }

    /// Creates a publisher whose sequences continue where the last run's
    /// ended: after the floors in `store`, and after the latest rate already
    /// in `latest` (primed from the transport's shared storage, so a
    /// publisher that moved to another machine continues too).
    pub(crate) fn durable(
        transport: Arc<dyn Transport>,
        latest: LatestRates,
        symbols: SymbolTable,
        run_id: String,
        store: SequenceStore,
    ) -> Self {
        Self::build(transport, latest, symbols, run_id, Some(store))
    }

    fn build(
        transport: Arc<dyn Transport>,
        latest: LatestRates,
        symbols: SymbolTable,
        run_id: String,
        store: Option<SequenceStore>,
    ) -> Self {
        let sequences = symbols
            .names()
            .map(|symbol| {
                let floor = store.as_ref().map_or(1, |store| store.floor(symbol));
                let primed = latest.get(symbol).map_or(0, |tick| tick.sequence());
                (symbol.to_owned(), Mutex::new((floor - 1).max(primed)))
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                transport,
                latest,
                symbols,
                run_id,
                sequences,
                store,
            }),
        }
    }

    /// Records, for every symbol, exactly where the next run continues (one
    /// past the last published sequence), so a clean restart leaves no gap.
    /// Publishing after this is still safe: it reserves again.
    ///
    /// # Errors
    /// [`Error::Io`] when the floors cannot be written.
    pub async fn checkpoint(&self) -> Result<(), Error> {
        let Some(store) = &self.inner.store else {
            return Ok(());
        };
        for (symbol, last) in &self.inner.sequences {
            let last = last.lock().await;
            if *last > 0 {
                store.set(symbol, *last + 1).await?;
            }
        }
        Ok(())
    }

    /// This run's identifier, part of every `rate_id`.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    /// Publishes one quote from `source`.
    ///
    /// # Errors
    /// [`Error::UnknownSymbol`], [`Error::InvalidArgument`] for a non-positive
    /// or crossed price, or the transport's error (the sequence is then not
    /// consumed, so sequences stay gap-free).
    pub async fn publish(&self, quote: Quote, source: &str) -> Result<Arc<Tick>, Error> {
        let inner = &*self.inner;
        let spec = inner.symbols.get(&quote.symbol)?;
        if quote.bid <= rust_decimal::Decimal::ZERO || quote.ask <= rust_decimal::Decimal::ZERO {
            return Err(Error::InvalidArgument(format!(
                "{}: bid {} and ask {} must be positive",
                quote.symbol, quote.bid, quote.ask
            )));
        }
        if quote.bid > quote.ask {
            return Err(Error::InvalidArgument(format!(
                "{}: bid {} is above ask {}",
                quote.symbol, quote.bid, quote.ask
            )));
        }
        let (bid, ask) = spec.markup.apply(quote.bid, quote.ask, spec.price_scale);
        let mut next = inner.sequences[&quote.symbol].lock().await;
        let priced = Priced {
            symbol: quote.symbol,
            bid,
            ask,
            source_time: Some(quote.source_time.into()),
            source: source.to_owned(),
            stale: false,
        };
        self.publish_locked(&mut next, priced).await
    }

    /// Re-publishes the latest rate of `symbol` marked `stale`, with the next
    /// sequence: how streams and the order check learn that its feed has
    /// gone quiet. Prices, source and source time are those of the latest
    /// rate. Returns `None` (publishing nothing) when the symbol has no rate
    /// yet or its latest rate is already stale.
    ///
    /// # Errors
    /// [`Error::UnknownSymbol`], or the transport's error.
    pub async fn publish_stale(&self, symbol: &str) -> Result<Option<Arc<Tick>>, Error> {
        let inner = &*self.inner;
        inner.symbols.get(symbol)?;
        // Read the latest under the sequence lock, so no quote can be
        // published between the read and the marker.
        let mut next = inner.sequences[symbol].lock().await;
        let Some(latest) = inner.latest.get(symbol).filter(|t| !t.rate.stale) else {
            return Ok(None);
        };
        let priced = Priced {
            symbol: symbol.to_owned(),
            bid: latest.bid,
            ask: latest.ask,
            source_time: latest.rate.source_time,
            source: latest.rate.source.clone(),
            stale: true,
        };
        self.publish_locked(&mut next, priced).await.map(Some)
    }

    /// Numbers, encodes, publishes and records `priced`; `next` is the
    /// symbol's locked sequence, advanced only once the transport took it.
    async fn publish_locked(&self, next: &mut u64, priced: Priced) -> Result<Arc<Tick>, Error> {
        let inner = &*self.inner;
        let Priced {
            symbol,
            bid,
            ask,
            source_time,
            source,
            stale,
        } = priced;
        let sequence = *next + 1;
        if let Some(store) = &inner.store {
            store.reserve(&symbol, sequence).await?;
        }
        let rate = Rate {
            rate_id: format!("{symbol}-{}-{sequence}", inner.run_id),
            bid: bid.to_string(),
            ask: ask.to_string(),
            sequence,
            source_time,
            publish_time: Some(SystemTime::now().into()),
            source,
            stale,
            symbol,
        };
        let payload = Bytes::from(rate.encode_to_vec());
        let tick = Arc::new(Tick {
            rate,
            bid,
            ask,
            payload: payload.clone(),
            received_at: Instant::now(),
            frame: std::sync::OnceLock::new(),
        });
        let topic = rates_topic(tick.symbol());
        inner.transport.publish(&topic, payload.clone()).await?;
        *next = sequence;
        inner.latest.update(Arc::clone(&tick));
        // The latest rate in shared storage (Momento's cache), for processes
        // that start later; written in the background, so never a reason to
        // fail a published rate.
        if let Err(err) = inner.transport.retain(&topic, payload).await {
            tracing::warn!(%topic, error = %err, "could not retain the latest rate");
        }
        Ok(tick)
    }

    /// Publishes every quote from `quotes` until the channel closes. A quote
    /// that fails is logged and skipped; the feed keeps running.
    pub async fn run(self, mut quotes: mpsc::Receiver<Quote>, source: &'static str) {
        while let Some(quote) = quotes.recv().await {
            let symbol = quote.symbol.clone();
            if let Err(err) = self.publish(quote, source).await {
                tracing::warn!(%symbol, error = %err, "could not publish quote");
            }
        }
    }
}
