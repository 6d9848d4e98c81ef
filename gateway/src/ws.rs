//! `GET /v1/stream`: the browser WebSocket.
//!
//! Client messages: `{"type":"subscribe","symbols":[...]}`, `unsubscribe`,
//! `ping`. Server messages: `rate` (shared pre-serialised bytes), `gap`,
//! `subscribed`/`unsubscribed`, `order`, `heartbeat`, `error`.
//!
//! Slow consumers: rates come from per-symbol broadcast rings shared by every
//! connection; a connection that falls behind skips to the latest rate of the
//! symbol and is sent a `gap` first (conflation). One that cannot take a
//! frame within the send timeout is closed with code 1013 and a reason; the
//! rest of the frame it was sent and the close get the send timeout again,
//! so a client that resumes reading in that time reads whole frames, then
//! the close. Memory per connection stays bounded: the rings are shared, and
//! the socket's own write buffer is capped.
//!
//! Closing (RFC 6455 section 7; docs/WEBSOCKET.md lists the Autobahn cases
//! the tests drive): a client's close is echoed (tungstenite queues the
//! echo, the connection flushes it). A protocol error fails the connection
//! with the close frame alone: 1002, or 1007 for invalid UTF-8 (module
//! `close` picks the code). The server's own closes (1001, 1008, 1009 for a
//! message over the limit, 1013) follow an `error` message saying why, and
//! wait briefly for the client's close.

mod close;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    extract::{
        Query, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, close_code},
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use futures_util::{
    FutureExt, SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use fxcast_services::stream::{Delivery, GapCause, LagCounter, Live, LiveTicks, StreamCursor};

/// Most ticks written to one connection before a flush.
const MAX_BATCH: usize = 32;
/// A batch stops once it holds this many bytes, below the socket's write
/// buffer (`WRITE_BUFFER`) by at least a frame: tungstenite's buffer grows
/// by doubling and never shrinks, so a batch that crossed 4 KiB would keep
/// 8 KiB per connection from then on (most under sustained load, when
/// every batch is full).
const BATCH_BYTES: usize = 3 * 1024;
/// Bytes tungstenite buffers before it writes to the socket.
const WRITE_BUFFER: usize = 4 * 1024;
/// Bytes read from the socket at a time: clients send little (commands,
/// pongs), and the buffer is held (zeroed, so resident) per connection.
/// Larger messages are read in several steps, up to the message limits.
const READ_BUFFER: usize = 1024;
use serde::Deserialize;
use tokio_stream::StreamMap;

use self::close::Inbound;
use crate::{
    AppState,
    error::ApiError,
    error::ErrorBody,
    json::{ClientMessage, ServerMessage},
    metrics::ConnectionMetrics,
    orders::{OrderJson, OrderMessage},
    session::{Session, bearer_token, credential, slow_consumer_reason},
    ticker::RateTick,
};

/// Limits of one WebSocket connection.
#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    /// Most symbols one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Largest inbound message, in bytes.
    pub max_message_size: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Closed after this long without any inbound frame (pongs count).
    pub idle_timeout: Duration,
    /// A connection that cannot take a frame within this time is behind for
    /// good and is closed (code 1013).
    pub send_timeout: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        Self {
            max_subscriptions: 64,
            max_message_size: 4096,
            heartbeat: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    token: Option<String>,
}

/// The WebSocket stream (documented here; the handler is below).
#[utoipa::path(get, path = "/v1/stream", tag = "streams",
    description = "Upgrades to a WebSocket. The client sends `ClientMessage`s (subscribe, unsubscribe, ping); \
        the server answers with `ServerMessage`s and sends each rate as `RateJson` with `\"type\":\"rate\"` \
        (and, after `\"orders\":true` in a subscribe, the caller's order events as `OrderJson` with \
        `\"type\":\"order\"`). Messages over 4096 bytes close the connection with 1009; a slow consumer is \
        conflated, then closed with 1013; an expired or revoked token closes it with 1008; a protocol \
        error with 1002 (1007 for text that is not UTF-8). A client's close is echoed.",
    params(("token" = Option<String>, Query, description = "The token, for clients that cannot set headers")),
    responses((status = 101, description = "Switching Protocols: the WebSocket is open"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    // Authenticate before upgrading, so a bad token is a plain 401/403.
    let bearer = credential(&headers, query.token.as_deref())?;
    let raw = bearer_token(&headers, query.token.as_deref());
    let session = Session::open(&state.upstream, bearer, raw.as_deref()).await?;
    let limits = state.config.ws;
    // Messages up to four times the limit are read whole and refused with a
    // close frame (1009) the client can read; only beyond that does the
    // WebSocket layer give up mid-message, which may reset the connection.
    let hard_limit = limits.max_message_size.saturating_mul(4);
    Ok(ws
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        // Small socket buffers keep per-connection memory bounded; the
        // broadcast rings hold the backlog once for everyone.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(64 * 1024)
        .on_upgrade(move |socket| async move { Connection::new(state, session).run(socket).await })
        .into_response())
}

enum Exit {
    /// The client went away, or its socket failed: nothing can be sent.
    Gone,
    /// The client sent a close frame; tungstenite has queued the echo.
    ClientClosed,
    /// A close of ours: an `error` message saying why, then the close frame.
    Close(u16, String),
    /// The client broke the protocol: the close frame alone, as no data
    /// frame may follow the failure (RFC 6455 section 7.1.7).
    Fail(u16, String),
}

struct Connection {
    state: AppState,
    session: Session,
    // Keyed by `Arc<str>`: the map hands out a clone of the key with every
    // tick, and that must not allocate.
    subscriptions: StreamMap<Arc<str>, LiveTicks<RateTick>>,
    cursor: StreamCursor,
    batching: bool,
    /// Bytes fed in the current batch (counted where `send`, which takes
    /// `&self`, feeds them; only this connection's task touches it).
    batched: AtomicUsize,
    lags: LagCounter,
    metrics: ConnectionMetrics,
}

type Sink = SplitSink<WebSocket, Message>;

impl Connection {
    fn new(state: AppState, session: Session) -> Self {
        let metrics = ConnectionMetrics::new(&state.metrics, "ws");
        let lags = LagCounter::new(state.config.lag_limit);
        Self {
            state,
            session,
            subscriptions: StreamMap::new(),
            cursor: StreamCursor::new(),
            batching: false,
            batched: AtomicUsize::new(0),
            lags,
            metrics,
        }
    }

    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut inbound) = socket.split();
        let exit = self.serve(&mut sink, &mut inbound).await;
        self.state
            .metrics
            .subscriptions
            .dec_by(self.subscriptions.len() as i64);
        // What is still owed to the client gets the patience any frame
        // gets: a client stalled past the send timeout may yet read it.
        let patience = self.state.config.ws.send_timeout;
        // `Err` is an exit from inside a send (a slow consumer), `Ok` one
        // from the loop itself; both close the same way.
        match exit.unwrap_or_else(|exit| exit) {
            Exit::Gone => {}
            // Flushing writes the echo; the stream then ends.
            Exit::ClientClosed => drop(tokio::time::timeout(patience, sink.flush()).await),
            Exit::Close(code, reason) => {
                let error = ServerMessage::error(
                    match code {
                        close_code::AGAIN => "slow_consumer",
                        close_code::SIZE => "message_too_big",
                        _ => "closing",
                    },
                    &reason,
                );
                close(&mut sink, &mut inbound, patience, Some(error), code, reason).await;
            }
            Exit::Fail(code, reason) => {
                close(&mut sink, &mut inbound, patience, None, code, reason).await;
            }
        }
    }

    /// Writes every tick that is already waiting (at most `MAX_BATCH`),
    /// then flushes once: one syscall for a burst instead of one per frame.
    /// Untimed: the caller bounds the whole batch with the send timeout.
    async fn write_batch(&mut self, sink: &mut Sink, item: Live<RateTick>) -> Result<(), Exit> {
        self.batching = true;
        self.batched.store(0, Ordering::Relaxed);
        let mut next = Some(item);
        let mut written = 0;
        while let Some(item) = next.take() {
            self.read(sink, item).await?;
            written += 1;
            if written < MAX_BATCH && self.batched.load(Ordering::Relaxed) < BATCH_BYTES {
                next = self
                    .subscriptions
                    .next()
                    .now_or_never()
                    .flatten()
                    .map(|(_, item)| item);
            }
        }
        self.batching = false;
        sink.flush().await.map_err(|_| Exit::Gone)
    }

    /// The exit of a connection that could not take its frames in time.
    fn too_slow(&self) -> Exit {
        self.metrics.slow_consumer_disconnects.inc();
        Exit::Close(
            close_code::AGAIN,
            "slow consumer: could not take a frame within the send timeout".into(),
        )
    }

    async fn send(&self, sink: &mut Sink, text: Utf8Bytes) -> Result<(), Exit> {
        if self.batching {
            // Inside `write_batch`, which is timed as a whole.
            self.batched.fetch_add(text.len(), Ordering::Relaxed);
            return sink.feed(Message::Text(text)).await.map_err(|_| Exit::Gone);
        }
        match tokio::time::timeout(
            self.state.config.ws.send_timeout,
            sink.send(Message::Text(text)),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Exit::Gone),
            Err(_) => Err(self.too_slow()),
        }
    }

    async fn send_message(&self, sink: &mut Sink, message: &ServerMessage) -> Result<(), Exit> {
        self.send(sink, message.to_text().into()).await
    }

    /// Sends what one live item delivers (see [`StreamCursor::live`]), or
    /// closes a connection that keeps falling behind.
    async fn read(&mut self, sink: &mut Sink, item: Live<RateTick>) -> Result<(), Exit> {
        if matches!(item, Live::Lagged(_)) {
            self.metrics.conflations.inc();
        }
        match self.cursor.live(item, &mut self.lags) {
            Ok(Some(delivery)) => self.deliver(sink, delivery).await,
            Ok(None) => Ok(()),
            Err(slow) => {
                self.metrics.slow_consumer_disconnects.inc();
                Err(Exit::Close(close_code::AGAIN, slow_consumer_reason(&slow)))
            }
        }
    }

    /// Sends a delivery: its gap message, if any, then the shared rate bytes.
    async fn deliver(&self, sink: &mut Sink, delivery: Delivery<RateTick>) -> Result<(), Exit> {
        let tick = delivery.tick;
        if let Some(gap) = delivery.gap {
            let gap = ServerMessage::Gap {
                symbol: tick.rate.symbol.clone(),
                first_missing: gap.first_missing,
                last_missing: gap.last_missing,
                reason: match gap.cause {
                    GapCause::SlowConsumer => "slow_consumer",
                    GapCause::NotHeld | GapCause::Upstream => "upstream",
                    GapCause::ResumeAhead => "resume_ahead",
                }
                .to_owned(),
            };
            self.send_message(sink, &gap).await?;
        }
        self.send(sink, tick.json.clone()).await?;
        self.metrics.deliveries.inc();
        Ok(())
    }

    async fn serve(
        &mut self,
        sink: &mut Sink,
        inbound: &mut SplitStream<WebSocket>,
    ) -> Result<Exit, Exit> {
        let limits = self.state.config.ws;
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + limits.heartbeat,
            limits.heartbeat,
        );
        let idle = tokio::time::sleep(limits.idle_timeout);
        tokio::pin!(idle);
        let expiry = self.session.deadline();
        let revoked = self.session.revoked(&self.state.revocations);
        tokio::pin!(revoked);
        let stop = self.state.stop.clone();
        let mut order_events: Option<tokio::sync::mpsc::Receiver<OrderJson>> = None;
        // Built once, not per wake-up: each would register a timer or a
        // waiter again for every tick.
        let cancelled = stop.cancelled();
        let expired = sleep_until_opt(expiry);
        tokio::pin!(cancelled, expired);
        loop {
            tokio::select! {
                // Not biased: with ticks arriving without pause, a fixed
                // order would starve the client's frames, expiry and
                // revocation.
                () = &mut cancelled => return Ok(Exit::Close(close_code::AWAY, "server is shutting down".into())),
                Some((_, item)) = self.subscriptions.next(), if !self.subscriptions.is_empty() => {
                    // One timer for the whole batch: a frame may wait for
                    // the socket mid-batch once the write buffer fills.
                    let timeout = self.state.config.ws.send_timeout;
                    match tokio::time::timeout(timeout, self.write_batch(sink, item)).await {
                        Ok(result) => result?,
                        Err(_) => return Err(self.too_slow()),
                    }
                }
                () = &mut expired => {
                    return Ok(Exit::Close(close_code::POLICY, "token expired: reconnect with a fresh token".into()));
                }
                () = &mut revoked => {
                    return Ok(Exit::Close(close_code::POLICY, "token revoked: reconnect with another token".into()));
                }
                () = &mut idle => return Ok(Exit::Close(close_code::AWAY, "idle timeout: no frames from the client".into())),
                _ = heartbeat.tick() => {
                    // A protocol ping too: browsers answer it with a pong by
                    // themselves, which keeps a quiet but healthy client from
                    // tripping the idle timeout.
                    self.send_message(sink, &ServerMessage::heartbeat()).await?;
                    send_ping(sink).await?;
                }
                Some(order) = recv_opt(&mut order_events) => {
                    let text = serde_json::to_string(&OrderMessage { kind: "order", order: &order }).expect("orders serialise");
                    self.send(sink, text.into()).await?;
                }
                frame = inbound.next() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + limits.idle_timeout);
                    if let Some(exit) = self.on_frame(sink, frame, &mut order_events).await? {
                        return Ok(exit);
                    }
                }
            }
        }
    }

    /// Handles one inbound frame (`None`: the client went away); `Some`
    /// exit when the connection ends with it.
    async fn on_frame(
        &mut self,
        sink: &mut Sink,
        frame: Option<Result<Message, axum::Error>>,
        order_events: &mut Option<tokio::sync::mpsc::Receiver<OrderJson>>,
    ) -> Result<Option<Exit>, Exit> {
        let max = self.state.config.ws.max_message_size;
        let too_big = || {
            Exit::Close(
                close_code::SIZE,
                format!("message too big: at most {max} bytes"),
            )
        };
        match frame {
            None => return Ok(Some(Exit::Gone)),
            Some(Err(err)) => {
                return Ok(Some(match Inbound::of(&err) {
                    Inbound::Gone => Exit::Gone,
                    Inbound::TooBig => too_big(),
                    Inbound::Violation(code, reason) => Exit::Fail(code, reason),
                }));
            }
            Some(Ok(Message::Close(_))) => return Ok(Some(Exit::ClientClosed)),
            Some(Ok(Message::Text(text))) if text.len() > max => return Ok(Some(too_big())),
            Some(Ok(Message::Text(text))) => {
                if self.on_client_message(sink, text.as_str()).await? && order_events.is_none() {
                    *order_events = Some(self.order_events());
                }
            }
            Some(Ok(Message::Binary(_))) => {
                let error = ServerMessage::error(
                    "invalid_message",
                    "binary frames are not supported; send JSON text",
                );
                self.send_message(sink, &error).await?;
            }
            // Pings are answered by the WebSocket layer itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
        }
        Ok(None)
    }

    /// The caller's own order events, from the upstream, for as long as the
    /// connection lives. Tokens without an orders scope simply get none.
    fn order_events(&self) -> tokio::sync::mpsc::Receiver<OrderJson> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut client = crate::orders::client(&self.state, self.session.bearer.clone());
        tokio::spawn(async move {
            let request = fxcast_proto::v1::StreamOrderEventsRequest {
                symbols: Vec::new(),
            };
            let mut stream = match client.stream_order_events(request).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    tracing::debug!(code = ?status.code(), "no order events for this connection");
                    return;
                }
            };
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    message = stream.message() => match message {
                        Ok(Some(event)) => {
                            if let Some(order) = event.order
                                && tx.send(OrderJson::from(order)).await.is_err() {
                                    return;
                                }
                        }
                        Ok(None) | Err(_) => return,
                    },
                }
            }
        });
        rx
    }

    /// Handles one client message; true when it asks for order events.
    async fn on_client_message(&mut self, sink: &mut Sink, text: &str) -> Result<bool, Exit> {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(message) => message,
            Err(err) => {
                let error = ServerMessage::error(
                    "invalid_message",
                    format!(
                        "{err}; expected {{\"type\":\"subscribe\"|\"unsubscribe\",\"symbols\":[...]}} or {{\"type\":\"ping\"}}"
                    ),
                );
                return self.send_message(sink, &error).await.map(|()| false);
            }
        };
        match message {
            ClientMessage::Ping => self
                .send_message(sink, &ServerMessage::heartbeat())
                .await
                .map(|()| false),
            ClientMessage::Subscribe {
                symbols,
                resume_after,
                orders,
            } => {
                if symbols.is_empty() && orders {
                    let now = self.subscribed();
                    self.send_message(sink, &ServerMessage::Subscribed { symbols: now })
                        .await?;
                } else {
                    self.subscribe(sink, symbols, resume_after).await?;
                }
                Ok(orders)
            }
            ClientMessage::Unsubscribe { symbols } => {
                for symbol in &symbols {
                    if self.subscriptions.remove(symbol.as_str()).is_some() {
                        self.state.metrics.subscriptions.dec();
                        self.cursor.forget(symbol);
                    }
                }
                let now = self.subscribed();
                self.send_message(sink, &ServerMessage::Unsubscribed { symbols: now })
                    .await
                    .map(|()| false)
            }
        }
    }

    fn subscribed(&self) -> Vec<String> {
        let mut list: Vec<String> = self.subscriptions.keys().map(|s| s.to_string()).collect();
        list.sort();
        list
    }

    async fn subscribe(
        &mut self,
        sink: &mut Sink,
        symbols: Vec<String>,
        resume_after: std::collections::BTreeMap<String, u64>,
    ) -> Result<(), Exit> {
        let requested: BTreeSet<String> = symbols.into_iter().collect();
        if requested.is_empty() {
            return self
                .send_message(
                    sink,
                    &ServerMessage::error("invalid_message", "symbols must not be empty"),
                )
                .await;
        }
        for symbol in &requested {
            if !self.state.ticker.knows(symbol) {
                let known: Vec<&str> = self
                    .state
                    .ticker
                    .symbols()
                    .iter()
                    .map(|s| s.symbol.as_str())
                    .collect();
                let error = ServerMessage::error(
                    "unknown_symbol",
                    format!(
                        "unknown symbol {} (known: {})",
                        fxcast_services::quote::quoted(symbol),
                        known.join(", ")
                    ),
                );
                return self.send_message(sink, &error).await;
            }
            if !self.session.allowed.contains(symbol) {
                let error = ServerMessage::error(
                    "permission_denied",
                    format!("this token may not read rates of {symbol}"),
                );
                return self.send_message(sink, &error).await;
            }
        }
        let new: Vec<&String> = requested
            .iter()
            .filter(|s| !self.subscriptions.contains_key(s.as_str()))
            .collect();
        let limit = self.state.config.ws.max_subscriptions;
        if self.subscriptions.len() + new.len() > limit {
            let error = ServerMessage::error(
                "too_many_subscriptions",
                format!("at most {limit} symbols per connection"),
            );
            return self.send_message(sink, &error).await;
        }
        let mut backlog = Vec::new();
        for symbol in new {
            let resume = resume_after.get(symbol).copied();
            let Some(sub) = self.state.ticker.subscribe(symbol, resume) else {
                continue;
            };
            if let Some(after) = resume {
                self.cursor.resume(symbol, after);
            }
            backlog.extend(sub.backlog);
            self.subscriptions
                .insert(Arc::from(symbol.as_str()), sub.live);
            self.state.metrics.subscriptions.inc();
        }
        let now = self.subscribed();
        self.send_message(sink, &ServerMessage::Subscribed { symbols: now })
            .await?;
        for tick in backlog {
            if let Some(delivery) = self.cursor.advance(tick, GapCause::NotHeld) {
                self.deliver(sink, delivery).await?;
            }
        }
        Ok(())
    }
}

/// Sends `error` (if any) and the close frame, then waits briefly for the
/// client's close, reading what it still sends: closing the socket with
/// unread input would reset the connection, and the client could lose the
/// close frame. After a protocol error the stream has already ended, so
/// this returns as soon as the close is written.
async fn close(
    sink: &mut Sink,
    inbound: &mut SplitStream<WebSocket>,
    patience: Duration,
    error: Option<ServerMessage>,
    code: u16,
    reason: String,
) {
    let sent = tokio::time::timeout(patience, async {
        if let Some(error) = error {
            sink.send(Message::Text(error.to_text().into())).await?;
        }
        sink.send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(frame)) = inbound.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

async fn send_ping(sink: &mut Sink) -> Result<(), Exit> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        sink.send(Message::Ping(Default::default())),
    )
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Exit::Gone),
        Err(_) => Err(Exit::Close(
            close_code::AGAIN,
            "slow consumer: could not take a ping".into(),
        )),
    }
}

async fn recv_opt<T>(receiver: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
