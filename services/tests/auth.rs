//! Authentication and authorisation through the real gRPC clients: every
//! refusal has the exact status code and a clear message.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fxcast_proto::v1::{
    GetLatestRateRequest, IssueTokenRequest, ListSymbolsRequest, OrderEvent, PublishRateRequest,
    RevokeTokenRequest, StreamOrderEventsRequest, StreamRatesRequest, StreamRatesResponse,
    WatchRevocationsRequest, order_service_client::OrderServiceClient,
    rate_service_client::RateServiceClient, token_service_client::TokenServiceClient,
};
use fxcast_services::{Config, FeedKind, auth::keys::KeyFile};
use fxcast_testkit::{ALL_SCOPES, Authed, Bearer, Stack, end_status, next_rate, stream_rates};
use tonic::{Code, Status, Streaming};

async fn quiet() -> Stack {
    let server = Stack::quiet(&["USD_JPY", "EUR_USD"]).await;
    server.publish("USD_JPY", "151.100", "151.110").await;
    server.publish("EUR_USD", "1.08500", "1.08510").await;
    server
}

fn latest(symbol: &str) -> GetLatestRateRequest {
    GetLatestRateRequest {
        symbol: symbol.into(),
    }
}

async fn latest_with(server: &Stack, token: &str) -> Result<(), Status> {
    let mut client = RateServiceClient::new(server.authed_channel(token).await);
    client.get_latest_rate(latest("USD_JPY")).await.map(|_| ())
}

fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, message: &str) {
    let status = result.expect_err("call should have been refused");
    assert_eq!((status.code(), status.message()), (code, message));
}

/// A TokenService client sending `credential`.
async fn tokens_with(server: &Stack, credential: &str) -> TokenServiceClient<Authed> {
    TokenServiceClient::new(server.authed_channel(credential).await)
}

/// A TokenService client sending the API key.
async fn admin(server: &Stack) -> TokenServiceClient<Authed> {
    tokens_with(server, &server.api_key()).await
}

fn revoke(token_id: &str) -> RevokeTokenRequest {
    RevokeTokenRequest {
        token_id: token_id.into(),
    }
}

/// Tokens for "alice" with `scopes`, living `ttl`.
fn issue(scopes: &[&str], ttl: Option<fxcast_proto::Duration>) -> IssueTokenRequest {
    IssueTokenRequest {
        subject: "alice".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl,
    }
}

fn seconds(seconds: i64) -> Option<fxcast_proto::Duration> {
    Some(fxcast_proto::Duration { seconds, nanos: 0 })
}

/// A USD_JPY rate stream over `channel`.
async fn usd_jpy_stream(channel: Authed) -> Streaming<StreamRatesResponse> {
    let request = StreamRatesRequest {
        symbols: vec!["USD_JPY".into()],
        ..Default::default()
    };
    stream_rates(&mut RateServiceClient::new(channel), request).await
}

/// Alice's order events over `channel`.
async fn order_events(channel: Authed) -> Streaming<OrderEvent> {
    let request = StreamOrderEventsRequest::default();
    let mut client = OrderServiceClient::new(channel);
    client
        .stream_order_events(request)
        .await
        .unwrap()
        .into_inner()
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

/// `stream` ends within `within`, UNAUTHENTICATED with `message`.
async fn assert_unauthenticated_end<T>(stream: &mut Streaming<T>, within: Duration, message: &str) {
    let status = end_status(stream, within).await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unauthenticated, message)
    );
}

/// A token of alice's with `scope` and id `jti`, signed by the server, that
/// expires in a second.
fn lives_a_second(server: &Stack, scope: &str, jti: &str) -> String {
    sign(
        server,
        serde_json::json!({"iss": "fxcast", "sub": "alice", "scope": scope, "jti": jti, "iat": now(), "exp": now() + 1}),
    )
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
    let missing = "missing credentials: send `authorization: Bearer <token>`";
    let result = anonymous.get_latest_rate(latest("USD_JPY")).await;
    assert_status(result, Code::Unauthenticated, missing);

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
            .get_latest_rate(latest("USD_JPY"))
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

    let err = usd_only.get_latest_rate(latest("EUR_USD")).await;
    assert_status(
        err,
        Code::PermissionDenied,
        "this token may not read rates of EUR_USD (needs rates:subscribe=EUR_USD or rates:subscribe=*)",
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
    let err = usd_only.publish_rate(publish.clone()).await;
    let lacks_publish = "this token lacks the rates:publish scope";
    assert_status(err, Code::PermissionDenied, lacks_publish);

    let mut orders_only = server.client_as("carol", "orders:place").await;
    let err = orders_only
        .stream_rates(StreamRatesRequest::default())
        .await;
    let no_subscribe = "this token has no rates:subscribe scope";
    assert_status(err, Code::PermissionDenied, no_subscribe);

    let mut publisher = server.client_as("desk", "rates:publish").await;
    publisher.publish_rate(publish).await.unwrap();
}

#[tokio::test]
async fn issuing_tokens_needs_the_api_key_or_the_issue_scope() {
    let server = quiet().await;
    let mut admin = admin(&server).await;
    let issued = admin
        .issue_token(issue(&["rates:subscribe=USD_JPY"], seconds(600)))
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
        .issue_token(issue(&["orders:place"], None))
        .await
        .unwrap()
        .into_inner();
    let expires = default_ttl.expires_at.unwrap().seconds as u64;
    assert!(
        (now() + 899..=now() + 901).contains(&expires),
        "default TTL should be 15 min"
    );

    let err = admin.issue_token(issue(&["orders:place"], seconds(25 * 3600)));
    let too_long = "ttl 1day 1h is above the maximum of 1day";
    assert_status(err.await, Code::InvalidArgument, too_long);
    let fly = issue(&["orders:fly"], None);
    let bad_subject = IssueTokenRequest {
        subject: "a b".into(),
        ..issue(&["orders:place"], None)
    };
    for (request, start) in [
        (fly, "scopes: invalid scope \"orders:fly\""),
        (bad_subject, "subject \"a b\" is invalid"),
    ] {
        let err = admin.issue_token(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(start), "{}", err.message());
    }

    // Without credentials (anonymous tokens are off by default).
    let mut nobody = TokenServiceClient::new(server.channel().await);
    let err = nobody.issue_token(issue(&["orders:place"], None)).await;
    assert_eq!(err.unwrap_err().code(), Code::Unauthenticated);

    // A token without tokens:issue cannot issue; one with it cannot exceed itself.
    let mut plain = tokens_with(&server, &server.token("bob", ALL_SCOPES)).await;
    let err = plain.issue_token(issue(&["orders:place"], None)).await;
    let lacks_issue = "this token lacks the tokens:issue scope";
    assert_status(err, Code::PermissionDenied, lacks_issue);
    let portal = server.token("portal", "tokens:issue rates:subscribe=USD_JPY");
    let mut delegate = tokens_with(&server, &portal).await;
    delegate
        .issue_token(issue(&["rates:subscribe=USD_JPY"], seconds(60)))
        .await
        .unwrap();
    let err = delegate.issue_token(issue(&["rates:subscribe=*"], seconds(60)));
    assert_status(
        err.await,
        Code::PermissionDenied,
        "cannot issue scopes \"rates:subscribe=*\": the caller only has \"tokens:issue rates:subscribe=USD_JPY\"",
    );
}

#[tokio::test]
async fn revoked_tokens_are_refused_at_once() {
    let server = quiet().await;
    let mut admin = admin(&server).await;
    let issued = server.issue("alice", ALL_SCOPES, None);
    latest_with(&server, &issued.token).await.unwrap();
    admin.revoke_token(revoke(&issued.token_id)).await.unwrap();
    assert_status(
        latest_with(&server, &issued.token).await,
        Code::Unauthenticated,
        "token revoked",
    );

    let mut nobody = TokenServiceClient::new(server.channel().await);
    let err = nobody.revoke_token(revoke("x")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = admin.revoke_token(revoke("")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let server = quiet().await;
    let token = lives_a_second(&server, "rates:subscribe=*", "short");
    let mut stream = usd_jpy_stream(server.authed_channel(&token).await).await;
    next_rate(&mut stream).await;
    let expired = "token expired; reconnect with a fresh token and resume_after to continue";
    assert_unauthenticated_end(&mut stream, Duration::from_secs(5), expired).await;
}

#[tokio::test]
async fn revoking_a_token_ends_its_open_streams_at_once() {
    let server = quiet().await;
    let issued = server.issue("alice", ALL_SCOPES, None);
    let other = server.token("bob", ALL_SCOPES);
    let channel = server.authed_channel(&issued.token).await;
    let mut rates = usd_jpy_stream(channel.clone()).await;
    next_rate(&mut rates).await;
    let mut orders = order_events(channel).await;
    let mut bobs = usd_jpy_stream(server.authed_channel(&other).await).await;
    next_rate(&mut bobs).await;

    let mut admin = admin(&server).await;
    admin.revoke_token(revoke(&issued.token_id)).await.unwrap();

    let revoked = "token revoked; reconnect with another token and resume_after to continue";
    assert_unauthenticated_end(&mut rates, Duration::from_secs(10), revoked).await;
    let revoked = "token revoked; reconnect with another token, then reload with ListOrders";
    assert_unauthenticated_end(&mut orders, Duration::from_secs(10), revoked).await;
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
    let token = lives_a_second(&server, "orders:read", "short-orders");
    let mut stream = order_events(server.authed_channel(&token).await).await;
    let expired = "token expired; reconnect with a fresh token, then reload with ListOrders";
    assert_unauthenticated_end(&mut stream, Duration::from_secs(10), expired).await;
}

#[tokio::test]
async fn watch_revocations_sends_those_in_force_then_each_new_one() {
    let server = quiet().await;
    let earlier = server.issue("alice", "orders:read", None);
    server.core.authority().revoke(&earlier.token_id).unwrap();

    // Needs tokens:issue.
    let mut reader = tokens_with(&server, &server.token("carol", "rates:subscribe=*")).await;
    let err = reader
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut admin = admin(&server).await;
    let mut watch = admin
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.token_id, earlier.token_id);
    let lapses = first.expires_at.unwrap().seconds as u64;
    assert!(lapses > now(), "a revocation in force lapses in the future");

    let later = server.issue("bob", "orders:read", None);
    admin.revoke_token(revoke(&later.token_id)).await.unwrap();
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
    let ttl = Some(Duration::from_secs(300));
    let issuer = server.issue("desk", "tokens:issue rates:subscribe=*", ttl);
    let issuer_expiry = issuer
        .expires_at
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut tokens = tokens_with(&server, &issuer.token).await;
    let err = tokens.issue_token(issue(&["rates:subscribe=USD_JPY"], seconds(600)));
    let outlives = "ttl would outlive the issuing token; ask for a shorter ttl";
    assert_status(err.await, Code::InvalidArgument, outlives);
    // No ttl asked: the 15-minute default is shortened to the issuer's life.
    let issued = tokens.issue_token(issue(&["rates:subscribe=USD_JPY"], None));
    let issued = issued.await.unwrap().into_inner();
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
    let mut admin = admin(&server).await;
    let ttl = Duration::from_millis(1_300);
    let before = SystemTime::now();
    let ttl_asked = Some(fxcast_proto::Duration {
        seconds: 1,
        nanos: 300_000_000,
    });
    let issued = admin.issue_token(issue(&["rates:subscribe=USD_JPY"], ttl_asked));
    let issued = issued.await.unwrap().into_inner();
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
