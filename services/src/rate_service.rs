//! The tonic implementation of `fxcast.v1.RateService`.

use std::{
    collections::VecDeque,
    pin::Pin,
    time::{Duration, Instant, SystemTime},
};

use futures_util::{Stream, StreamExt, stream::select_all};
use fxcast_proto::v1::{
    Gap, GapReason, GetLatestRateRequest, ListSymbolsRequest, ListSymbolsResponse,
    PublishRateRequest, Rate, StreamRatesRequest, StreamRatesResponse, SymbolInfo,
    rate_service_server::RateService, stream_rates_response,
};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    Error, LatestRates, RateHub, RatePublisher, SymbolTable, Tick,
    auth::{Caller, Scope, TokenAuthority},
    feed::Quote,
    rates::parse_price,
};

/// Limits that keep one slow streaming client from costing others anything.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// A stream that lags (and is conflated) this many times within
    /// `lag_window` is closed with `RESOURCE_EXHAUSTED`.
    pub max_lags: usize,
    /// Window over which lags are counted.
    pub lag_window: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_lags: 5,
            lag_window: Duration::from_secs(60),
        }
    }
}

/// `RateService` over the local hub, latest-rate cache and publisher.
#[derive(Debug, Clone)]
pub struct RateServiceImpl {
    symbols: SymbolTable,
    latest: LatestRates,
    hub: RateHub,
    publisher: RatePublisher,
    limits: StreamLimits,
    shutdown: CancellationToken,
    authority: TokenAuthority,
}

impl RateServiceImpl {
    /// Creates the service. Streams end with `UNAVAILABLE` when `shutdown` is
    /// cancelled, so a graceful server shutdown never waits on them, and with
    /// `UNAUTHENTICATED` when their token expires or `authority` revokes it.
    pub fn new(
        symbols: SymbolTable,
        latest: LatestRates,
        hub: RateHub,
        publisher: RatePublisher,
        limits: StreamLimits,
        shutdown: CancellationToken,
        authority: TokenAuthority,
    ) -> Self {
        Self {
            symbols,
            latest,
            hub,
            publisher,
            limits,
            shutdown,
            authority,
        }
    }
}

type RateStream = Pin<Box<dyn Stream<Item = Result<StreamRatesResponse, Status>> + Send>>;

fn rate_event(tick: &Tick) -> StreamRatesResponse {
    StreamRatesResponse {
        event: Some(stream_rates_response::Event::Rate(tick.rate.clone())),
    }
}

fn gap_event(symbol: &str, first: u64, last: u64, reason: GapReason) -> StreamRatesResponse {
    let why = match reason {
        GapReason::ReplayUnavailable => "the server no longer holds them for replay",
        GapReason::SlowConsumer => "the client read too slowly; skipped to the latest rate",
        _ => "the transport lost them",
    };
    let range = if first == last {
        format!("sequence {first}")
    } else {
        format!("sequences {first}..={last}")
    };
    StreamRatesResponse {
        event: Some(stream_rates_response::Event::Gap(Gap {
            symbol: symbol.to_owned(),
            first_missing: first,
            last_missing: last,
            reason: reason as i32,
            message: format!("{symbol}: {range} not delivered: {why}"),
        })),
    }
}

/// Per-symbol delivery state of one stream.
struct Cursor {
    symbol: String,
    last_sent: Option<u64>,
}

impl Cursor {
    /// Events to send for `tick`: nothing if already sent, else an optional
    /// gap announcement followed by the rate.
    fn advance(&mut self, tick: &Tick, reason: GapReason, out: &mut Vec<StreamRatesResponse>) {
        let seq = tick.sequence();
        if let Some(last) = self.last_sent {
            if seq <= last {
                return;
            }
            if seq > last + 1 {
                out.push(gap_event(&self.symbol, last + 1, seq - 1, reason));
            }
        }
        out.push(rate_event(tick));
        self.last_sent = Some(seq);
    }
}

#[tonic::async_trait]
impl RateService for RateServiceImpl {
    async fn list_symbols(
        &self,
        request: Request<ListSymbolsRequest>,
    ) -> Result<Response<ListSymbolsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let symbols = self
            .symbols
            .iter()
            .filter(|spec| caller.scopes.may_subscribe(&spec.symbol))
            .map(|spec| SymbolInfo {
                symbol: spec.symbol.clone(),
                tick_size: spec.tick_size().to_string(),
                price_scale: spec.price_scale,
                markup: spec.markup.to_string(),
                latest_sequence: self.latest.get(&spec.symbol).map_or(0, |t| t.sequence()),
            })
            .collect();
        Ok(Response::new(ListSymbolsResponse { symbols }))
    }

    async fn get_latest_rate(
        &self,
        request: Request<GetLatestRateRequest>,
    ) -> Result<Response<Rate>, Status> {
        let caller = Caller::of(&request)?.clone();
        let symbol = request.into_inner().symbol;
        if symbol.is_empty() {
            return Err(Error::InvalidArgument("symbol is required".into()).into());
        }
        self.symbols.get(&symbol)?;
        caller.require_subscribe([symbol.as_str()])?;
        let tick = self
            .latest
            .fresh(&symbol)
            .await
            .ok_or(Error::NoRateYet(symbol))?;
        Ok(Response::new(tick.rate.clone()))
    }

    type StreamRatesStream = RateStream;

    async fn stream_rates(
        &self,
        request: Request<StreamRatesRequest>,
    ) -> Result<Response<RateStream>, Status> {
        let caller = Caller::of(&request)?.clone();
        let request = request.into_inner();
        let mut symbols: Vec<String> = if request.symbols.is_empty() {
            // Every symbol the caller may see.
            let visible: Vec<String> = self
                .symbols
                .names()
                .filter(|s| caller.scopes.may_subscribe(s))
                .map(str::to_owned)
                .collect();
            if visible.is_empty() {
                return Err(Status::permission_denied(
                    "this token has no rates:subscribe scope",
                ));
            }
            visible
        } else {
            request.symbols
        };
        symbols.sort();
        symbols.dedup();
        for symbol in &symbols {
            self.symbols.get(symbol)?;
        }
        caller.require_subscribe(symbols.iter().map(String::as_str))?;
        for symbol in request.resume_after.keys() {
            if !symbols.contains(symbol) {
                return Err(Status::invalid_argument(format!(
                    "resume_after names {symbol:?}, which is not among the streamed symbols"
                )));
            }
        }

        // Subscribe before reading the backlog (inside `hub.subscribe`), so
        // nothing published in between is lost; the cursors drop duplicates.
        let mut backlog_events = Vec::new();
        let mut cursors = Vec::with_capacity(symbols.len());
        let mut lives = Vec::with_capacity(symbols.len());
        for (index, symbol) in symbols.iter().enumerate() {
            let resume = request
                .resume_after
                .get(symbol)
                .copied()
                .or(request.resume_after_sequence);
            let sub = self.hub.subscribe(symbol, resume)?;
            let mut cursor = Cursor {
                symbol: symbol.clone(),
                last_sent: resume,
            };
            for tick in &sub.backlog {
                cursor.advance(tick, GapReason::ReplayUnavailable, &mut backlog_events);
            }
            cursors.push(cursor);
            lives.push(BroadcastStream::new(sub.live).map(move |item| (index, item)));
        }

        let hub = self.hub.clone();
        let limits = self.limits;
        let shutdown = self.shutdown.clone();
        // The stream ends when its credential does (expiry or revocation);
        // clients reconnect with a fresh token (and resume_after, so nothing
        // is lost).
        let credential_end = self.authority.credential_end(&caller);
        let stream = async_stream::stream! {
            for event in backlog_events {
                yield Ok(event);
            }
            let mut live = select_all(lives);
            let mut lags: VecDeque<Instant> = VecDeque::new();
            let mut out = Vec::with_capacity(2);
            // Built once, not per tick: each would register a timer and a
            // waiter every time round the loop.
            let cancelled = shutdown.cancelled();
            tokio::pin!(cancelled, credential_end);
            loop {
                let next = tokio::select! {
                    biased;
                    () = &mut cancelled => {
                        yield Err(Status::unavailable("server is shutting down; reconnect with resume_after to continue"));
                        break;
                    }
                    end = &mut credential_end => {
                        yield Err(end.status(" and resume_after to continue"));
                        break;
                    }
                    next = live.next() => next,
                };
                let Some((index, item)) = next else { break };
                let cursor = &mut cursors[index];
                match item {
                    Ok(tick) => cursor.advance(&tick, GapReason::Transport, &mut out),
                    Err(BroadcastStreamRecvError::Lagged(_)) => {
                        let now = Instant::now();
                        lags.push_back(now);
                        while lags.front().is_some_and(|t| now.duration_since(*t) > limits.lag_window) {
                            lags.pop_front();
                        }
                        if lags.len() >= limits.max_lags {
                            yield Err(Status::resource_exhausted(format!(
                                "slow consumer: fell behind {} times within {:?}; reconnect with resume_after to continue",
                                lags.len(), limits.lag_window
                            )));
                            break;
                        }
                        // Conflate: skip straight to the newest rate.
                        if let Some(tick) = hub.latest(&cursor.symbol) {
                            cursor.advance(&tick, GapReason::SlowConsumer, &mut out);
                        }
                    }
                }
                for event in out.drain(..) {
                    yield Ok(event);
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish_rate(
        &self,
        request: Request<PublishRateRequest>,
    ) -> Result<Response<Rate>, Status> {
        let caller = Caller::of(&request)?.clone();
        caller.require(&Scope::RatesPublish)?;
        let request = request.into_inner();
        if request.symbol.is_empty() {
            return Err(Error::InvalidArgument("symbol is required".into()).into());
        }
        self.symbols.get(&request.symbol)?;
        let bid = parse_price("bid", &request.bid)?;
        let ask = parse_price("ask", &request.ask)?;
        let source_time = match request.source_time {
            None => SystemTime::now(),
            Some(ts) => SystemTime::try_from(ts).map_err(|e| {
                Status::invalid_argument(format!("source_time is not a valid timestamp: {e}"))
            })?,
        };
        let quote = Quote {
            symbol: request.symbol,
            bid,
            ask,
            source_time,
        };
        let tick = self
            .publisher
            .publish(quote, &format!("external:{}", caller.subject))
            .await?;
        Ok(Response::new(tick.rate.clone()))
    }
}
