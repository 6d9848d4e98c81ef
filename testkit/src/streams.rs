//! gRPC rate streams as a test reads them.

use std::time::Duration;

use fxcast_proto::v1::{
    GetLatestRateRequest, PublishRateRequest, Rate, StreamRatesRequest, StreamRatesResponse,
    rate_service_client::RateServiceClient, stream_rates_response::Event,
};
use tonic::{Status, Streaming};

use crate::{Authed, next_within};

/// The latest rate of `symbol`.
pub async fn latest_rate(
    client: &mut RateServiceClient<Authed>,
    symbol: &str,
) -> Result<Rate, Status> {
    let request = GetLatestRateRequest {
        symbol: symbol.into(),
    };
    Ok(client.get_latest_rate(request).await?.into_inner())
}

/// Publishes `bid`/`ask` for `symbol` through PublishRate.
pub async fn publish_rate(
    client: &mut RateServiceClient<Authed>,
    symbol: &str,
    bid: &str,
    ask: &str,
) -> Result<Rate, Status> {
    let request = PublishRateRequest {
        symbol: symbol.into(),
        bid: bid.into(),
        ask: ask.into(),
        source_time: None,
    };
    Ok(client.publish_rate(request).await?.into_inner())
}

/// Opens a stream of `symbols` from their latest rates, or panics.
pub async fn stream_symbols(
    client: &mut RateServiceClient<Authed>,
    symbols: &[&str],
) -> Streaming<StreamRatesResponse> {
    let request = StreamRatesRequest {
        symbols: symbols.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    stream_rates(client, request).await
}

/// Opens a rate stream with `request`, or panics.
pub async fn stream_rates(
    client: &mut RateServiceClient<Authed>,
    request: StreamRatesRequest,
) -> Streaming<StreamRatesResponse> {
    client.stream_rates(request).await.unwrap().into_inner()
}

/// Next message of any gRPC stream within 10 s, or panic.
pub async fn next_message<T>(stream: &mut Streaming<T>) -> T {
    next_message_within(stream, Duration::from_secs(10)).await
}

/// Next message of any gRPC stream within `within`, or panic.
pub async fn next_message_within<T>(stream: &mut Streaming<T>, within: Duration) -> T {
    next_within(stream, within, "no stream message in time")
        .await
        .expect("stream failed")
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
