//! The gateway's Server-Sent Events as a test reads them.

use std::time::Duration;

use futures_util::StreamExt;

/// One SSE event: its `event`, `id` and `data` fields.
pub type SseEvent = (String, String, String);

/// The next `count` events of `response`'s SSE body, each within
/// `within`; blocks without an `event` field (comments) are skipped.
pub async fn sse_events(
    response: reqwest::Response,
    count: usize,
    within: Duration,
) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut body = response.bytes_stream();
    while events.len() < count {
        let chunk = tokio::time::timeout(within, body.next())
            .await
            .expect("no SSE event in time")
            .expect("the SSE stream ended")
            .unwrap();
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim_start().to_owned())
                    .unwrap_or_default()
            };
            let event = field("event:");
            if !event.is_empty() {
                events.push((event, field("id:"), field("data:")));
            }
        }
    }
    events
}
