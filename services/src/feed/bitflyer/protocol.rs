//! The messages of bitFlyer Lightning's realtime API (JSON-RPC 2.0 over
//! WebSocket) and their exact decoding.
//!
//! Prices arrive as JSON numbers (`"best_bid":4197736.0`). They are taken
//! from the raw JSON text with [`RawValue`] and parsed straight into
//! [`Decimal`], never through `f64`. (serde_json's `arbitrary_precision`
//! feature would do the same, but it is unified across the whole workspace
//! and changes how every other crate's `serde_json::Value` holds numbers.)

use std::{borrow::Cow, collections::HashSet, fmt, time::SystemTime};

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::feed::Quote;

/// Prefix of the ticker channel of a product: `lightning_ticker_BTC_JPY`.
pub(crate) const TICKER_CHANNEL_PREFIX: &str = "lightning_ticker_";

/// The ticker channel of `product`.
pub(crate) fn ticker_channel(product: &str) -> String {
    format!("{TICKER_CHANNEL_PREFIX}{product}")
}

/// The JSON-RPC request subscribing to `channel`.
pub(crate) fn subscribe_request(id: u64, channel: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "method": "subscribe",
        "params": { "channel": channel },
        "id": id,
    })
    .to_string()
}

/// Why a message was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed(reason: impl Into<String>) -> Malformed {
    Malformed(reason.into())
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct RpcError {
    /// The error code; bitFlyer uses the JSON-RPC ones.
    #[serde(default)]
    pub(crate) code: i64,
    /// What went wrong, in bitFlyer's words.
    #[serde(default)]
    pub(crate) message: String,
}

/// One text frame, classified.
#[derive(Debug)]
pub(crate) enum Frame<'a> {
    /// A `channelMessage` notification: data of a subscribed channel.
    ChannelMessage {
        channel: Cow<'a, str>,
        message: &'a RawValue,
    },
    /// The answer to one of our requests.
    Response {
        /// Our request id (`None` when the server could not read it).
        id: Option<u64>,
        outcome: Result<bool, RpcError>,
    },
    /// A notification of another method (ignored).
    OtherNotification { method: Cow<'a, str> },
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<RpcError>,
}

#[derive(Deserialize)]
struct ChannelParams<'a> {
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    message: &'a RawValue,
}

/// Classifies a text frame. Unknown fields are ignored.
pub(crate) fn classify(text: &str) -> Result<Frame<'_>, Malformed> {
    let envelope: Envelope<'_> = serde_json::from_str(text)
        .map_err(|e| malformed(format!("not a JSON-RPC message: {e}")))?;
    if let Some(method) = envelope.method {
        if method != "channelMessage" {
            return Ok(Frame::OtherNotification { method });
        }
        let params = envelope
            .params
            .ok_or_else(|| malformed("channelMessage without params"))?;
        let params: ChannelParams<'_> = serde_json::from_str(params.get())
            .map_err(|e| malformed(format!("channelMessage params: {e}")))?;
        return Ok(Frame::ChannelMessage {
            channel: params.channel,
            message: params.message,
        });
    }
    let id = envelope.id.and_then(|id| id.get().parse::<u64>().ok());
    if let Some(error) = envelope.error {
        return Ok(Frame::Response {
            id,
            outcome: Err(error),
        });
    }
    match envelope.result {
        Some(result) => Ok(Frame::Response {
            id,
            outcome: Ok(result.get() == "true"),
        }),
        None => Err(malformed("neither a notification nor a response")),
    }
}

/// The fields of a `lightning_ticker_*` message fxcast uses; the others
/// (`ltp`, `volume`, sizes, depths) are ignored.
#[derive(Deserialize)]
struct Ticker<'a> {
    #[serde(borrow)]
    product_code: Cow<'a, str>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    best_bid: &'a RawValue,
    #[serde(borrow)]
    best_ask: &'a RawValue,
}

/// Parses a JSON number's text exactly: `4197736.0`, `-1.5`, `1.2E3`.
///
/// # Errors
/// Anything that is not a JSON number, or one a [`Decimal`] cannot hold
/// exactly (more than 28 significant digits).
pub(crate) fn json_decimal(field: &str, raw: &RawValue) -> Result<Decimal, Malformed> {
    let text = raw.get().trim();
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(malformed(format!("{field} is not a JSON number: {text}")));
    }
    let parsed = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text)
    } else {
        Decimal::from_str_exact(text)
    };
    parsed.map_err(|e| malformed(format!("{field} {text} is not an exact decimal: {e}")))
}

/// What a notification amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A tick to publish.
    Quote(Quote),
    /// A well-formed tick fxcast does not publish; the reason says why.
    Ignored(String),
}

/// Decodes ticker notifications of a fixed set of products into quotes.
#[derive(Debug, Clone)]
pub(crate) struct TickerDecoder {
    products: HashSet<String>,
}

impl TickerDecoder {
    /// A decoder publishing `products` (bitFlyer product codes, which are
    /// also fxcast's symbol names).
    pub(crate) fn new<'a>(products: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            products: products.into_iter().map(str::to_owned).collect(),
        }
    }

    /// Decodes a whole notification frame (as received or recorded).
    pub(crate) fn decode_frame(&self, text: &str) -> Result<Decoded, Malformed> {
        match classify(text)? {
            Frame::ChannelMessage { channel, message } => self.decode(&channel, message),
            Frame::Response { .. } => Err(malformed("a response, not a notification")),
            Frame::OtherNotification { method } => Ok(Decoded::Ignored(format!(
                "notification of method {method:?}"
            ))),
        }
    }

    /// Decodes the `message` of a `channelMessage` on `channel`.
    ///
    /// The ticker's `timestamp` (UTC, e.g. `2023-08-17T07:25:01.3680432Z`)
    /// becomes the quote's source time; `best_bid` and `best_ask` its prices.
    /// Ticks of a market whose `state` is not `RUNNING` (closed, circuit
    /// break, ...) are ignored: such prices are not tradable.
    pub(crate) fn decode(&self, channel: &str, message: &RawValue) -> Result<Decoded, Malformed> {
        let Some(channel_product) = channel.strip_prefix(TICKER_CHANNEL_PREFIX) else {
            return Err(malformed(format!(
                "message on unexpected channel {channel:?}"
            )));
        };
        let ticker: Ticker<'_> = serde_json::from_str(message.get())
            .map_err(|e| malformed(format!("{channel}: invalid ticker: {e}")))?;
        let product = ticker.product_code.as_ref();
        if product != channel_product {
            return Err(malformed(format!(
                "{channel}: ticker of product {product:?}"
            )));
        }
        if !self.products.contains(product) {
            return Ok(Decoded::Ignored(format!("{product} is not configured")));
        }
        if let Some(state) = ticker.state.as_deref()
            && state != "RUNNING"
        {
            return Ok(Decoded::Ignored(format!(
                "{product} market state is {state:?}"
            )));
        }
        let source_time = humantime::parse_rfc3339(&ticker.timestamp)
            .map_err(|e| malformed(format!("{channel}: timestamp {:?}: {e}", ticker.timestamp)))?;
        let bid = json_decimal("best_bid", ticker.best_bid)
            .map_err(|e| malformed(format!("{channel}: {e}")))?;
        let ask = json_decimal("best_ask", ticker.best_ask)
            .map_err(|e| malformed(format!("{channel}: {e}")))?;
        if bid <= Decimal::ZERO || ask <= Decimal::ZERO {
            return Err(malformed(format!(
                "{channel}: best_bid {bid} and best_ask {ask} must be positive"
            )));
        }
        if bid > ask {
            return Err(malformed(format!(
                "{channel}: crossed market: best_bid {bid} above best_ask {ask}"
            )));
        }
        Ok(Decoded::Quote(Quote {
            symbol: product.to_owned(),
            bid,
            ask,
            source_time,
        }))
    }
}

/// Source time of a quote as bitFlyer writes it, for tests and recordings.
pub(crate) fn format_timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// A ticker notification exactly as bitFlyer sends it.
    const REAL: &str = r#"{"jsonrpc":"2.0","method":"channelMessage","params":{"channel":"lightning_ticker_BTC_JPY","message":{"product_code":"BTC_JPY","state":"RUNNING","timestamp":"2023-08-17T07:25:01.3680432Z","tick_id":38452797,"best_bid":4197736.0,"best_ask":4198000.0,"best_bid_size":0.01,"best_ask_size":0.0455,"total_bid_depth":421.10836527,"total_ask_depth":450.67930478,"market_bid_size":0.0,"market_ask_size":0.0,"ltp":4198000.0,"volume":1916.28004622,"volume_by_product":1916.28004622}}}"#;

    fn decoder() -> TickerDecoder {
        TickerDecoder::new(["BTC_JPY", "ETH_JPY"])
    }

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    fn quote(text: &str) -> Quote {
        match decoder().decode_frame(text).unwrap() {
            Decoded::Quote(q) => q,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_a_real_ticker_exactly() {
        let q = quote(REAL);
        assert_eq!(q.symbol, "BTC_JPY");
        assert_eq!(q.bid.to_string(), "4197736.0");
        assert_eq!(q.ask.to_string(), "4198000.0");
        let expected = UNIX_EPOCH + Duration::new(1_692_257_101, 368_043_200);
        assert_eq!(q.source_time, expected);
        assert_eq!(
            format_timestamp(q.source_time),
            "2023-08-17T07:25:01.368043200Z"
        );
    }

    #[test]
    fn numbers_never_pass_through_f64() {
        // 0.1 + 17 more digits: an f64 would round this to 0.1.
        let d = json_decimal("x", &raw("0.10000000000000000555")).unwrap();
        assert_eq!(d.to_string(), "0.10000000000000000555");
        let d = json_decimal("x", &raw("4197736.123456789012345")).unwrap();
        assert_eq!(d.to_string(), "4197736.123456789012345");
        assert_eq!(
            json_decimal("x", &raw("4.1977365E6")).unwrap().to_string(),
            "4197736.5"
        );
        assert_eq!(json_decimal("x", &raw("-2")).unwrap(), Decimal::from(-2));
        for bad in [
            r#""4197736.0""#,
            "null",
            "true",
            "{}",
            "123456789012345678901234567890.5",
        ] {
            assert!(json_decimal("best_bid", &raw(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn classifies_responses_and_errors() {
        let ack = classify(r#"{"jsonrpc":"2.0","id":3,"result":true}"#).unwrap();
        assert!(
            matches!(
                ack,
                Frame::Response {
                    id: Some(3),
                    outcome: Ok(true)
                }
            ),
            "{ack:?}"
        );
        let err = classify(
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Invalid params: channel"}}"#,
        )
        .unwrap();
        match err {
            Frame::Response {
                id: Some(1),
                outcome: Err(e),
            } => assert_eq!(
                (e.code, e.message.as_str()),
                (-32602, "Invalid params: channel")
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(r#"{"jsonrpc":"2.0","method":"ping","params":{}}"#).unwrap(),
            Frame::OtherNotification { .. }
        ));
        for bad in [
            "",
            "not json",
            "[1,2]",
            r#"{"jsonrpc":"2.0"}"#,
            r#"{"method":"channelMessage"}"#,
        ] {
            assert!(classify(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_malformed_tickers_with_a_reason() {
        let cases = [
            (REAL.replace("4197736.0", "\"4197736.0\""), "best_bid"),
            (REAL.replace(r#""best_ask":4198000.0,"#, ""), "best_ask"),
            (
                REAL.replace("2023-08-17T07:25:01.3680432Z", "yesterday"),
                "timestamp",
            ),
            (REAL.replace("4197736.0", "4198001.0"), "crossed"),
            (REAL.replace("4197736.0", "0.0"), "positive"),
            (
                REAL.replace(r#""product_code":"BTC_JPY""#, r#""product_code":"ETH_JPY""#),
                "product",
            ),
            (
                REAL.replace("lightning_ticker_BTC_JPY", "lightning_board_BTC_JPY"),
                "channel",
            ),
        ];
        for (text, expected) in cases {
            let err = decoder().decode_frame(&text).unwrap_err();
            assert!(err.0.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn ignores_unknown_fields_closed_markets_and_other_products() {
        let extra = REAL.replace(r#""tick_id""#, r#""new_field":[1,{"a":2}],"tick_id""#);
        assert_eq!(quote(&extra), quote(REAL));
        let closed = REAL.replace("RUNNING", "CIRCUIT BREAK");
        assert!(
            matches!(decoder().decode_frame(&closed).unwrap(), Decoded::Ignored(r) if r.contains("CIRCUIT BREAK"))
        );
        let other = TickerDecoder::new(["ETH_JPY"]).decode_frame(REAL).unwrap();
        assert!(matches!(other, Decoded::Ignored(r) if r.contains("not configured")));
    }

    #[test]
    fn subscribe_requests_follow_json_rpc() {
        let request: serde_json::Value =
            serde_json::from_str(&subscribe_request(2, &ticker_channel("FX_BTC_JPY"))).unwrap();
        assert_eq!(
            request,
            serde_json::json!({"jsonrpc":"2.0","method":"subscribe","params":{"channel":"lightning_ticker_FX_BTC_JPY"},"id":2})
        );
    }
}
