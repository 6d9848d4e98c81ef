//! WebSocket and SSE through real clients.

use std::time::Duration;

use futures_util::StreamExt;
use fxcast_gateway::{GatewayConfig, LagLimit, WsLimits};
use fxcast_testkit::{
    Stack, json_of, next_json, send_json, send_subscribe, sse_events as sse_events_within,
    subscribe,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};

#[tokio::test]
async fn websocket_subscribe_stream_unsubscribe() {
    let h = Stack::desk().await;
    let mut ws = h.browser_ws().await;
    send_subscribe(&mut ws, &["USD_JPY"]).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "subscribed", "symbols": ["USD_JPY"]})
    );
    let first = next_json(&mut ws).await;
    assert_eq!(
        (
            first["type"].as_str(),
            first["symbol"].as_str(),
            first["sequence"].as_u64()
        ),
        (Some("rate"), Some("USD_JPY"), Some(1))
    );
    for i in 2..=20u64 {
        h.publish("EUR_USD", "1.08500", "1.08510").await;
        h.publish(
            "USD_JPY",
            &format!("151.{:03}", 100 + i),
            &format!("151.{:03}", 110 + i),
        )
        .await;
        let rate = next_json(&mut ws).await;
        assert_eq!(
            (rate["symbol"].as_str(), rate["sequence"].as_u64()),
            (Some("USD_JPY"), Some(i)),
            "{rate}"
        );
    }
    send_json(
        &mut ws,
        json!({"type": "unsubscribe", "symbols": ["USD_JPY"]}),
    )
    .await;
    // Rates already in flight may arrive before the acknowledgement.
    loop {
        let message = next_json(&mut ws).await;
        if message["type"] == "unsubscribed" {
            assert_eq!(message["symbols"], json!([]));
            break;
        }
        assert_eq!(message["type"], "rate");
    }
}

#[tokio::test]
async fn websocket_refuses_bad_input_without_dropping_the_connection() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let mut ws = h.ws(&token).await;
    send_subscribe(&mut ws, &["NOPE"]).await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["code"], "unknown_symbol");
    assert_eq!(
        error["message"],
        "unknown symbol \"NOPE\" (known: EUR_USD, USD_JPY)"
    );
    ws.send_text("hello").await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["code"], "invalid_message");
    send_subscribe(&mut ws, &[]).await;
    assert_eq!(
        next_json(&mut ws).await["message"],
        "symbols must not be empty"
    );
    send_json(&mut ws, json!({"type": "ping"})).await;
    let heartbeat = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        heartbeat
            .to_text()
            .unwrap()
            .contains("\"type\":\"heartbeat\"")
    );
    // Still usable.
    send_subscribe(&mut ws, &["EUR_USD"]).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");

    // A symbol outside the token's scope.
    let usd_only = h.token("bob", "rates:subscribe=USD_JPY");
    let mut ws = h.ws(&usd_only).await;
    send_subscribe(&mut ws, &["EUR_USD"]).await;
    let error = next_json(&mut ws).await;
    assert_eq!(
        (error["code"].as_str(), error["message"].as_str()),
        (
            Some("permission_denied"),
            Some("this token may not read rates of EUR_USD")
        )
    );

    // An oversized message closes the connection with 1009 and the limit.
    let limit = WsLimits::default().max_message_size;
    let huge = json!({"type": "subscribe", "symbols": ["X".repeat(limit)]}).to_string();
    let mut ws = h.ws(&token).await;
    ws.send_text(&huge).await;
    let error = next_json(&mut ws).await;
    assert_eq!(error["code"], "message_too_big", "{error}");
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Size);
    assert_eq!(
        frame.reason,
        format!("message too big: at most {limit} bytes")
    );
}

/// A desk with the default WebSocket limits as `change` leaves them.
async fn ws_limited(change: impl FnOnce(&mut WsLimits)) -> Stack {
    let mut limits = WsLimits::default();
    change(&mut limits);
    Stack::with_ws(limits).await
}

/// The close frame that ends `ws`, skipping what comes before it.
async fn close_frame(
    ws: &mut fxcast_testkit::Ws,
) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            if let Message::Close(frame) = message.expect("a clean close") {
                return frame.expect("a close frame with a code and reason");
            }
        }
        panic!("the connection ended without a close frame");
    })
    .await
    .expect("no close frame within 10 s")
}

#[tokio::test]
async fn websocket_subscriptions_are_capped_per_connection() {
    let h = ws_limited(|limits| limits.max_subscriptions = 1).await;
    let token = h.browser_token().await;
    let mut ws = h.ws(&token).await;
    send_subscribe(&mut ws, &["USD_JPY", "EUR_USD"]).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "error", "code": "too_many_subscriptions", "message": "at most 1 symbols per connection"})
    );
    // Nothing was subscribed, and the connection is still usable.
    send_subscribe(&mut ws, &["EUR_USD"]).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "subscribed", "symbols": ["EUR_USD"]})
    );
    send_subscribe(&mut ws, &["USD_JPY"]).await;
    // The EUR_USD snapshot may come first.
    loop {
        let message = next_json(&mut ws).await;
        if message["type"] == "error" {
            assert_eq!(message["code"], "too_many_subscriptions");
            break;
        }
        assert_eq!(message["symbol"], "EUR_USD", "{message}");
    }
}

#[tokio::test]
async fn a_silent_websocket_is_closed_after_the_idle_timeout() {
    let h = ws_limited(|limits| limits.idle_timeout = Duration::from_millis(300)).await;
    let mut ws = h.browser_ws().await;
    let frame = close_frame(&mut ws).await;
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason, "idle timeout: no frames from the client");
}

trait SendText {
    async fn send_text(&mut self, text: &str);
}

impl SendText for fxcast_testkit::Ws {
    async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt;
        self.send(Message::Text(text.into())).await.unwrap();
    }
}

#[tokio::test]
async fn websocket_needs_a_valid_token_before_upgrading() {
    let h = Stack::desk().await;
    for path in ["/v1/stream", "/v1/stream?token=nonsense"] {
        let err = tokio_tungstenite::connect_async(h.ws_url(path))
            .await
            .unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("{path}: expected an HTTP refusal, got {err}")
        };
        assert_eq!(response.status(), 401, "{path}");
    }
}

#[tokio::test]
async fn websocket_resumes_after_a_sequence() {
    let h = Stack::desk().await;
    for _ in 0..9 {
        h.publish("USD_JPY", "151.100", "151.110").await;
    }
    let token = h.browser_token().await;
    let mut ws = h.ws(&token).await;
    send_json(
        &mut ws,
        json!({"type": "subscribe", "symbols": ["USD_JPY"], "resume_after": {"USD_JPY": 6}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    for seq in 7..=10 {
        assert_eq!(next_json(&mut ws).await["sequence"], seq);
    }
}

#[tokio::test]
async fn websocket_carries_the_callers_own_order_events() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let mut ws = h.ws(&token).await;
    send_json(
        &mut ws,
        json!({"type": "subscribe", "symbols": [], "orders": true}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"type": "subscribed", "symbols": []})
    );
    send_json(&mut ws, json!({"type": "ping"})).await;
    next_heartbeat(&mut ws).await;
    let order = json!({"client_order_id": "ws1", "symbol": "USD_JPY", "side": "sell", "quantity": "1000", "price": "151.100"});
    let placed = json_of(h.post_as("/v1/orders", &token, &order).await).await;
    let event = loop {
        let message = next_json(&mut ws).await;
        if message["type"] == "order" && message["status"] != "pending" {
            break message;
        }
    };
    assert_eq!(event["order_id"], placed["order_id"]);
    assert_eq!(event["status"], "filled");
}

async fn next_heartbeat(ws: &mut fxcast_testkit::Ws) {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if message.to_text().unwrap_or_default().contains("heartbeat") {
            return;
        }
    }
}

#[tokio::test]
async fn a_websocket_that_never_reads_is_disconnected_while_others_keep_up() {
    let h = ws_limited(|limits| limits.send_timeout = Duration::from_millis(500)).await;
    let token = h.browser_token().await;
    let mut stalled = h.ws(&token).await;
    send_subscribe(&mut stalled, &["USD_JPY"]).await;
    let mut reader = h.ws(&token).await;
    subscribe(&mut reader, &["USD_JPY"]).await;
    assert_eq!(next_json(&mut reader).await["sequence"], 1);

    // Publish in steps the reader keeps up with; the stalled client's socket
    // buffers fill up and it is cut off, without slowing the reader.
    let mut expected = 2u64;
    let disconnected = loop {
        for _ in 0..32 {
            h.publish("USD_JPY", "151.100", "151.110").await;
        }
        while expected <= h.core.latest().get("USD_JPY").unwrap().sequence() {
            let rate = next_json(&mut reader).await;
            assert_eq!(
                rate["sequence"], expected,
                "the reading client must see every tick"
            );
            expected += 1;
        }
        if h.metric("fxcast_gateway_slow_consumer_disconnects_total{kind=\"ws\"}")
            .await
            >= 1.0
        {
            break true;
        }
        assert!(
            expected < 2_000_000,
            "the stalled client was never disconnected"
        );
    };
    assert!(disconnected);

    // What the stalled client finally reads ends with a close frame saying why.
    let close = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = stalled.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .unwrap();
    if let Some(frame) = close {
        assert_eq!(frame.code, CloseCode::Again);
        assert!(
            frame.reason.starts_with("slow consumer"),
            "{}",
            frame.reason
        );
    }
}

#[tokio::test]
async fn a_slow_websocket_reader_is_conflated_with_a_gap_message() {
    let h = Stack::desk_with(GatewayConfig {
        anonymous_tokens: true,
        stream_buffer: 8,
        // Conflated as often as it takes: this test is about the gap message.
        lag_limit: LagLimit {
            max_lags: usize::MAX,
            ..LagLimit::default()
        },
        ..Default::default()
    })
    .await;
    let token = h.browser_token().await;
    let mut ws = h.ws(&token).await;
    subscribe(&mut ws, &["USD_JPY"]).await;
    assert_eq!(next_json(&mut ws).await["sequence"], 1);
    // A burst far beyond the per-symbol buffer while the client is not reading.
    for _ in 0..5_000 {
        h.publish("USD_JPY", "151.100", "151.110").await;
    }
    let mut last = 1;
    let mut saw_gap = false;
    while last < 5_001 {
        let message = next_json(&mut ws).await;
        match message["type"].as_str() {
            Some("gap") => {
                assert_eq!(message["reason"], "slow_consumer");
                assert_eq!(message["first_missing"], last + 1);
                saw_gap = true;
            }
            Some("rate") => {
                let seq = message["sequence"].as_u64().unwrap();
                assert!(seq > last);
                assert!(
                    seq == last + 1 || saw_gap,
                    "skipped {last}..{seq} without a gap message"
                );
                last = seq;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_gap);
    assert!(
        h.metric("fxcast_gateway_conflations_total{kind=\"ws\"}")
            .await
            >= 1.0
    );
}

/// The next `count` SSE events of `response`, each within 10 s.
async fn sse_events(response: reqwest::Response, count: usize) -> Vec<fxcast_testkit::SseEvent> {
    sse_events_within(response, count, Duration::from_secs(10)).await
}

/// Awaits `events` while `symbol` at `bid`/`ask` is published 50 ms in.
async fn publishing_soon<T>(
    h: &Stack,
    (symbol, bid, ask): (&str, &str, &str),
    events: impl Future<Output = T>,
) -> T {
    let publisher = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.publish(symbol, bid, ask).await;
    };
    tokio::join!(events, publisher).0
}

#[tokio::test]
async fn sse_streams_with_ids_and_resumes_from_last_event_id() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;
    for _ in 0..4 {
        h.publish("USD_JPY", "151.100", "151.110").await;
    }
    let response = h
        .get(&format!("/v1/rates/stream?symbols=USD_JPY&token={token}"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let first = sse_events(response, 1).await;
    assert_eq!((first[0].0.as_str(), first[0].1.as_str()), ("rate", "5"));
    let rate: Value = serde_json::from_str(&first[0].2).unwrap();
    assert_eq!(rate["sequence"], 5);

    // Reconnect as a browser would after seeing id 2: replays 3, 4, 5, then live.
    let response = h.sse_after("USD_JPY", &token, "2").await;
    let events = publishing_soon(
        &h,
        ("USD_JPY", "151.200", "151.210"),
        sse_events(response, 4),
    )
    .await;
    let ids: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(ids, ["3", "4", "5", "6"]);

    // Several symbols: the id carries every symbol's position.
    let response = h
        .sse_after("USD_JPY,EUR_USD", &token, "EUR_USD:1,USD_JPY:5")
        .await;
    let events = publishing_soon(
        &h,
        ("EUR_USD", "1.08600", "1.08610"),
        sse_events(response, 2),
    )
    .await;
    assert_eq!(events[0].1, "EUR_USD:1,USD_JPY:6");
    assert_eq!(events[1].1, "EUR_USD:2,USD_JPY:6");
}

#[tokio::test]
async fn sse_refuses_bad_requests() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let status = async |path: String| h.get(&path).await.status().as_u16();
    assert_eq!(status("/v1/rates/stream?symbols=USD_JPY".into()).await, 401);
    assert_eq!(
        status(format!("/v1/rates/stream?symbols=NOPE&token={token}")).await,
        400
    );
    let usd_only = h.token("bob", "rates:subscribe=USD_JPY");
    assert_eq!(
        status(format!("/v1/rates/stream?symbols=EUR_USD&token={usd_only}")).await,
        403
    );
    let url = h.url(&format!(
        "/v1/rates/stream?symbols=USD_JPY,EUR_USD&token={token}"
    ));
    let response = h.client.get(url).header("last-event-id", "7").send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn revoking_a_token_closes_its_websocket_and_sse_streams() {
    let h = Stack::desk().await;
    let issued = h.issue("alice", "rates:subscribe=*", None);
    let mut ws = h.ws(&issued.token).await;
    subscribe(&mut ws, &["USD_JPY"]).await;
    assert_eq!(next_json(&mut ws).await["type"], "rate");
    let sse = h
        .get_as("/v1/rates/stream?symbols=USD_JPY", &issued.token)
        .await;
    assert_eq!(sse.status(), 200);
    // Someone else's connection stays open.
    let mut bystander = h.browser_ws().await;
    subscribe(&mut bystander, &["USD_JPY"]).await;

    h.core.authority().revoke(&issued.token_id).unwrap();

    let close = close_frame(&mut ws).await;
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason, "token revoked: reconnect with another token");

    let events = sse_events(sse, 2).await;
    let (event, _, data) = events.last().unwrap();
    assert_eq!(event, "error", "{events:?}");
    let error: Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["code"], "token_revoked");

    let published = h.publish("USD_JPY", "151.300", "151.310").await;
    loop {
        let message = next_json(&mut bystander).await;
        if message["sequence"] == published.sequence {
            break;
        }
    }
    // The revoked token cannot open a new stream either.
    let response = h
        .get_as("/v1/rates/stream?symbols=USD_JPY", &issued.token)
        .await;
    assert_eq!(response.status(), 401);
}

/// A gateway whose connections are closed on their second conflation.
async fn impatient() -> Stack {
    Stack::desk_with(GatewayConfig {
        anonymous_tokens: true,
        stream_buffer: 8,
        lag_limit: LagLimit {
            max_lags: 2,
            window: Duration::from_secs(60),
        },
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn a_websocket_that_keeps_falling_behind_is_closed() {
    let h = impatient().await;
    let token = h.browser_token().await;
    let mut ws = h.ws(&token).await;
    subscribe(&mut ws, &["USD_JPY"]).await;
    let mut gaps = 0;
    let mut last_text = String::new();
    for _ in 0..50 {
        // A burst far beyond the per-symbol buffer, then read what came.
        let mut last = 0;
        for _ in 0..2_000 {
            last = h.publish("USD_JPY", "151.100", "151.110").await.sequence;
        }
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("no message within 10 s")
                .expect("closed without a close frame")
                .unwrap_or_else(|e| panic!("{e} after {gaps} gaps, last {last_text}"));
            let text = match message {
                Message::Close(frame) => {
                    let frame = frame.expect("a close frame with a reason");
                    assert_eq!(frame.code, CloseCode::Again);
                    assert!(
                        frame
                            .reason
                            .starts_with("slow consumer: fell behind 2 times"),
                        "{}",
                        frame.reason
                    );
                    assert!(gaps >= 1, "it was conflated before it was closed");
                    assert!(
                        h.metric("fxcast_gateway_slow_consumer_disconnects_total{kind=\"ws\"}")
                            .await
                            >= 1.0
                    );
                    return;
                }
                Message::Text(text) => text,
                _ => continue,
            };
            let message: Value = serde_json::from_str(&text).unwrap();
            last_text = text.to_string();
            match message["type"].as_str() {
                Some("gap") => gaps += 1,
                Some("rate") if message["sequence"] == last => break,
                _ => {}
            }
        }
    }
    panic!("the connection fell behind in 50 bursts and was never closed");
}

#[tokio::test]
async fn an_sse_stream_that_keeps_falling_behind_ends_with_an_error() {
    let h = impatient().await;
    let token = h.browser_token().await;
    let response = h.get_as("/v1/rates/stream?symbols=USD_JPY", &token).await;
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    for _ in 0..50 {
        let mut last = 0;
        for _ in 0..2_000 {
            last = h.publish("USD_JPY", "151.100", "151.110").await.sequence;
        }
        let caught_up = format!("id: {last}\n");
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
                .await
                .expect("no event within 10 s");
            let Some(chunk) = chunk else {
                panic!("the stream ended without an error event: {buffer}");
            };
            buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            if let Some(at) = buffer.find("event: error") {
                let data = buffer[at..].lines().nth(1).unwrap();
                let error: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(error["code"], "slow_consumer");
                assert!(
                    tokio::time::timeout(Duration::from_secs(10), body.next())
                        .await
                        .expect("the stream ends after the error")
                        .is_none()
                );
                return;
            }
            if buffer.contains(&caught_up) {
                buffer.clear();
                break;
            }
            // Keep only the tail: an id line may span two chunks.
            if buffer.len() > 4096 {
                buffer.drain(..buffer.len() - 256);
            }
        }
    }
    panic!("the stream fell behind in 50 bursts and was never ended");
}
