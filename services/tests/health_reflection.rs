//! Health and reflection work as grpcurl and grpc-health-probe expect.

use fxcast_testkit::Stack;
use tokio_stream::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn health_reports_serving() {
    let server = Stack::quiet(&["USD_JPY"]).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "fxcast.v1.RateService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            response.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
    let err = health
        .check(HealthCheckRequest {
            service: "nope.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// The first answer of `server`'s reflection service in `version` (`v1`
/// or `v1alpha`, whose types differ) to `message`.
macro_rules! ask {
    ($version:ident, $server:expr, $message:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        };
        let mut client = ServerReflectionClient::new($server.channel().await);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some($message),
        };
        let responses = client.server_reflection_info(tokio_stream::once(request));
        let response = responses.await.unwrap().into_inner().next().await;
        response.unwrap().unwrap()
    }};
}

/// The names of the services `server`'s reflection in `version` lists.
macro_rules! services {
    ($version:ident, $server:expr) => {{
        use tonic_reflection::pb::$version::{
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let response = ask!(
            $version,
            $server,
            MessageRequest::ListServices(String::new())
        );
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection response {response:?}");
        };
        list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
    }};
}

#[tokio::test]
async fn reflection_v1_lists_every_service() {
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = Stack::quiet(&["USD_JPY"]).await;
    let names = services!(v1, server);
    for expected in [
        "fxcast.v1.RateService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }

    // The RateService schema is served, so grpcurl can build requests.
    let symbol = MessageRequest::FileContainingSymbol("fxcast.v1.RateService".into());
    let response = ask!(v1, server, symbol);
    assert!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
}

#[tokio::test]
async fn reflection_v1alpha_is_served_for_older_tools() {
    let server = Stack::quiet(&["USD_JPY"]).await;
    let names = services!(v1alpha, server);
    assert!(
        names.iter().any(|n| n == "fxcast.v1.RateService"),
        "{names:?}"
    );
}
