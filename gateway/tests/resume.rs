//! A resume point ahead of the stream (the client resumes on another
//! server, or after the data directory was reset) is answered at once on
//! the WebSocket and SSE: a `gap` with reason `resume_ahead`, then the
//! latest rate, then live ticks.

use std::time::Duration;

use fxcast_testkit::{Stack, next_json, send_json, sse_events};
use serde_json::{Value, json};

/// Answers must come at once, not when the sequence catches up.
const AT_ONCE: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_websocket_resuming_ahead_gets_a_gap_and_the_latest_rate_at_once() {
    let h = Stack::desk().await;
    let mut ws = h.browser_ws().await;
    send_json(
        &mut ws,
        json!({"type": "subscribe", "symbols": ["USD_JPY"], "resume_after": {"USD_JPY": 1_000_000_000u64}}),
    )
    .await;
    let first = tokio::time::timeout(AT_ONCE, async {
        let ack = next_json(&mut ws).await;
        assert_eq!(ack["type"], "subscribed", "{ack}");
        (next_json(&mut ws).await, next_json(&mut ws).await)
    })
    .await
    .expect("the resume point ahead was not answered at once");
    assert_eq!(
        first.0,
        json!({"type": "gap", "symbol": "USD_JPY", "first_missing": 2, "last_missing": 1_000_000_000u64, "reason": "resume_ahead"})
    );
    assert_eq!(
        (&first.1["type"], &first.1["sequence"]),
        (&json!("rate"), &json!(1))
    );
    // Then live, from the latest rate on.
    h.publish("USD_JPY", "151.200", "151.210").await;
    let live = next_json(&mut ws).await;
    assert_eq!(
        (&live["type"], &live["sequence"]),
        (&json!("rate"), &json!(2))
    );
}

#[tokio::test]
async fn an_sse_stream_resuming_ahead_gets_a_gap_and_the_latest_rate_at_once() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let response = h.sse_after("USD_JPY", &token, "1000000000").await;
    assert_eq!(response.status(), 200);
    let events = sse_events(response, 2, AT_ONCE).await;
    assert_eq!(events[0].0, "gap");
    let gap: Value = serde_json::from_str(&events[0].2).unwrap();
    assert_eq!(
        (&gap["first_missing"], &gap["last_missing"], &gap["reason"]),
        (&json!(2), &json!(1_000_000_000u64), &json!("resume_ahead"))
    );
    // The id restarts at the latest rate, so a reconnecting browser resumes
    // from there.
    assert_eq!((events[1].0.as_str(), events[1].1.as_str()), ("rate", "1"));
}
