//! bitFlyer Lightning's realtime ticker over its JSON-RPC 2.0 WebSocket API.
//!
//! [`BitflyerSession`] keeps one WebSocket connection subscribed to the
//! `lightning_ticker_<PRODUCT>` channel of every configured product and hands
//! out the `channelMessage` notifications. bitFlyer may close the connection
//! at any time (maintenance) and sends only data from after the subscription,
//! so the session reconnects by itself — capped exponential backoff with
//! jitter — and subscribes every channel again. Nothing is numbered here:
//! the [`RatePublisher`](crate::RatePublisher) assigns sequences, so a
//! reconnect can never leave a gap in them; the first tick after a reconnect
//! is published like any other.
//!
//! [`BitflyerFeed`] turns the notifications into quotes; `fxcast record`
//! writes them to a file for [`ReplayFeed`](super::ReplayFeed).

mod protocol;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpStream, sync::mpsc, time::Instant};
use tokio_tungstenite::{
    Connector, MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, Utf8Bytes, protocol::WebSocketConfig},
};

pub(crate) use self::protocol::{Decoded, TickerDecoder, format_timestamp};
use self::protocol::{Frame, classify, subscribe_request, ticker_channel};
use super::{
    Feed, Quote,
    health::{Counter, FeedHealth},
};
use crate::{BoxFuture, Error};

/// bitFlyer Lightning's realtime JSON-RPC endpoint.
pub const BITFLYER_ENDPOINT: &str = "wss://ws.lightstream.bitflyer.com/json-rpc";

/// Products served with `--feed bitflyer` when no symbols are configured.
pub const BITFLYER_DEFAULT_PRODUCTS: &[&str] = &["BTC_JPY", "ETH_JPY", "FX_BTC_JPY"];

/// Delays between connection attempts: from `initial` doubling up to `max`,
/// jittered (see [`fxcast_transport::Backoff`]).
pub type Backoff = fxcast_transport::BackoffPolicy;

/// Settings of the bitFlyer connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitflyerConfig {
    /// WebSocket URL (`wss://` or, for tests, `ws://`).
    pub endpoint: String,
    /// Delays between connection attempts.
    pub reconnect: Backoff,
    /// Longest wait for TCP, TLS and the WebSocket handshake.
    pub connect_timeout: Duration,
    /// A WebSocket ping is sent this often, so a dead connection is noticed
    /// even when the market is quiet.
    pub ping_interval: Duration,
    /// A connection silent this long (not even a pong) is dropped and
    /// replaced.
    pub idle_timeout: Duration,
}

impl Default for BitflyerConfig {
    fn default() -> Self {
        Self {
            endpoint: BITFLYER_ENDPOINT.to_owned(),
            reconnect: Backoff::new(Duration::from_millis(250), Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
        }
    }
}

/// One `channelMessage` notification as received.
#[derive(Debug, Clone)]
pub(crate) struct Notification {
    /// The frame's text, byte for byte.
    pub(crate) text: Utf8Bytes,
    /// Wall-clock time of receipt.
    pub(crate) received_at: SystemTime,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open connection and its bookkeeping.
struct Connection {
    socket: Socket,
    /// Subscribe requests not answered yet: id -> channel.
    pending: HashMap<u64, String>,
    last_frame: Instant,
    next_ping: Instant,
    /// Whether any data arrived on this connection (resets the backoff).
    delivered: bool,
}

/// A self-healing subscription to the ticker channels of some products.
pub(crate) struct BitflyerSession {
    config: BitflyerConfig,
    channels: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    health: FeedHealth,
    connection: Option<Connection>,
    /// Delays between attempts, reset once data flows.
    backoff: fxcast_transport::Backoff,
    /// Whether the next connect must wait out a backoff first.
    retrying: bool,
}

impl std::fmt::Debug for BitflyerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitflyerSession")
            .field("endpoint", &self.config.endpoint)
            .field("channels", &self.channels)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

/// Checks that `product` can be part of a channel name.
fn validate_product(product: &str) -> Result<(), Error> {
    if crate::symbols::is_code(product) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{product:?} is not a bitFlyer product code (such as BTC_JPY)"
        )))
    }
}

/// TLS for `wss://`: rustls with the ring provider and Mozilla's roots, set
/// up per client rather than through a process-wide default provider.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

impl BitflyerSession {
    /// A session for `products`; it connects on the first [`next`](Self::next).
    ///
    /// # Errors
    /// [`Error::Config`] for an empty product list, a malformed product code
    /// or endpoint.
    pub(crate) fn new<'a>(
        config: BitflyerConfig,
        products: impl IntoIterator<Item = &'a str>,
        health: FeedHealth,
    ) -> Result<Self, Error> {
        let channels = products
            .into_iter()
            .map(|p| validate_product(p).map(|()| ticker_channel(p)))
            .collect::<Result<Vec<_>, _>>()?;
        if channels.is_empty() {
            return Err(Error::Config("no bitFlyer products to subscribe to".into()));
        }
        if !(config.endpoint.starts_with("wss://") || config.endpoint.starts_with("ws://")) {
            return Err(Error::Config(format!(
                "bitFlyer endpoint {:?} must be a ws:// or wss:// URL",
                config.endpoint
            )));
        }
        Ok(Self {
            backoff: fxcast_transport::Backoff::new(config.reconnect),
            config,
            channels,
            tls: tls_config()?,
            health,
            connection: None,
            retrying: false,
        })
    }

    /// The next notification, connecting and reconnecting as needed. Waits
    /// as long as it takes; cancel it by dropping the future (it is cancel
    /// safe: an interrupted connect is simply retried).
    pub(crate) async fn next(&mut self) -> Notification {
        loop {
            let Some(connection) = self.connection.as_mut() else {
                self.connect().await;
                continue;
            };
            let idle_deadline = connection.last_frame + self.config.idle_timeout;
            let frame = tokio::select! {
                frame = connection.socket.next() => frame,
                () = tokio::time::sleep_until(connection.next_ping) => {
                    connection.next_ping = Instant::now() + self.config.ping_interval;
                    if let Err(err) = connection.socket.send(Message::Ping(Default::default())).await {
                        self.disconnect(&format!("ping failed: {err}"));
                    }
                    continue;
                }
                () = tokio::time::sleep_until(idle_deadline) => {
                    let idle = humantime::format_duration(self.config.idle_timeout);
                    self.disconnect(&format!("nothing received for {idle}"));
                    continue;
                }
            };
            let received_at = SystemTime::now();
            connection.last_frame = Instant::now();
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    let why = frame.map_or_else(
                        || "closed by bitFlyer".to_owned(),
                        |f| format!("closed by bitFlyer: {} {}", f.code, f.reason),
                    );
                    self.disconnect(&why);
                    continue;
                }
                // Pings are answered by tungstenite; pongs only prove liveness.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(bytes))) => {
                    self.health.count(Counter::Malformed);
                    tracing::warn!(len = bytes.len(), "bitFlyer sent a binary frame; ignored");
                    continue;
                }
                Some(Err(err)) => {
                    self.disconnect(&format!("connection lost: {err}"));
                    continue;
                }
                None => {
                    self.disconnect("connection closed");
                    continue;
                }
            };
            if is_data(text.as_str(), &mut connection.pending, &self.health) {
                if !connection.delivered {
                    connection.delivered = true;
                    self.backoff.reset();
                }
                self.health.count(Counter::Notification);
                return Notification { text, received_at };
            }
        }
    }

    fn disconnect(&mut self, why: &str) {
        if self.connection.take().is_some() {
            self.health.count(Counter::Disconnect);
            tracing::warn!(endpoint = %self.config.endpoint, reason = why, "bitFlyer disconnected; reconnecting");
        }
        self.retrying = true;
    }

    /// One connection attempt (after the backoff it is due), subscribing
    /// every channel on success.
    async fn connect(&mut self) {
        if self.retrying {
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
        self.retrying = true;
        let endpoint = &self.config.endpoint;
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        let attempt = tokio_tungstenite::connect_async_tls_with_config(
            endpoint.as_str(),
            Some(ws_config),
            // Nagle would hold our small requests (and pongs) back.
            true,
            Some(Connector::Rustls(Arc::clone(&self.tls))),
        );
        let mut socket = match tokio::time::timeout(self.config.connect_timeout, attempt).await {
            Ok(Ok((socket, _response))) => socket,
            Ok(Err(err)) => {
                self.health.count(Counter::ConnectFailure);
                tracing::warn!(%endpoint, error = %err, "cannot connect to bitFlyer");
                return;
            }
            Err(_) => {
                self.health.count(Counter::ConnectFailure);
                tracing::warn!(%endpoint, timeout = ?self.config.connect_timeout, "cannot connect to bitFlyer: timed out");
                return;
            }
        };
        let mut pending = HashMap::new();
        for (id, channel) in (1..).zip(&self.channels) {
            let request = Message::text(subscribe_request(id, channel));
            if let Err(err) = socket.feed(request).await {
                self.health.count(Counter::ConnectFailure);
                tracing::warn!(%endpoint, error = %err, "cannot subscribe on bitFlyer");
                return;
            }
            pending.insert(id, channel.clone());
        }
        if let Err(err) = socket.flush().await {
            self.health.count(Counter::ConnectFailure);
            tracing::warn!(%endpoint, error = %err, "cannot subscribe on bitFlyer");
            return;
        }
        self.health.count(Counter::Connect);
        tracing::info!(%endpoint, channels = self.channels.len(), "connected to bitFlyer; subscribing");
        let now = Instant::now();
        self.connection = Some(Connection {
            socket,
            pending,
            last_frame: now,
            next_ping: now + self.config.ping_interval,
            delivered: false,
        });
    }
}

/// Handles one text frame: subscription answers and other notifications
/// are logged (and errors counted); true for a `channelMessage`, the data.
fn is_data(text: &str, pending: &mut HashMap<u64, String>, health: &FeedHealth) -> bool {
    match classify(text) {
        Ok(Frame::ChannelMessage { .. }) => true,
        Ok(Frame::Response { id, outcome }) => {
            let channel = id.and_then(|id| pending.remove(&id));
            let channel = channel.as_deref().unwrap_or("?");
            match outcome {
                Ok(true) => tracing::info!(channel, "bitFlyer subscription confirmed"),
                Ok(false) => {
                    health.count(Counter::RpcError);
                    tracing::warn!(channel, "bitFlyer declined the subscription");
                }
                Err(error) => {
                    health.count(Counter::RpcError);
                    tracing::warn!(
                        channel,
                        code = error.code,
                        message = %error.message,
                        "bitFlyer JSON-RPC error"
                    );
                }
            }
            false
        }
        Ok(Frame::OtherNotification { method }) => {
            tracing::debug!(%method, "ignoring bitFlyer notification");
            false
        }
        Err(malformed) => {
            health.count(Counter::Malformed);
            tracing::warn!(error = %malformed, "rejected a malformed bitFlyer message");
            false
        }
    }
}

/// `--feed bitflyer`: live ticks of bitFlyer products, whose product codes
/// are the symbols (`BTC_JPY`, `ETH_JPY`, `FX_BTC_JPY`, ...).
///
/// Published prices are bitFlyer's best bid and ask with the symbol's markup,
/// rounded *away from the mid* to the symbol's scale like every feed's (so a
/// fractional JPY price never narrows the spread); the ticker's `timestamp`
/// is the rate's source time. Malformed messages are rejected, counted in
/// [`FeedHealth`] and logged, and the connection stays up.
#[derive(Debug)]
pub struct BitflyerFeed {
    session: BitflyerSession,
    decoder: TickerDecoder,
    health: FeedHealth,
}

impl BitflyerFeed {
    /// A feed of `products`, counting its connection events in `health`.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty product list, a malformed product code
    /// or endpoint.
    pub fn new<'a>(
        config: BitflyerConfig,
        products: impl IntoIterator<Item = &'a str>,
        health: FeedHealth,
    ) -> Result<Self, Error> {
        let products: Vec<&str> = products.into_iter().collect();
        Ok(Self {
            session: BitflyerSession::new(config, products.iter().copied(), health.clone())?,
            decoder: TickerDecoder::new(products),
            health,
        })
    }
}

/// Sends the quote of a decoded notification; false once `out` is closed.
pub(crate) async fn forward(
    decoded: Result<Decoded, protocol::Malformed>,
    health: &FeedHealth,
    out: &mpsc::Sender<Quote>,
) -> bool {
    match decoded {
        Ok(Decoded::Quote(quote)) => out.send(quote).await.is_ok(),
        Ok(Decoded::Ignored(why)) => {
            health.count(Counter::Ignored);
            tracing::debug!(reason = %why, "tick not published");
            true
        }
        Err(malformed) => {
            health.count(Counter::Malformed);
            tracing::warn!(error = %malformed, "rejected a malformed ticker");
            true
        }
    }
}

impl Feed for BitflyerFeed {
    fn name(&self) -> &'static str {
        "bitflyer"
    }

    fn run(
        mut self: Box<Self>,
        out: mpsc::Sender<Quote>,
    ) -> BoxFuture<'static, Result<(), crate::Error>> {
        Box::pin(async move {
            loop {
                let notification = self.session.next().await;
                let decoded = self.decoder.decode_frame(&notification.text);
                if !forward(decoded, &self.health, &out).await {
                    return Ok(());
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_rejected_up_front() {
        let health = FeedHealth::new([], Duration::from_secs(5));
        let config = BitflyerConfig::default();
        let err = BitflyerSession::new(config.clone(), ["btc-jpy"], health.clone()).unwrap_err();
        assert!(
            err.to_string().contains("not a bitFlyer product code"),
            "{err}"
        );
        let err = BitflyerSession::new(config.clone(), [], health.clone()).unwrap_err();
        assert!(err.to_string().contains("no bitFlyer products"), "{err}");
        let http = BitflyerConfig {
            endpoint: "https://example.invalid".into(),
            ..config
        };
        let err = BitflyerSession::new(http, ["BTC_JPY"], health).unwrap_err();
        assert!(err.to_string().contains("ws:// or wss://"), "{err}");
    }
}
