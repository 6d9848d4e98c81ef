//! Credentials towards a real redis-server (`--requirepass`): refused ones
//! are named as such, and no password ever shows in an error, a `Debug`
//! or the logs, also when the transport reconnects.
//!
//! A test binary of its own: it installs the log capture, and tracing's
//! per-callsite interest cache can miss a thread-local subscriber while
//! other tests of the same process emit the same events on other threads.

mod support;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use fxcast_transport::{
    BackoffPolicy, Delivery, Error, Subscription, Transport, TransportHealth,
    conformance::publish,
    redis::{RedisConfig, RedisTransport},
};
use support::redis_server::RedisServer;
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(30);

fn config(url: String) -> RedisConfig {
    RedisConfig {
        url,
        reconnect: BackoffPolicy::new(Duration::from_millis(20), Duration::from_millis(250)),
        request_timeout: Duration::from_secs(2),
        heartbeat: Duration::from_millis(250),
        ..RedisConfig::default()
    }
}

async fn connect(url: String) -> RedisTransport {
    RedisTransport::connect(config(url)).await.unwrap()
}

fn numbered(n: u64) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

async fn next_number(subscription: &mut Subscription) -> u64 {
    match tokio::time::timeout(DEADLINE, subscription.next()).await {
        Ok(Some(Delivery::Message(bytes))) => u64::from_be_bytes(bytes[..].try_into().unwrap()),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn wait_health(health: &mut watch::Receiver<TransportHealth>, connected: bool) {
    tokio::time::timeout(DEADLINE, health.wait_for(|h| h.is_connected() == connected))
        .await
        .expect("health did not change within the deadline")
        .unwrap();
}

/// A log sink the test reads back.
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
    let captured = Captured::default();
    let writer = captured.clone();
    let _logs = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
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

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("redis transport connected"), "{logs}");
    assert!(logs.contains("redis connection lost"), "{logs}");
    assert!(logs.contains("<redacted>@127.0.0.1"), "{logs}");
    for secret in ["right-pass", "wrong-pass"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }
}
