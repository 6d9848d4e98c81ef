//! Recording bitFlyer's notifications for later replay.
//!
//! The file is JSON Lines, one notification per line, as received:
//!
//! ```json
//! {"received_at":"2023-08-17T07:25:01.371234567Z","message":{"jsonrpc":"2.0","method":"channelMessage","params":{...}}}
//! ```
//!
//! `received_at` is this machine's wall clock when the frame arrived (UTC,
//! nanoseconds); `message` is the frame's JSON text byte for byte (line
//! breaks between tokens, which JSON allows, become spaces so the record
//! stays on one line). [`ReplayFeed`](super::ReplayFeed) paces a replay by
//! `received_at` and decodes `message` exactly as the live feed does.

use std::future::Future;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{
    bitflyer::{BitflyerConfig, BitflyerSession, Notification, format_timestamp},
    health::FeedHealth,
};
use crate::Error;

/// What a recording wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSummary {
    /// Notifications written.
    pub notifications: u64,
}

/// One record line (with its newline) for `notification`.
pub(crate) fn record_line(notification: &Notification) -> String {
    let message = notification.text.as_str().trim();
    let mut line = String::with_capacity(message.len() + 64);
    line.push_str(r#"{"received_at":""#);
    line.push_str(&format_timestamp(notification.received_at));
    line.push_str(r#"","message":"#);
    // Raw line breaks can only be whitespace between JSON tokens (strings
    // escape theirs), so replacing them keeps every value intact.
    line.extend(
        message
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
    );
    line.push_str("}\n");
    line
}

/// Connects to bitFlyer (reconnecting as the live feed does), subscribes to
/// the tickers of `products`, and writes every notification to `out` until
/// `stop` completes or `max_notifications` have been written. Each record is
/// flushed as it is written, so an interrupted recording loses nothing.
///
/// # Errors
/// [`Error::Config`] for bad settings, [`Error::Io`] when writing fails.
pub async fn record_bitflyer<'a, W>(
    config: BitflyerConfig,
    products: impl IntoIterator<Item = &'a str>,
    out: W,
    max_notifications: Option<u64>,
    stop: impl Future<Output = ()>,
) -> Result<RecordSummary, Error>
where
    W: AsyncWrite + Unpin,
{
    let products: Vec<&str> = products.into_iter().collect();
    // Not supervised (nothing is published): only the connection counters
    // are kept, so the staleness threshold is never used.
    let health = FeedHealth::new(products.iter().copied(), config.idle_timeout);
    let mut session = BitflyerSession::new(config, products, health)?;
    let mut out = tokio::io::BufWriter::new(out);
    let io = |source| Error::Io {
        context: "cannot write the recording".into(),
        source,
    };
    let mut summary = RecordSummary { notifications: 0 };
    tokio::pin!(stop);
    while max_notifications.is_none_or(|max| summary.notifications < max) {
        let notification = tokio::select! {
            () = &mut stop => break,
            n = session.next() => n,
        };
        out.write_all(record_line(&notification).as_bytes())
            .await
            .map_err(io)?;
        out.flush().await.map_err(io)?;
        summary.notifications += 1;
    }
    out.flush().await.map_err(io)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn a_record_is_one_json_line_keeping_the_message_verbatim() {
        let text = "{\"jsonrpc\":\"2.0\",\r\n \"method\":\"channelMessage\",\n\"params\":{\"channel\":\"c\",\"message\":{\"best_bid\":4197736.10000000000000000001,\"s\":\"a\\nb\"}}}";
        let notification = Notification {
            text: text.into(),
            received_at: UNIX_EPOCH + Duration::new(1_692_257_101, 371_234_567),
        };
        let line = record_line(&notification);
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with("}\n"));
        assert!(line.starts_with(
            r#"{"received_at":"2023-08-17T07:25:01.371234567Z","message":{"jsonrpc""#
        ));
        assert!(line.contains("4197736.10000000000000000001"), "{line}");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["message"]["params"]["message"]["s"], "a\nb");
    }
}
