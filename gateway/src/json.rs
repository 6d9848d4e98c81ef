//! JSON shapes of the REST, WebSocket and SSE APIs. Decimals are strings.

use std::time::SystemTime;

use fxcast_proto::v1::{Rate, SymbolInfo};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// RFC 3339 with microseconds, UTC.
pub(crate) fn rfc3339(ts: Option<prost_types_timestamp::Timestamp>) -> Option<String> {
    let time = SystemTime::try_from(ts?).ok()?;
    Some(humantime::format_rfc3339_micros(time).to_string())
}

mod prost_types_timestamp {
    pub(crate) use fxcast_proto::Timestamp;
}

/// One published rate.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RateJson {
    /// e.g. `USD_JPY`.
    pub symbol: String,
    /// Exact decimal string, e.g. `"151.234"`.
    pub bid: String,
    /// Exact decimal string.
    pub ask: String,
    /// Per-symbol, gap-free sequence.
    pub sequence: u64,
    /// Quote it when placing an order.
    pub rate_id: String,
    /// Where the price came from.
    pub source: String,
    /// True while the symbol's feed has stopped.
    pub stale: bool,
    /// When the feed produced it (RFC 3339).
    pub source_time: Option<String>,
    /// When fxcast published it (RFC 3339).
    pub publish_time: Option<String>,
}

impl From<&Rate> for RateJson {
    fn from(rate: &Rate) -> Self {
        Self {
            symbol: rate.symbol.clone(),
            bid: rate.bid.clone(),
            ask: rate.ask.clone(),
            sequence: rate.sequence,
            rate_id: rate.rate_id.clone(),
            source: rate.source.clone(),
            stale: rate.stale,
            source_time: rfc3339(rate.source_time),
            publish_time: rfc3339(rate.publish_time),
        }
    }
}

/// A symbol and its conventions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SymbolJson {
    /// e.g. `USD_JPY`.
    pub symbol: String,
    /// Smallest price increment, e.g. `"0.001"`.
    pub tick_size: String,
    /// Decimal places of prices.
    pub price_scale: u32,
    /// Markup per side, e.g. `"0.002"` or `"1.5bp"`.
    pub markup: String,
    /// Sequence of the latest rate (0: none yet).
    pub latest_sequence: u64,
}

impl From<SymbolInfo> for SymbolJson {
    fn from(info: SymbolInfo) -> Self {
        Self {
            symbol: info.symbol,
            tick_size: info.tick_size,
            price_scale: info.price_scale,
            markup: info.markup,
            latest_sequence: info.latest_sequence,
        }
    }
}

/// `GET /v1/symbols`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SymbolsJson {
    /// The symbols the caller may see.
    pub symbols: Vec<SymbolJson>,
}

/// `GET /v1/rates`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RatesJson {
    /// Latest rate of every symbol the caller may see.
    pub rates: Vec<RateJson>,
}

/// `POST /v1/tokens` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequestJson {
    /// Whom the token is for (required with the API key; ignored for anonymous browser tokens).
    #[serde(default)]
    pub subject: Option<String>,
    /// e.g. `["rates:subscribe=USD_JPY", "orders:place"]`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Lifetime in seconds (default 900, at most 86400).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// `POST /v1/tokens` response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenJson {
    /// Send as `authorization: Bearer <token>` or `?token=`.
    pub token: String,
    /// For revocation.
    pub token_id: String,
    /// RFC 3339.
    pub expires_at: Option<String>,
    /// Whom it was issued to.
    pub subject: String,
    /// What it allows.
    pub scopes: Vec<String>,
    /// Direct subscription to the rates topics on Momento, when the server
    /// runs on Momento (`--transport momento` or `--momento-bridge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momento: Option<MomentoAccessJson>,
}

/// A Momento disposable token that may only subscribe to the rates topics
/// the fxcast token may see, for Momento's SDKs (`@gomomento/sdk-web`).
/// Each topic message is one `fxcast.v1.Rate`, protobuf-encoded, binary.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MomentoAccessJson {
    /// The disposable token (`CredentialProvider.fromString`).
    pub token: String,
    /// RFC 3339; at the latest when the fxcast token expires.
    pub expires_at: Option<String>,
    /// The cache the topics live in.
    pub cache_name: String,
    /// `rates.<SYMBOL>` topics it may subscribe to, or `board.rates` (every
    /// symbol on one topic, with `--momento-board`).
    pub topics: Vec<String>,
    /// The Momento topics endpoint.
    pub endpoint: String,
    /// 0: every rate goes out on its topic; otherwise at most this many
    /// messages a second per topic, the latest rate each time, so sequences
    /// jump by design.
    pub max_messages_per_second: u32,
}

/// Messages a WebSocket client sends.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Start receiving rates of these symbols (the latest rate of each comes first).
    Subscribe {
        /// Symbols to add.
        symbols: Vec<String>,
        /// Per-symbol last sequence seen: held rates after it are replayed
        /// (what is no longer held is announced as a `gap`).
        #[serde(default)]
        resume_after: std::collections::BTreeMap<String, u64>,
        /// Also send the caller's own order events (`"type":"order"`);
        /// `symbols` may then be empty.
        #[serde(default)]
        orders: bool,
    },
    /// Stop receiving rates of these symbols.
    Unsubscribe {
        /// Symbols to remove.
        symbols: Vec<String>,
    },
    /// Application-level ping; answered with a heartbeat.
    Ping,
}

/// Messages the server sends on the WebSocket (rates are sent as [`RateJson`]
/// with `"type":"rate"`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Acknowledges a subscribe.
    Subscribed {
        /// Symbols now subscribed (all of them).
        symbols: Vec<String>,
    },
    /// Acknowledges an unsubscribe.
    Unsubscribed {
        /// Symbols now subscribed (all of them).
        symbols: Vec<String>,
    },
    /// Sequences of a symbol that will not be delivered.
    Gap {
        /// The symbol.
        symbol: String,
        /// First sequence skipped.
        first_missing: u64,
        /// Last sequence skipped.
        last_missing: u64,
        /// `slow_consumer`, `upstream` (WebSocket) or `not_held` (SSE), or
        /// `resume_ahead`: the resume point is ahead of the stream, which
        /// restarts from the rate that follows (`first_missing` - 1).
        reason: String,
    },
    /// Sent every few seconds and in answer to a ping.
    Heartbeat {
        /// Server time (RFC 3339).
        time: String,
    },
    /// Something the client sent was wrong, or the connection is about to close.
    Error {
        /// Stable code.
        code: String,
        /// What was wrong.
        message: String,
    },
}

impl ServerMessage {
    pub(crate) fn error(code: &str, message: impl Into<String>) -> Self {
        Self::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }

    pub(crate) fn heartbeat() -> Self {
        Self::Heartbeat {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }

    pub(crate) fn to_text(&self) -> String {
        serde_json::to_string(self).expect("server messages serialise")
    }
}

/// A rate as a WebSocket/SSE message: `{"type":"rate", ...RateJson}`.
#[derive(Serialize)]
pub(crate) struct RateMessage<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    #[serde(flatten)]
    pub(crate) rate: &'a RateJson,
}
