//! The tonic implementation of `fxcast.v1.RateService`.

use std::{
    pin::Pin,
    time::{Duration, SystemTime},
};

use futures_util::{Stream, StreamExt, stream::select_all};
use fxcast_proto::frame::StreamRatesFrame;
use fxcast_proto::v1::{
    Gap, GapReason, GetLatestRateRequest, ListSymbolsRequest, ListSymbolsResponse,
    PublishRateRequest, Rate, StreamRatesRequest, StreamRatesResponse, SymbolInfo,
    rate_service_server::RateService, stream_rates_response,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    Error, LatestRates, RateHub, RatePublisher, SymbolTable, Tick,
    auth::{Caller, CredentialEnd, Scope, TokenAuthority, unless_ended},
    feed::Quote,
    quote::quoted,
    rates::parse_price,
    stream::{self, Delivery, GapCause, LagCounter, LagLimit, LiveTicks, StreamCursor},
};

/// Limits that keep one slow streaming client from costing others anything.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// A stream that lags (and is conflated) this many times within
    /// `lag_window` is closed with `RESOURCE_EXHAUSTED`. Lags within a
    /// second of the last one counted are one stall
    /// ([`LAG_DEBOUNCE`](crate::stream::LAG_DEBOUNCE)).
    pub max_lags: usize,
    /// Window over which lags are counted.
    pub lag_window: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        LagLimit::default().into()
    }
}

impl From<LagLimit> for StreamLimits {
    fn from(limit: LagLimit) -> Self {
        Self {
            max_lags: limit.max_lags,
            lag_window: limit.window,
        }
    }
}

impl From<StreamLimits> for LagLimit {
    fn from(limits: StreamLimits) -> Self {
        Self {
            max_lags: limits.max_lags,
            window: limits.lag_window,
        }
    }
}

/// `RateService` over the local hub, latest-rate cache and publisher, made
/// by [`RatesCore::rate_service`](crate::RatesCore::rate_service).
///
/// Streams end with `UNAVAILABLE` when `shutdown` is cancelled, so a
/// graceful server shutdown never waits on them, and with `UNAUTHENTICATED`
/// when their token expires or `authority` revokes it.
#[derive(Debug, Clone)]
pub struct RateServiceImpl {
    pub(crate) symbols: SymbolTable,
    pub(crate) latest: LatestRates,
    pub(crate) hub: RateHub,
    pub(crate) publisher: RatePublisher,
    pub(crate) limits: StreamLimits,
    pub(crate) shutdown: CancellationToken,
    pub(crate) authority: TokenAuthority,
}

/// A `StreamRates` stream: responses encoded once, shared by every stream.
type RateStream = Pin<Box<dyn Stream<Item = Result<StreamRatesFrame, Status>> + Send>>;

fn gap_event(symbol: &str, gap: stream::Gap) -> StreamRatesFrame {
    let (first, last) = (gap.first_missing, gap.last_missing);
    let range = if first == last {
        format!("sequence {first}")
    } else {
        format!("sequences {first}..={last}")
    };
    let not_delivered = |why: &str| format!("{symbol}: {range} not delivered: {why}");
    let (reason, message) = match gap.cause {
        GapCause::NotHeld => (
            GapReason::ReplayUnavailable,
            not_delivered("the server no longer holds them for replay"),
        ),
        GapCause::SlowConsumer => (
            GapReason::SlowConsumer,
            not_delivered("the client read too slowly; skipped to the latest rate"),
        ),
        GapCause::Upstream => (
            GapReason::Transport,
            not_delivered("the transport lost them"),
        ),
        GapCause::ResumeAhead => (
            GapReason::ResumeAhead,
            format!(
                "{symbol}: resume point {last} is ahead of the stream (latest sequence {}); restarting from the latest rate",
                first - 1
            ),
        ),
    };
    StreamRatesFrame::event(&StreamRatesResponse {
        event: Some(stream_rates_response::Event::Gap(Gap {
            symbol: symbol.to_owned(),
            first_missing: first,
            last_missing: last,
            reason: reason as i32,
            message,
        })),
    })
}

/// The events of one delivery: the gap before the tick, if any, then the tick.
fn events(delivery: &Delivery<Tick>) -> impl Iterator<Item = StreamRatesFrame> + use<> {
    let gap = delivery
        .gap
        .map(|gap| gap_event(delivery.tick.symbol(), gap));
    gap.into_iter().chain([delivery.tick.frame().clone()])
}

impl RateServiceImpl {
    /// The symbols a `StreamRates` request streams, sorted: the requested
    /// ones, or every one the caller may see.
    fn streamed_symbols(
        &self,
        caller: &Caller,
        request: &StreamRatesRequest,
    ) -> Result<Vec<String>, Status> {
        let mut symbols: Vec<String> = if request.symbols.is_empty() {
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
            request.symbols.clone()
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
                    "resume_after names {}, which is not among the streamed symbols",
                    quoted(symbol)
                )));
            }
        }
        Ok(symbols)
    }

    /// Subscribes to each symbol's ring and reads the backlogs.
    fn open_rings(
        &self,
        symbols: &[String],
        request: &StreamRatesRequest,
    ) -> Result<OpenStream, Status> {
        // Subscribe before reading the backlog (inside `hub.subscribe`), so
        // nothing published in between is lost; the cursor drops duplicates.
        let mut backlog = Vec::new();
        let mut cursor = StreamCursor::new();
        let mut lives = Vec::with_capacity(symbols.len());
        for symbol in symbols {
            let resume = request
                .resume_after
                .get(symbol)
                .copied()
                .or(request.resume_after_sequence);
            let sub = self.hub.subscribe(symbol, resume)?;
            if let Some(after) = resume {
                cursor.resume(symbol, after);
            }
            for tick in sub.backlog {
                if let Some(delivery) = cursor.advance(tick, GapCause::NotHeld) {
                    backlog.extend(events(&delivery));
                }
            }
            lives.push(sub.live);
        }
        Ok(OpenStream {
            backlog,
            lives,
            cursor,
        })
    }
}

/// A `StreamRates` stream as it starts.
struct OpenStream {
    /// The backlogs' events, to send first.
    backlog: Vec<StreamRatesFrame>,
    /// Each symbol's live ticks.
    lives: Vec<LiveTicks<Tick>>,
    /// Where the stream stands after the backlog.
    cursor: StreamCursor,
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
        let symbols = self.streamed_symbols(&caller, &request)?;
        let OpenStream {
            backlog,
            lives,
            mut cursor,
        } = self.open_rings(&symbols, &request)?;
        let mut lags = LagCounter::new(self.limits.into());
        // The stream ends when its credential does (expiry or revocation);
        // clients reconnect with a fresh token (and resume_after, so nothing
        // is lost). Built once, not per tick: each would register a timer and
        // a waiter every time round the loop.
        let mut end = CredentialEnd::or_shutdown(
            self.authority.credential_end(&caller),
            self.shutdown.clone(),
            "server is shutting down; reconnect with resume_after to continue",
            " and resume_after to continue",
        );
        let stream = async_stream::try_stream! {
            for event in backlog {
                yield event;
            }
            let mut live = select_all(lives);
            while let Some(item) = unless_ended(&mut end, live.next()).await? {
                match cursor.live(item, &mut lags) {
                    Ok(Some(delivery)) => {
                        for event in events(&delivery) {
                            yield event;
                        }
                    }
                    Ok(None) => {}
                    Err(slow) => {
                        Err(Status::resource_exhausted(format!(
                            "{slow}; reconnect with resume_after to continue"
                        )))?;
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish_rate(
        &self,
        request: Request<PublishRateRequest>,
    ) -> Result<Response<Rate>, Status> {
        let caller = Caller::with_scope(&request, &Scope::RatesPublish)?.clone();
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
