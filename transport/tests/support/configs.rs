//! The NATS and Redis configs the backend tests connect with: fast
//! retries, pings and short deadlines, so outages are short.

use std::time::Duration;

use fxcast_transport::{BackoffPolicy, nats::NatsConfig, redis::RedisConfig};

/// How long a request may take before it fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnects 20 ms after a loss, backing off to 250 ms at most.
fn reconnect() -> BackoffPolicy {
    BackoffPolicy::new(Duration::from_millis(20), Duration::from_millis(250))
}

/// A NATS config for `url` with fast retries and a short deadline.
pub(crate) fn nats_config(url: String) -> NatsConfig {
    NatsConfig {
        url,
        reconnect: reconnect(),
        request_timeout: REQUEST_TIMEOUT,
        ..NatsConfig::default()
    }
}

/// A Redis config for `url` with fast retries and pings and a short
/// deadline.
pub(crate) fn redis_config(url: String) -> RedisConfig {
    RedisConfig {
        url,
        heartbeat: Duration::from_millis(250),
        reconnect: reconnect(),
        request_timeout: REQUEST_TIMEOUT,
        ..RedisConfig::default()
    }
}
