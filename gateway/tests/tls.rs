//! TLS on both listeners of the stack `fxcast serve` runs (`--tls-cert`,
//! `--tls-key`, `--tls-client-ca`): gRPC through tonic's TLS client, REST
//! through reqwest, the WebSocket through tokio-tungstenite, each trusting
//! only a test CA; plaintext refused; certificates rotated on disk served by
//! the next handshake; client certificates required on gRPC.

use std::{path::Path, time::Duration};

use fxcast_gateway::GatewayConfig;
use fxcast_listener::{Tls, TlsFiles, tls};
use fxcast_proto::v1::{GetLatestRateRequest, rate_service_client::RateServiceClient};
use fxcast_services::{Config, FeedKind};
use fxcast_testkit::{
    ALL_SCOPES, Bearer, Ca, Leaf, Stack, TlsDir, json_of, next_json, subscribe, wait_ready_at,
};
use tonic::transport::Endpoint;

/// The listener TLS of `dir`'s certificate.
fn tls(dir: &TlsDir, client_ca: Option<&Path>, alpn: &[&str]) -> Tls {
    Tls::load(
        TlsFiles {
            cert: dir.cert(),
            key: dir.key(),
            client_ca: client_ca.map(Path::to_owned),
        },
        alpn,
    )
    .unwrap()
}

/// The trading desk of the gateway tests, with TLS on both listeners.
async fn desk(files: &TlsDir, client_ca: Option<&Path>) -> Stack {
    let stack = Stack::start_with(
        Config {
            feed: FeedKind::None,
            symbols: vec!["USD_JPY".into(), "EUR_USD".into()],
            tls: Some(tls(files, client_ca, tls::ALPN_GRPC)),
            ..Default::default()
        },
        GatewayConfig {
            anonymous_tokens: true,
            tls: Some(tls(files, None, tls::ALPN_HTTP)),
            ..Default::default()
        },
    )
    .await;
    stack.publish("USD_JPY", "151.100", "151.110").await;
    stack.publish("EUR_USD", "1.08500", "1.08510").await;
    stack
}

/// The latest USD_JPY over gRPC with TLS trusting `ca`, presenting
/// `identity` if given.
async fn latest_over_tls(
    stack: &Stack,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<String, String> {
    let channel = Endpoint::from_shared(format!("https://{}", stack.addr))
        .unwrap()
        .tls_config(ca.grpc_client(identity))
        .unwrap()
        .connect()
        .await
        .map_err(|err| format!("connect: {err:?}"))?;
    let token = stack.token("tester", ALL_SCOPES);
    let mut client = RateServiceClient::new(fxcast_proto::authed(
        channel,
        Bearer::token(&token).unwrap(),
    ));
    let rate = client
        .get_latest_rate(GetLatestRateRequest {
            symbol: "USD_JPY".into(),
        })
        .await
        .map_err(|status| format!("call: {status:?}"))?
        .into_inner();
    Ok(rate.symbol)
}

#[tokio::test]
async fn grpc_rest_and_websocket_run_over_tls_and_plaintext_is_refused() {
    let (ca, files) = Ca::for_localhost("fxcast test CA");
    let stack = desk(&files, None).await;

    assert_eq!(latest_over_tls(&stack, &ca, None).await.unwrap(), "USD_JPY");

    // REST, after the gateway is ready, through a client trusting only the CA.
    let https = ca.https_client();
    let base = format!("https://localhost:{}", stack.http.port());
    wait_ready_at(&https, &base).await;
    let token = stack.token("tester", ALL_SCOPES);
    let rate = json_of(
        https
            .get(format!("{base}/v1/rates/USD_JPY"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(rate["symbol"], "USD_JPY", "{rate}");
    assert_eq!(rate["bid"], "151.100", "{rate}");

    // The WebSocket as wss://.
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!(
            "wss://localhost:{}/v1/stream?token={token}",
            stack.http.port()
        ),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(ca.rustls_client())),
    )
    .await
    .unwrap();
    subscribe(&mut ws, &["USD_JPY"]).await;
    let rate = next_json(&mut ws).await;
    assert_eq!(rate["symbol"], "USD_JPY", "{rate}");

    // Plaintext on either port gets no service.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let refused = plain.get(stack.url("/readyz")).send().await;
    assert!(refused.is_err(), "plaintext HTTP was served: {refused:?}");
    let plain_grpc = Endpoint::from_shared(stack.grpc_url())
        .unwrap()
        .connect()
        .await;
    let refused = match plain_grpc {
        Err(err) => format!("{err:?}"),
        Ok(channel) => RateServiceClient::new(channel)
            .list_symbols(fxcast_proto::v1::ListSymbolsRequest::default())
            .await
            .expect_err("plaintext gRPC was served")
            .code()
            .to_string(),
    };
    // Refused by the transport (no TLS), never answered by a service.
    assert!(
        !refused.contains("Unauthenticated") && !refused.contains("PermissionDenied"),
        "{refused}"
    );

    // A certificate from another CA is not trusted.
    let stranger = Ca::new("another CA");
    let err = latest_over_tls(&stack, &stranger, None).await.unwrap_err();
    assert!(err.starts_with("connect"), "{err}");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_from_the_next_handshake() {
    let old = Ca::new("old CA");
    let new = Ca::new("new CA");
    let files = TlsDir::new(&old.issue(&["localhost"]));
    let stack = desk(&files, None).await;
    latest_over_tls(&stack, &old, None).await.unwrap();

    // A rotation caught half-written (the old certificate, a key that does
    // not parse) is not used: the old certificate stays in force.
    std::fs::write(files.path("key.pem"), "not a key").unwrap();
    latest_over_tls(&stack, &old, None).await.unwrap();

    files.rotate(&new.issue(&["localhost"]));
    latest_over_tls(&stack, &new, None).await.unwrap();
    let err = latest_over_tls(&stack, &old, None).await.unwrap_err();
    assert!(err.starts_with("connect"), "{err}");
    let https = new.https_client();
    https
        .get(format!("https://localhost:{}/healthz", stack.http.port()))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn with_a_client_ca_grpc_requires_a_client_certificate() {
    let (server_ca, files) = Ca::for_localhost("server CA");
    let client_ca = Ca::new("client CA");
    let client_ca_file = files.write("clients.pem", &client_ca.pem());
    let stack = desk(&files, Some(&client_ca_file)).await;

    let without = latest_over_tls(&stack, &server_ca, None).await.unwrap_err();
    // Refused in the handshake (or the connection it closed), not by the
    // auth layer: the token is valid.
    assert!(
        !without.contains("Unauthenticated") && !without.contains("PermissionDenied"),
        "{without}"
    );
    let foreign = Ca::new("foreign client CA").issue(&["client"]);
    latest_over_tls(&stack, &server_ca, Some(&foreign))
        .await
        .unwrap_err();
    let client = client_ca.issue(&["client"]);
    assert_eq!(
        latest_over_tls(&stack, &server_ca, Some(&client))
            .await
            .unwrap(),
        "USD_JPY"
    );
    // The gateway's own listener asks for no client certificate.
    server_ca
        .https_client()
        .get(format!("https://localhost:{}/healthz", stack.http.port()))
        .send()
        .await
        .unwrap();
}

#[test]
fn tls_flags_go_together() {
    let p = |s: &str| Some(std::path::PathBuf::from(s));
    assert!(TlsFiles::from_flags(None, None, None).unwrap().is_none());
    assert!(
        TlsFiles::from_flags(p("c"), p("k"), None)
            .unwrap()
            .is_some()
    );
    for (cert, key, ca) in [
        (p("c"), None, None),
        (None, p("k"), None),
        (None, None, p("ca")),
    ] {
        let err = TlsFiles::from_flags(cert, key, ca).unwrap_err().to_string();
        assert!(err.contains("--tls-"), "{err}");
    }
    let missing = Tls::load(
        TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
        },
        tls::ALPN_HTTP,
    )
    .unwrap_err()
    .to_string();
    assert!(missing.contains("/nonexistent/cert.pem"), "{missing}");
}
