//! Secrets never reach the logs, even at the most verbose level.

use fxcast_testkit::{Stack, capture_logs, subscribe};

// The default current-thread runtime runs the server's tasks on this thread,
// so the thread's default subscriber sees everything they log.
#[tokio::test]
async fn tokens_in_urls_and_headers_never_reach_the_logs() {
    let (captured, _guard) = capture_logs(tracing::Level::TRACE);

    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let response = h
        .get(&format!("/v1/rates/stream?symbols=USD_JPY&token={token}"))
        .await;
    assert_eq!(response.status(), 200);
    drop(response);
    let mut ws = h.ws(&token).await;
    subscribe(&mut ws, &["USD_JPY"]).await;
    let response = h.get_as("/v1/rates", &token).await;
    assert_eq!(response.status(), 200);

    let logs = captured.text();
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
