//! Credentials towards a real redis-server (`--requirepass`): refused ones
//! are named as such, and no password ever shows in an error, a `Debug`
//! or the logs, also when the transport reconnects.
//!
//! A test binary of its own: it installs the log capture, and tracing's
//! per-callsite interest cache can miss a thread-local subscriber while
//! other tests of the same process emit the same events on other threads.

mod support;

use fxcast_transport::{
    Error, Transport,
    conformance::publish,
    redis::{RedisConfig, RedisTransport},
};
use support::{
    configs::redis_config as config,
    logs::capture_logs,
    numbers::{next_number, numbered, wait_health},
    redis_server::RedisServer,
};

async fn connect(url: String) -> RedisTransport {
    RedisTransport::connect(config(url)).await.unwrap()
}

async fn refused(config: RedisConfig, secret: &str) {
    let err = RedisTransport::connect(config).await.unwrap_err();
    let Error::Unavailable { message, .. } = &err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(
        message.contains("refused the credentials"),
        "the cause is named: {message}"
    );
    assert!(!message.contains(secret), "the secret leaked: {message}");
    assert!(!format!("{err:?}").contains(secret), "{err:?}");
}

// On the current-thread runtime every task of the transport runs on the
// test's thread, where the log capture is installed.
#[tokio::test]
async fn credentials_are_checked_and_never_shown() {
    let (captured, _logs) = capture_logs(tracing::Level::TRACE);
    let mut server = RedisServer::start_with(&["--requirepass", "right-pass"]);
    let port = server.port();
    let with = |password: Option<&str>| RedisConfig {
        password: password.map(Into::into),
        ..config(server.url())
    };
    refused(with(Some("wrong-pass")), "wrong-pass").await;
    refused(with(None), "right-pass").await;
    refused(
        config(format!("redis://:wrong-pass@127.0.0.1:{port}")),
        "wrong-pass",
    )
    .await;

    // In the URL, or from FXCAST_REDIS_PASSWORD (the config's password).
    let in_url = connect(format!("redis://:right-pass@127.0.0.1:{port}")).await;
    assert!(!format!("{in_url:?}").contains("right-pass"));
    let transport = RedisTransport::connect(with(Some("right-pass")))
        .await
        .unwrap();
    let mut health = in_url.health();
    let mut subscription = transport.subscribe("rates.AUD_USD").await.unwrap();
    publish(&in_url, "rates.AUD_USD", numbered(1)).await;
    assert_eq!(next_number(&mut subscription).await, 1);
    // Reconnecting logs the URL too.
    server.restart();
    wait_health(&mut health, false).await;
    wait_health(&mut health, true).await;
    publish(&in_url, "rates.AUD_USD", numbered(2)).await;
    assert_eq!(next_number(&mut subscription).await, 2);

    let logs = captured.text();
    assert!(logs.contains("redis transport connected"), "{logs}");
    assert!(logs.contains("redis connection lost"), "{logs}");
    assert!(logs.contains("<redacted>@127.0.0.1"), "{logs}");
    for secret in ["right-pass", "wrong-pass"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}
