//! The gateway's WebSocket as a test drives it.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::TcpStream;

use crate::next_within;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Sends `value` as a text frame.
pub async fn send_json(ws: &mut Ws, value: serde_json::Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

/// Asks to subscribe `ws` to `symbols`; the answer is left to the caller.
pub async fn send_subscribe(ws: &mut Ws, symbols: &[&str]) {
    send_json(
        ws,
        serde_json::json!({"type": "subscribe", "symbols": symbols}),
    )
    .await;
}

/// Subscribes `ws` to `symbols` and checks the acknowledgement.
pub async fn subscribe(ws: &mut Ws, symbols: &[&str]) {
    send_subscribe(ws, symbols).await;
    let ack = next_json(ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
}

/// Next JSON text message, skipping heartbeats.
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let message = next_within(
            ws,
            Duration::from_secs(10),
            "no WebSocket message within 10 s",
        )
        .await
        .expect("WebSocket error");
        if let Message::Text(text) = message {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            if value["type"] != "heartbeat" {
                return value;
            }
        }
    }
}
