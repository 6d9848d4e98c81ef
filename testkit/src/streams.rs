//! gRPC rate streams as a test reads them.

use std::time::Duration;

use fxcast_proto::v1::{Rate, StreamRatesResponse, stream_rates_response::Event};
use tonic::Streaming;

/// Next message of any gRPC stream within 10 s, or panic.
pub async fn next_message<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("no stream message within 10 s")
        .expect("stream failed")
        .expect("stream ended")
}

/// Next rate stream event within 10 s, or panic.
pub async fn next_event(stream: &mut Streaming<StreamRatesResponse>) -> Event {
    next_message(stream).await.event.expect("empty event")
}

/// Next rate, panicking on a gap.
pub async fn next_rate(stream: &mut Streaming<StreamRatesResponse>) -> Rate {
    match next_event(stream).await {
        Event::Rate(rate) => rate,
        Event::Gap(gap) => panic!("unexpected gap: {gap:?}"),
    }
}
