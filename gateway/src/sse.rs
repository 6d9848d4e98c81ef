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
use futures_util::{StreamExt, stream::select_all};
use serde::Deserialize;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::{
    AppState,
    error::ApiError,
    error::ErrorBody,
    json::ServerMessage,
    lag::LagCounter,
    metrics::{ConnectionGuard, KindLabels},
    session::{Session, bearer_token, credential},
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
            "Last-Event-ID {value:?} is not a sequence or SYMBOL:SEQ list"
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

fn event_id(cursor: &BTreeMap<String, u64>, single: bool) -> String {
    if single {
        cursor
            .values()
            .next()
            .map(u64::to_string)
            .unwrap_or_default()
    } else {
        cursor
            .iter()
            .map(|(s, q)| format!("{s}:{q}"))
            .collect::<Vec<_>>()
            .join(",")
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

    let mut symbols: Vec<String> = match query.symbols.as_deref() {
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
            return Err(ApiError::bad_request(format!("unknown symbol {symbol:?}")));
        }
        if !session.allowed.contains(symbol) {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "permission_denied",
                format!("this token may not read rates of {symbol}"),
            ));
        }
    }
    let resume = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(value) => parse_last_event_id(value, &symbols)?,
        None => BTreeMap::new(),
    };

    let single = symbols.len() == 1;
    let mut cursor: BTreeMap<String, u64> = BTreeMap::new();
    let mut backlog: Vec<Arc<RateTick>> = Vec::new();
    let mut lives = Vec::new();
    for symbol in &symbols {
        let after = resume.get(symbol).copied();
        if let Some(after) = after {
            cursor.insert(symbol.clone(), after);
        }
        let Some(sub) = state.ticker.subscribe(symbol, after) else {
            continue;
        };
        backlog.extend(sub.backlog);
        lives.push(BroadcastStream::new(sub.live).map({
            let symbol = symbol.clone();
            move |item| (symbol.clone(), item)
        }));
    }

    let metrics = state.metrics.clone();
    let ticker = state.ticker.clone();
    let stop = state.stop.clone();
    // The stream ends with an `error` event when the token expires or is
    // revoked.
    let expiry = session.deadline();
    let revoked = session.revoked(&state.revocations);
    let ended = async move {
        tokio::select! {
            () = async {
                match expiry {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            } => ServerMessage::error("token_expired", "token expired: reconnect with a fresh token"),
            () = revoked => ServerMessage::error("token_revoked", "token revoked: reconnect with another token"),
        }
    };
    let stream = async_stream_events(
        backlog,
        select_all(lives),
        cursor,
        single,
        metrics,
        ticker,
        stop,
        ended,
        LagCounter::new(state.config.lag_limit),
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn rate_event(tick: &RateTick, cursor: &mut BTreeMap<String, u64>, single: bool) -> Vec<Event> {
    let mut events = Vec::with_capacity(2);
    let symbol = &tick.rate.symbol;
    let seq = tick.rate.sequence;
    if let Some(&last) = cursor.get(symbol) {
        if seq <= last {
            return events;
        }
        if seq > last + 1 {
            let gap = ServerMessage::Gap {
                symbol: symbol.clone(),
                first_missing: last + 1,
                last_missing: seq - 1,
                reason: "not_held".into(),
            };
            events.push(Event::default().event("gap").data(gap.to_text()));
        }
    }
    cursor.insert(symbol.clone(), seq);
    events.push(
        Event::default()
            .event("rate")
            .id(event_id(cursor, single))
            .data(tick.json.as_str()),
    );
    events
}

#[allow(clippy::too_many_arguments)]
fn async_stream_events(
    backlog: Vec<Arc<RateTick>>,
    mut live: impl futures_util::Stream<
        Item = (String, Result<Arc<RateTick>, BroadcastStreamRecvError>),
    > + Unpin
    + Send
    + 'static,
    mut cursor: BTreeMap<String, u64>,
    single: bool,
    metrics: crate::metrics::Metrics,
    ticker: crate::ticker::Ticker,
    stop: tokio_util::sync::CancellationToken,
    ended: impl Future<Output = ServerMessage> + Send + 'static,
    mut lags: LagCounter,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let guard = ConnectionGuard::new(&metrics, "sse");
    let deliveries = metrics
        .deliveries
        .get_or_create(&KindLabels { kind: "sse" })
        .clone();
    let conflations = metrics
        .conflations
        .get_or_create(&KindLabels { kind: "sse" })
        .clone();
    let slow_disconnects = metrics
        .slow_consumer_disconnects
        .get_or_create(&KindLabels { kind: "sse" })
        .clone();
    async_stream::stream! {
        let _guard = guard;
        tokio::pin!(ended);
        for tick in &backlog {
            for event in rate_event(tick, &mut cursor, single) {
                deliveries.inc();
                yield Ok(event);
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
            let Some((symbol, item)) = next else { break };
            let tick = match item {
                Ok(tick) => tick,
                Err(BroadcastStreamRecvError::Lagged(_)) => {
                    conflations.inc();
                    if let Some(reason) = lags.lagged() {
                        slow_disconnects.inc();
                        let error = ServerMessage::error("slow_consumer", reason);
                        yield Ok(Event::default().event("error").data(error.to_text()));
                        break;
                    }
                    match ticker.latest(&symbol) {
                        Some(tick) => tick,
                        None => continue,
                    }
                }
            };
            for event in rate_event(&tick, &mut cursor, single) {
                deliveries.inc();
                yield Ok(event);
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
        let cursor = BTreeMap::from([("EUR_USD".to_owned(), 7), ("USD_JPY".to_owned(), 42)]);
        assert_eq!(event_id(&cursor, false), "EUR_USD:7,USD_JPY:42");
    }
}
