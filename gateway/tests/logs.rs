//! Secrets never reach the logs, even at the most verbose level.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use fxcast_testkit::{Stack, subscribe};

/// A log sink the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// The default current-thread runtime runs the server's tasks on this thread,
// so the thread's default subscriber sees everything they log.
#[tokio::test]
async fn tokens_in_urls_and_headers_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let response = h
        .client
        .get(h.url(&format!("/v1/rates/stream?symbols=USD_JPY&token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let mut ws = h.ws(&token).await;
    subscribe(&mut ws, &["USD_JPY"]).await;
    let response = h
        .client
        .get(h.url("/v1/rates"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("/v1/rates/stream") && logs.contains("/v1/stream"),
        "the requests were logged:\n{logs}"
    );
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !logs.contains(signature),
        "a token reached the logs:\n{logs}"
    );
    assert!(
        !logs.contains(&h.api_key()),
        "the API key reached the logs:\n{logs}"
    );
}
