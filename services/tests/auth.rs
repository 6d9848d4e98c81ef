//! Authentication and authorisation through the real gRPC clients: every
//! refusal has the exact status code and a clear message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fxcast_proto::v1::{
    GetLatestRateRequest, IssueTokenRequest, ListSymbolsRequest, PublishRateRequest,
    RevokeTokenRequest, StreamOrderEventsRequest, StreamRatesRequest, WatchRevocationsRequest,
    order_service_client::OrderServiceClient, rate_service_client::RateServiceClient,
    token_service_client::TokenServiceClient,
};
use fxcast_services::{Config, FeedKind, auth::keys::KeyFile};
use fxcast_testkit::{ALL_SCOPES, Bearer, Stack, next_rate};
use tonic::{Code, Status};

async fn quiet() -> Stack {
    let server = Stack::quiet(&["USD_JPY", "EUR_USD"]).await;
    server.publish("USD_JPY", "151.100", "151.110").await;
    server.publish("EUR_USD", "1.08500", "1.08510").await;
    server
}

async fn latest_with(server: &Stack, token: &str) -> Result<(), Status> {
    let mut client = RateServiceClient::new(server.authed_channel(token).await);
    client
        .get_latest_rate(GetLatestRateRequest {
            symbol: "USD_JPY".into(),
        })
        .await
        .map(|_| ())
}

fn assert_status(result: Result<(), Status>, code: Code, message: &str) {
    let status = result.expect_err("call should have been refused");
    assert_eq!((status.code(), status.message()), (code, message));
}

/// Signs arbitrary claims with the server's own active key.
fn sign(server: &Stack, claims: serde_json::Value) -> String {
    let file = KeyFile::load(&server.data_dir.join("signing-keys.json")).unwrap();
    let key = file.active();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    let secret = key.secret().unwrap();
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret).unwrap(),
    )
    .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn bad_credentials_are_unauthenticated_with_a_reason() {
    let server = quiet().await;

    let mut anonymous = RateServiceClient::new(server.channel().await);
    let err = anonymous
        .get_latest_rate(GetLatestRateRequest {
            symbol: "USD_JPY".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::Unauthenticated,
            "missing credentials: send `authorization: Bearer <token>`"
        )
    );

    assert_status(
        latest_with(&server, "garbage").await,
        Code::Unauthenticated,
        "malformed token",
    );

    let good = server.token("alice", ALL_SCOPES);
    // Same key id and claims, signed with a secret that is not the server's.
    let kid = jsonwebtoken::decode_header(&good).unwrap().kid.unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid);
    let claims = serde_json::json!({"iss": "fxcast", "sub": "alice", "scope": ALL_SCOPES, "jti": "f1", "iat": now(), "exp": now() + 60});
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&[7u8; 32]).unwrap(),
    )
    .unwrap();
    assert_status(
        latest_with(&server, &forged).await,
        Code::Unauthenticated,
        "invalid token signature",
    );

    let other = Stack::quiet(&["USD_JPY"]).await;
    let foreign = other.token("alice", ALL_SCOPES);
    assert_status(
        latest_with(&server, &foreign).await,
        Code::Unauthenticated,
        "token signed with an unknown key",
    );

    let expired = sign(
        &server,
        serde_json::json!({"iss": "fxcast", "sub": "alice", "scope": ALL_SCOPES, "jti": "x1", "iat": now() - 100, "exp": now() - 10}),
    );
    assert_status(
        latest_with(&server, &expired).await,
        Code::Unauthenticated,
        "token expired",
    );

    let api_key = server.api_key();
    assert_status(
        latest_with(&server, &api_key).await,
        Code::Unauthenticated,
        "the API key only issues tokens: call TokenService/IssueToken (or POST /v1/tokens) and use the token",
    );

    // A correct token passes; the refusals above never echo credentials.
    latest_with(&server, &good).await.unwrap();
}

#[tokio::test]
async fn malformed_authorization_headers_are_refused() {
    let server = quiet().await;
    for header in ["Basic abc", "Bearer", "Bearer ", "token-without-scheme"] {
        let channel =
            fxcast_testkit::authed(server.channel().await, Bearer::header(header).unwrap());
        let err = RateServiceClient::new(channel)
            .get_latest_rate(GetLatestRateRequest {
                symbol: "USD_JPY".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{header}");
        assert_eq!(
            err.message(),
            "malformed authorization header: expected `Bearer <token>`",
            "{header}"
        );
    }
}

#[tokio::test]
async fn scopes_limit_what_a_token_can_do() {
    let server = quiet().await;
    let mut usd_only = server.client_as("bob", "rates:subscribe=USD_JPY").await;

    let err = usd_only
        .get_latest_rate(GetLatestRateRequest {
            symbol: "EUR_USD".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "this token may not read rates of EUR_USD (needs rates:subscribe=EUR_USD or rates:subscribe=*)"
    );
    let request = StreamRatesRequest {
        symbols: vec!["USD_JPY".into(), "EUR_USD".into()],
        ..Default::default()
    };
    let err = usd_only.stream_rates(request).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Without a symbol list, a stream carries exactly what the token may see.
    let mut stream = usd_only
        .stream_rates(StreamRatesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_rate(&mut stream).await.symbol, "USD_JPY");
    server.publish("EUR_USD", "1.08600", "1.08610").await;
    let usd = server.publish("USD_JPY", "151.200", "151.210").await;
    assert_eq!(
        next_rate(&mut stream).await,
        usd,
        "EUR_USD must not leak into a USD_JPY-only stream"
    );

    let symbols = usd_only
        .list_symbols(ListSymbolsRequest {})
        .await
        .unwrap()
        .into_inner()
        .symbols;
    assert_eq!(
        symbols
            .iter()
            .map(|s| s.symbol.as_str())
            .collect::<Vec<_>>(),
        ["USD_JPY"]
    );

    let publish = PublishRateRequest {
        symbol: "USD_JPY".into(),
        bid: "1".into(),
        ask: "2".into(),
        source_time: None,
    };
    let err = usd_only.publish_rate(publish.clone()).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::PermissionDenied,
            "this token lacks the rates:publish scope"
        )
    );

    let mut orders_only = server.client_as("carol", "orders:place").await;
    let err = orders_only
        .stream_rates(StreamRatesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::PermissionDenied,
            "this token has no rates:subscribe scope"
        )
    );

    let mut publisher = server.client_as("desk", "rates:publish").await;
    publisher.publish_rate(publish).await.unwrap();
}

#[tokio::test]
async fn issuing_tokens_needs_the_api_key_or_the_issue_scope() {
    let server = quiet().await;
    let request = |scopes: &[&str], ttl: Option<u64>| IssueTokenRequest {
        subject: "alice".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl: ttl.map(|s| prost_types::Duration {
            seconds: s as i64,
            nanos: 0,
        }),
    };

    let mut admin = TokenServiceClient::new(server.authed_channel(&server.api_key()).await);
    let issued = admin
        .issue_token(request(&["rates:subscribe=USD_JPY"], Some(600)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.subject, "alice");
    assert_eq!(issued.scopes, ["rates:subscribe=USD_JPY"]);
    let expires = issued.expires_at.unwrap().seconds as u64;
    assert!(
        (now() + 599..=now() + 601).contains(&expires),
        "expiry {expires} is not ~10 min away"
    );
    latest_with(&server, &issued.token).await.unwrap();

    let default_ttl = admin
        .issue_token(request(&["orders:place"], None))
        .await
        .unwrap()
        .into_inner();
    let expires = default_ttl.expires_at.unwrap().seconds as u64;
    assert!(
        (now() + 899..=now() + 901).contains(&expires),
        "default TTL should be 15 min"
    );

    let err = admin
        .issue_token(request(&["orders:place"], Some(25 * 3600)))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::InvalidArgument,
            "ttl 1day 1h is above the maximum of 1day"
        )
    );
    let err = admin
        .issue_token(request(&["orders:fly"], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("scopes: invalid scope \"orders:fly\""),
        "{}",
        err.message()
    );
    let err = admin
        .issue_token(IssueTokenRequest {
            subject: "a b".into(),
            ..request(&["orders:place"], None)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("subject \"a b\" is invalid"),
        "{}",
        err.message()
    );

    // Without credentials (anonymous tokens are off by default).
    let mut nobody = TokenServiceClient::new(server.channel().await);
    let err = nobody
        .issue_token(request(&["orders:place"], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A token without tokens:issue cannot issue; one with it cannot exceed itself.
    let mut plain = TokenServiceClient::new(
        server
            .authed_channel(&server.token("bob", ALL_SCOPES))
            .await,
    );
    let err = plain
        .issue_token(request(&["orders:place"], None))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::PermissionDenied,
            "this token lacks the tokens:issue scope"
        )
    );
    let mut delegate = TokenServiceClient::new(
        server
            .authed_channel(&server.token("portal", "tokens:issue rates:subscribe=USD_JPY"))
            .await,
    );
    delegate
        .issue_token(request(&["rates:subscribe=USD_JPY"], Some(60)))
        .await
        .unwrap();
    let err = delegate
        .issue_token(request(&["rates:subscribe=*"], Some(60)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "cannot issue scopes \"rates:subscribe=*\": the caller only has \"tokens:issue rates:subscribe=USD_JPY\""
    );
}

#[tokio::test]
async fn revoked_tokens_are_refused_at_once() {
    let server = quiet().await;
    let mut admin = TokenServiceClient::new(server.authed_channel(&server.api_key()).await);
    let issued = server
        .core
        .authority()
        .issue("alice", ALL_SCOPES.parse().unwrap(), None)
        .unwrap();
    latest_with(&server, &issued.token).await.unwrap();
    admin
        .revoke_token(RevokeTokenRequest {
            token_id: issued.token_id.clone(),
        })
        .await
        .unwrap();
    assert_status(
        latest_with(&server, &issued.token).await,
        Code::Unauthenticated,
        "token revoked",
    );

    let mut nobody = TokenServiceClient::new(server.channel().await);
    let err = nobody
        .revoke_token(RevokeTokenRequest {
            token_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = admin
        .revoke_token(RevokeTokenRequest {
            token_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let server = quiet().await;
    let token = sign(
        &server,
        serde_json::json!({"iss": "fxcast", "sub": "alice", "scope": "rates:subscribe=*", "jti": "short", "iat": now(), "exp": now() + 1}),
    );
    let mut client = RateServiceClient::new(server.authed_channel(&token).await);
    let request = StreamRatesRequest {
        symbols: vec!["USD_JPY".into()],
        ..Default::default()
    };
    let mut stream = client.stream_rates(request).await.unwrap().into_inner();
    next_rate(&mut stream).await;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("stream outlived its token")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "token expired; reconnect with a fresh token and resume_after to continue"
    );
}

/// The status that ends `stream`, skipping the messages before it.
async fn end_status<T>(stream: &mut tonic::Streaming<T>) -> Status {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream outlived its credential")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(status) => break status,
        }
    }
}

#[tokio::test]
async fn revoking_a_token_ends_its_open_streams_at_once() {
    let server = quiet().await;
    let issued = server
        .core
        .authority()
        .issue("alice", ALL_SCOPES.parse().unwrap(), None)
        .unwrap();
    let other = server.token("bob", ALL_SCOPES);
    let channel = server.authed_channel(&issued.token).await;
    let mut rates = RateServiceClient::new(channel.clone())
        .stream_rates(StreamRatesRequest {
            symbols: vec!["USD_JPY".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    next_rate(&mut rates).await;
    let mut orders = OrderServiceClient::new(channel)
        .stream_order_events(StreamOrderEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut bobs = RateServiceClient::new(server.authed_channel(&other).await)
        .stream_rates(StreamRatesRequest {
            symbols: vec!["USD_JPY".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    next_rate(&mut bobs).await;

    let mut admin = TokenServiceClient::new(server.authed_channel(&server.api_key()).await);
    admin
        .revoke_token(RevokeTokenRequest {
            token_id: issued.token_id.clone(),
        })
        .await
        .unwrap();

    let status = end_status(&mut rates).await;
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "token revoked; reconnect with another token and resume_after to continue"
        )
    );
    let status = end_status(&mut orders).await;
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "token revoked; reconnect with another token, then reload with ListOrders"
        )
    );
    // Another token's stream goes on.
    let published = server.publish("USD_JPY", "151.200", "151.210").await;
    loop {
        if next_rate(&mut bobs).await.sequence == published.sequence {
            break;
        }
    }
}

#[tokio::test]
async fn an_order_event_stream_ends_when_its_token_expires() {
    let server = quiet().await;
    let token = sign(
        &server,
        serde_json::json!({"iss": "fxcast", "sub": "alice", "scope": "orders:read", "jti": "short-orders", "iat": now(), "exp": now() + 1}),
    );
    let mut stream = OrderServiceClient::new(server.authed_channel(&token).await)
        .stream_order_events(StreamOrderEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let status = end_status(&mut stream).await;
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::Unauthenticated,
            "token expired; reconnect with a fresh token, then reload with ListOrders"
        )
    );
}

#[tokio::test]
async fn watch_revocations_sends_those_in_force_then_each_new_one() {
    let server = quiet().await;
    let authority = server.core.authority();
    let earlier = authority
        .issue("alice", "orders:read".parse().unwrap(), None)
        .unwrap();
    authority.revoke(&earlier.token_id).unwrap();

    // Needs tokens:issue.
    let mut reader = TokenServiceClient::new(
        server
            .authed_channel(&server.token("carol", "rates:subscribe=*"))
            .await,
    );
    let err = reader
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut admin = TokenServiceClient::new(server.authed_channel(&server.api_key()).await);
    let mut watch = admin
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.token_id, earlier.token_id);
    let lapses = first.expires_at.unwrap().seconds as u64;
    assert!(lapses > now(), "a revocation in force lapses in the future");

    let later = authority
        .issue("bob", "orders:read".parse().unwrap(), None)
        .unwrap();
    admin
        .revoke_token(RevokeTokenRequest {
            token_id: later.token_id.clone(),
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the new revocation arrives")
        .unwrap()
        .unwrap();
    assert_eq!(next.token_id, later.token_id);
}

#[tokio::test]
async fn loopback_browsers_get_rate_limited_anonymous_tokens_when_allowed() {
    let mut config = Config {
        feed: FeedKind::None,
        symbols: vec!["USD_JPY".into()],
        ..Default::default()
    };
    config.auth.anonymous_tokens = true;
    config.auth.anonymous_per_minute = 3;
    let server = Stack::start(config).await;
    server.publish("USD_JPY", "151.100", "151.110").await;
    let mut nobody = TokenServiceClient::new(server.channel().await);
    let mut subjects = Vec::new();
    for _ in 0..3 {
        let issued = nobody
            .issue_token(IssueTokenRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(issued.subject.starts_with("anon-"), "{}", issued.subject);
        assert_eq!(
            issued.scopes,
            ["rates:subscribe=*", "orders:place", "orders:read"]
        );
        latest_with(&server, &issued.token).await.unwrap();
        subjects.push(issued.subject);
    }
    subjects.dedup();
    assert_eq!(subjects.len(), 3, "each browser gets its own subject");
    let err = nobody
        .issue_token(IssueTokenRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        err.message(),
        "too many anonymous tokens for 127.0.0.1: at most 3 per minute"
    );
}

#[tokio::test]
async fn an_issued_token_never_outlives_the_token_that_issued_it() {
    let server = quiet().await;
    let issuer = server
        .core
        .authority()
        .issue(
            "desk",
            "tokens:issue rates:subscribe=*".parse().unwrap(),
            Some(Duration::from_secs(300)),
        )
        .unwrap();
    let issuer_expiry = issuer
        .expires_at
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut tokens = TokenServiceClient::new(server.authed_channel(&issuer.token).await);
    let err = tokens
        .issue_token(IssueTokenRequest {
            subject: "alice".into(),
            scopes: vec!["rates:subscribe=USD_JPY".into()],
            ttl: Some(fxcast_proto::Duration {
                seconds: 600,
                nanos: 0,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::InvalidArgument,
            "ttl would outlive the issuing token; ask for a shorter ttl"
        )
    );
    // No ttl asked: the 15-minute default is shortened to the issuer's life.
    let issued = tokens
        .issue_token(IssueTokenRequest {
            subject: "alice".into(),
            scopes: vec!["rates:subscribe=USD_JPY".into()],
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner();
    let expiry = issued.expires_at.unwrap().seconds as u64;
    assert!(
        expiry <= issuer_expiry,
        "issued token expires at {expiry}, after its issuer ({issuer_expiry})"
    );
    assert!(expiry + 5 >= issuer_expiry, "and not much earlier");
}

#[tokio::test]
async fn a_sub_second_ttl_is_kept_to_the_millisecond() {
    let server = quiet().await;
    let mut admin = TokenServiceClient::new(server.authed_channel(&server.api_key()).await);
    let ttl = Duration::from_millis(1_300);
    let before = SystemTime::now();
    let issued = admin
        .issue_token(IssueTokenRequest {
            subject: "alice".into(),
            scopes: vec!["rates:subscribe=USD_JPY".into()],
            ttl: Some(fxcast_proto::Duration {
                seconds: 1,
                nanos: 300_000_000,
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let after = SystemTime::now();
    let expires_at = SystemTime::try_from(issued.expires_at.unwrap()).unwrap();
    // Issued between `before` and `after`, it lives exactly its TTL (to the
    // millisecond it is kept at): not cut or stretched to whole seconds.
    let slack = Duration::from_millis(1);
    assert!(
        expires_at + slack >= before + ttl && expires_at <= after + ttl + slack,
        "expires {:?} after the request started and {:?} after it ended, for a ttl of {ttl:?}",
        expires_at.duration_since(before).unwrap(),
        expires_at.duration_since(after).unwrap_or_default()
    );
    latest_with(&server, &issued.token).await.unwrap();
    // And it ends then, not at the next whole second.
    let left = expires_at.duration_since(SystemTime::now()).unwrap();
    tokio::time::sleep(left + Duration::from_millis(20)).await;
    assert_status(
        latest_with(&server, &issued.token).await,
        Code::Unauthenticated,
        "token expired",
    );
}
