//! `GET /v1/rates/stream?symbols=...`: Server-Sent Events.
//!
//! Each event is `event: rate`, `data: <the shared JSON>`, and an `id:` that
//! resumes the stream: the sequence when one symbol is streamed, or
//! `SYMBOL:SEQ,SYMBOL:SEQ` (every symbol's last sequence) for several. A
//! reconnecting browser sends it back as `Last-Event-ID` and receives what
//! the gateway still holds after it; anything older is announced with a
//! `gap` event.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{Query, State},
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::{Stream, StreamExt, stream::select_all};
use fxcast_services::{
    quote::quoted,
    stream::{Delivery, GapCause, LagCounter, Live, StreamCursor},
};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    AppState,
    error::ApiError,
    error::ErrorBody,
    json::ServerMessage,
    metrics::ConnectionMetrics,
    session::{Session, bearer_token, credential, slow_consumer_reason},
    ticker::RateTick,
};

#[derive(Debug, Deserialize)]
pub(crate) struct SseQuery {
    symbols: Option<String>,
    token: Option<String>,
}

fn parse_last_event_id(value: &str, symbols: &[String]) -> Result<BTreeMap<String, u64>, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "Last-Event-ID {} is not a sequence or SYMBOL:SEQ list",
            quoted(value)
        ))
    };
    if let Ok(seq) = value.trim().parse::<u64>() {
        if symbols.len() != 1 {
            return Err(ApiError::bad_request(
                "a bare sequence in Last-Event-ID only resumes a single-symbol stream",
            ));
        }
        return Ok(BTreeMap::from([(symbols[0].clone(), seq)]));
    }
    value
        .split(',')
        .map(|part| {
            let (symbol, seq) = part.trim().split_once(':').ok_or_else(bad)?;
            Ok((symbol.to_owned(), seq.parse::<u64>().map_err(|_| bad())?))
        })
        .collect()
}

fn event_id(cursor: &StreamCursor, single: bool) -> String {
    if single {
        cursor
            .positions()
            .next()
            .map(|(_, seq)| seq.to_string())
            .unwrap_or_default()
    } else {
        cursor
            .positions()
            .map(|(s, q)| format!("{s}:{q}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The symbols a request streams, sorted: `symbols=` or every one the
/// token may read.
fn streamed_symbols(
    state: &AppState,
    session: &Session,
    query: Option<&str>,
) -> Result<Vec<String>, ApiError> {
    let mut symbols: Vec<String> = match query {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => session.allowed.iter().cloned().collect(),
    };
    symbols.sort();
    symbols.dedup();
    if symbols.is_empty() {
        return Err(ApiError::bad_request(
            "symbols must name at least one symbol",
        ));
    }
    for symbol in &symbols {
        if !state.ticker.knows(symbol) {
            return Err(ApiError::bad_request(format!(
                "unknown symbol {}",
                quoted(symbol)
            )));
        }
        if !session.allowed.contains(symbol) {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "permission_denied",
                format!("this token may not read rates of {symbol}"),
            ));
        }
    }
    Ok(symbols)
}

/// Completes, with the `error` event to send, when the session's token
/// expires or is revoked.
fn session_end(
    state: &AppState,
    session: &Session,
) -> impl Future<Output = ServerMessage> + Send + 'static {
    let expiry = session.deadline();
    let revoked = session.revoked(&state.revocations);
    async move {
        tokio::select! {
            () = async {
                match expiry {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => ServerMessage::error("token_expired", "token expired: reconnect with a fresh token"),
            () = revoked => ServerMessage::error("token_revoked", "token revoked: reconnect with another token"),
        }
    }
}

/// The SSE stream of rates.
#[utoipa::path(get, path = "/v1/rates/stream", tag = "streams",
    description = "Server-sent events: `event: rate` with `RateJson` data and `id:` the sequence (or \
        `SYMBOL:SEQ,...` for several symbols); `event: gap` when sequences were skipped; `event: error` \
        (`ServerMessage`) before the stream ends (token expired or revoked, slow consumer). Reconnecting \
        with `Last-Event-ID` resumes after that id.",
    params(
        ("symbols" = Option<String>, Query, description = "Comma-separated symbols (default: every symbol the token may read)"),
        ("token" = Option<String>, Query, description = "The token, for EventSource (which cannot set headers)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id")),
    responses((status = 200, content_type = "text/event-stream", description = "The event stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<SseQuery>,
) -> Result<Response, ApiError> {
    let bearer = credential(&headers, query.token.as_deref())?;
    let raw = bearer_token(&headers, query.token.as_deref());
    let session = Session::open(&state.upstream, bearer, raw.as_deref()).await?;
    let symbols = streamed_symbols(&state, &session, query.symbols.as_deref())?;
    let resume = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(value) => parse_last_event_id(value, &symbols)?,
        None => BTreeMap::new(),
    };

    let mut reader = Reader {
        cursor: StreamCursor::new(),
        lags: LagCounter::new(state.config.lag_limit),
        single: symbols.len() == 1,
        metrics: ConnectionMetrics::new(&state.metrics, "sse"),
    };
    let mut backlog: Vec<Arc<RateTick>> = Vec::new();
    let mut lives = Vec::new();
    for symbol in &symbols {
        let after = resume.get(symbol).copied();
        if let Some(after) = after {
            reader.cursor.resume(symbol, after);
        }
        let Some(sub) = state.ticker.subscribe(symbol, after) else {
            continue;
        };
        backlog.extend(sub.backlog);
        lives.push(sub.live);
    }
    let ended = session_end(&state, &session);
    let stream = events(
        reader,
        backlog,
        select_all(lives),
        state.stop.clone(),
        ended,
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// One SSE stream's position, lag count and metrics.
struct Reader {
    cursor: StreamCursor,
    lags: LagCounter,
    /// One symbol: the event id is its bare sequence.
    single: bool,
    metrics: ConnectionMetrics,
}

impl Reader {
    /// The events of one delivery: `gap` if sequences were skipped, then
    /// `rate` with the shared JSON and the id to resume from.
    fn events(&self, delivery: Delivery<RateTick>) -> impl Iterator<Item = Event> + use<> {
        let tick = delivery.tick;
        let gap = delivery.gap.map(|gap| {
            let gap = ServerMessage::Gap {
                symbol: tick.rate.symbol.clone(),
                first_missing: gap.first_missing,
                last_missing: gap.last_missing,
                reason: match gap.cause {
                    GapCause::ResumeAhead => "resume_ahead",
                    _ => "not_held",
                }
                .into(),
            };
            Event::default().event("gap").data(gap.to_text())
        });
        let rate = Event::default()
            .event("rate")
            .id(event_id(&self.cursor, self.single))
            .data(tick.json.as_str());
        self.metrics.deliveries.inc();
        gap.into_iter().chain([rate])
    }

    /// What one live item sends; `Err` with the `error` event for a stream
    /// that keeps falling behind.
    fn read(&mut self, item: Live<RateTick>) -> Result<Option<Delivery<RateTick>>, Event> {
        if matches!(item, Live::Lagged(_)) {
            self.metrics.conflations.inc();
        }
        self.cursor.live(item, &mut self.lags).map_err(|slow| {
            self.metrics.slow_consumer_disconnects.inc();
            let error = ServerMessage::error("slow_consumer", slow_consumer_reason(&slow));
            Event::default().event("error").data(error.to_text())
        })
    }
}

/// The event stream: the backlog, then live ticks until the server stops,
/// the session ends or the client falls behind for good.
fn events(
    mut reader: Reader,
    backlog: Vec<Arc<RateTick>>,
    mut live: impl Stream<Item = Live<RateTick>> + Unpin + Send + 'static,
    stop: CancellationToken,
    ended: impl Future<Output = ServerMessage> + Send + 'static,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    async_stream::stream! {
        tokio::pin!(ended);
        for tick in backlog {
            if let Some(delivery) = reader.cursor.advance(tick, GapCause::NotHeld) {
                for event in reader.events(delivery) {
                    yield Ok(event);
                }
            }
        }
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => break,
                error = &mut ended => {
                    yield Ok(Event::default().event("error").data(error.to_text()));
                    break;
                }
                next = live.next() => next,
            };
            let Some(item) = next else { break };
            match reader.read(item) {
                Ok(Some(delivery)) => {
                    for event in reader.events(delivery) {
                        yield Ok(event);
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    yield Ok(error);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_forms() {
        let one = vec!["USD_JPY".to_owned()];
        assert_eq!(
            parse_last_event_id("42", &one).unwrap(),
            BTreeMap::from([("USD_JPY".into(), 42)])
        );
        let two = vec!["EUR_USD".to_owned(), "USD_JPY".to_owned()];
        assert_eq!(
            parse_last_event_id("EUR_USD:7,USD_JPY:42", &two).unwrap(),
            BTreeMap::from([("EUR_USD".into(), 7), ("USD_JPY".into(), 42)])
        );
        assert!(parse_last_event_id("42", &two).is_err());
        assert!(parse_last_event_id("USD_JPY:x", &two).is_err());
        let mut cursor = StreamCursor::new();
        cursor.resume("USD_JPY", 42);
        cursor.resume("EUR_USD", 7);
        assert_eq!(event_id(&cursor, false), "EUR_USD:7,USD_JPY:42");
    }
}
