//! gRPC rate streams as a test reads them.

use std::time::Duration;

use fxcast_proto::v1::{
    Rate, StreamRatesRequest, StreamRatesResponse, rate_service_client::RateServiceClient,
    stream_rates_response::Event,
};
use tonic::{Status, Streaming};

use crate::Authed;

/// Opens a rate stream with `request`, or panics.
pub async fn stream_rates(
    client: &mut RateServiceClient<Authed>,
    request: StreamRatesRequest,
) -> Streaming<StreamRatesResponse> {
    client.stream_rates(request).await.unwrap().into_inner()
}

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

/// The status that ends `stream` within `within`, skipping the messages
/// before it; panics if the stream lasts longer or ends without a status.
pub async fn end_status<T>(stream: &mut Streaming<T>, within: Duration) -> Status {
    loop {
        match tokio::time::timeout(within, stream.message())
            .await
            .expect("the stream did not end in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    }
}
