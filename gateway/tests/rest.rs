//! REST through a real HTTP client: what a web developer sees.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use fxcast_gateway::GatewayConfig;
use fxcast_listener::ListenerConfig;
use fxcast_testkit::{Stack, error_of, json_of};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test]
async fn rates_and_symbols_with_a_browser_token() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let symbols = h.get_json("/v1/symbols", &token).await;
    assert_eq!(symbols["symbols"][0]["symbol"], "EUR_USD");
    assert_eq!(symbols["symbols"][1]["tick_size"], "0.001");

    let rate = h.get_json("/v1/rates/USD_JPY", &token).await;
    assert_eq!(
        (
            rate["bid"].as_str(),
            rate["ask"].as_str(),
            rate["sequence"].as_u64()
        ),
        (Some("151.100"), Some("151.110"), Some(1))
    );
    assert!(rate["publish_time"].as_str().unwrap().ends_with('Z'));

    let rates = h.get_json("/v1/rates", &token).await;
    let names: Vec<_> = rates["rates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["symbol"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["EUR_USD", "USD_JPY"]);
}

#[tokio::test]
async fn bad_input_gets_a_precise_status_and_message() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;

    assert_eq!(
        error_of(h.get("/v1/rates").await).await,
        (
            401,
            "unauthenticated".into(),
            "missing credentials: send `authorization: Bearer <token>` or `?token=<token>`".into()
        )
    );
    assert_eq!(
        error_of(h.get_as("/v1/rates", "garbage").await).await,
        (401, "unauthenticated".into(), "malformed token".into())
    );
    assert_eq!(
        error_of(h.get_as("/v1/rates/NOPE", &token).await).await,
        (
            400,
            "invalid_argument".into(),
            "unknown symbol \"NOPE\" (known: EUR_USD, USD_JPY)".into()
        )
    );
    let usd_only = h.token("bob", "rates:subscribe=USD_JPY");
    let (status, code, _) = error_of(h.get_as("/v1/rates/EUR_USD", &usd_only).await).await;
    assert_eq!((status, code.as_str()), (403, "permission_denied"));
    assert_eq!(
        error_of(h.get("/v1/nowhere").await).await,
        (
            404,
            "not_found".into(),
            "no route for GET \"/v1/nowhere\"".into()
        )
    );

    let post = |body: &str| post_order(&h, &token, body.to_owned());
    let (status, code, message) = error_of(post("{not json").await).await;
    assert_eq!((status, code.as_str()), (400, "malformed_json"));
    assert!(message.starts_with("key must be a string"), "{message}");
    let (status, code, message) = error_of(post(r#"{"client_order_id":"a""#).await).await;
    assert_eq!((status, code.as_str()), (400, "malformed_json"));
    assert!(
        message.starts_with("EOF while parsing an object"),
        "{message}"
    );
    assert_eq!(
        error_of(post(r#" ["a", "USD_JPY"]"#).await).await,
        (
            422,
            "invalid_field".into(),
            "the body must be a JSON object, not an array".into()
        )
    );
    let (status, code, message) = error_of(post("[1,").await).await;
    assert_eq!((status, code.as_str()), (400, "malformed_json"));
    assert!(
        message.starts_with("EOF while parsing a value"),
        "{message}"
    );
    let (status, code, message) = error_of(post(r#"{"client_order_id": 5}"#).await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_field"));
    assert!(
        message.contains("client_order_id: invalid type: integer `5`, expected a string"),
        "{message}"
    );
    let body = r#"{"client_order_id":"a","symbol":"USD_JPY","side":"buy","quantity":"1","price":"1","colour":"red"}"#;
    let (status, _, message) = error_of(post(body).await).await;
    assert_eq!(status, 422);
    assert!(message.contains("unknown field `colour`"), "{message}");
    let (status, code, _) = error_of(
        h.client
            .post(h.url("/v1/orders"))
            .bearer_auth(&token)
            .body("{}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (415, "unsupported_media_type"));
    let huge = format!(r#"{{"client_order_id":"{}"}}"#, "x".repeat(64 * 1024));
    assert_eq!(
        error_of(post_order(&h, &token, huge).await).await,
        (
            413,
            "payload_too_large".into(),
            "the request body is 65558 bytes (Content-Length); at most 16384 are allowed".into()
        )
    );
    let body =
        r#"{"client_order_id":"a","symbol":"USD_JPY","side":"hold","quantity":"1","price":"1"}"#;
    assert_eq!(
        error_of(post(body).await).await,
        (
            400,
            "invalid_argument".into(),
            "side must be \"buy\" or \"sell\", got \"hold\"".into()
        )
    );
    let maybe = h.get_as("/v1/orders?status=maybe", &token).await;
    let (status, _, message) = error_of(maybe).await;
    assert_eq!(
        (status, message.as_str()),
        (
            400,
            "status must be filled, rejected or pending, got \"maybe\""
        )
    );
}

#[tokio::test]
async fn orders_fill_and_reject_through_rest() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let place = async |body: Value| json_of(h.post_as("/v1/orders", &token, &body).await).await;

    let filled = place(json!({"client_order_id": "r1", "symbol": "USD_JPY", "side": "buy", "quantity": "1000", "price": "151.110"})).await;
    assert_eq!(
        (filled["status"].as_str(), filled["fill_price"].as_str()),
        (Some("filled"), Some("151.110")),
        "{filled}"
    );

    let rejected = place(json!({"client_order_id": "r2", "symbol": "USD_JPY", "side": "buy", "quantity": "1000", "price": "140.000"})).await;
    assert_eq!(rejected["status"], "rejected", "{rejected}");
    assert_eq!(rejected["reject_reason"], "price_moved");
    assert!(
        rejected["message"].as_str().unwrap().contains("151.110"),
        "{rejected}"
    );

    let id = filled["order_id"].as_str().unwrap();
    let again = h.get_json(&format!("/v1/orders/{id}"), &token).await;
    assert_eq!(again, filled);
    let list = h.get_json("/v1/orders?status=rejected", &token).await;
    assert_eq!(list["orders"].as_array().unwrap().len(), 1);
    assert_eq!(list["orders"][0]["client_order_id"], "r2");

    // Time filters: both orders were created before now and after an hour ago.
    let list_at = async |query: String| h.get_as(&format!("/v1/orders?{query}"), &token).await;
    let now = humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(1));
    let hour_ago =
        humantime::format_rfc3339(std::time::SystemTime::now() - Duration::from_secs(3600));
    let ids = |list: Value| -> Vec<String> {
        list["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["client_order_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let recent = list_at(format!("created_after={hour_ago}&created_before={now}")).await;
    assert_eq!(ids(json_of(recent).await), ["r2", "r1"], "newest first");
    let future = json_of(list_at(format!("created_after={now}")).await).await;
    assert!(ids(future).is_empty());
    let (status, _, message) = error_of(list_at("created_after=yesterday".into()).await).await;
    assert_eq!(status, 400);
    assert!(
        message.starts_with(
            "created_after must be an RFC 3339 time such as 2026-11-29T09:00:00Z, got \"yesterday\""
        ),
        "{message}"
    );

    // Another browser cannot read it, nor tell it exists: by id as by
    // client_order_id, it has no such order.
    let other = h.browser_token().await;
    let response = h.get_as(&format!("/v1/orders/{id}"), &other).await;
    assert_eq!(
        error_of(response).await,
        (
            404,
            "not_found".into(),
            format!("you have no order with order_id \"{id}\"")
        )
    );
}

#[tokio::test]
async fn tokens_anonymous_only_when_allowed_and_with_the_api_key() {
    let closed = Stack::desk_with(GatewayConfig::default()).await;
    let (status, code, _) = error_of(closed.post("/v1/tokens").await).await;
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    let issue = async |body: Value| closed.post_as("/v1/tokens", &closed.api_key(), &body).await;
    let issued = issue(
        json!({"subject": "alice", "scopes": ["rates:subscribe=USD_JPY"], "ttl_seconds": 600}),
    );
    let issued = json_of(issued.await).await;
    assert_eq!(issued["subject"], "alice");
    assert_eq!(issued["scopes"], json!(["rates:subscribe=USD_JPY"]));
    let response =
        issue(json!({"subject": "alice", "scopes": ["orders:place"], "ttl_seconds": 90000})).await;
    assert_eq!(
        error_of(response).await,
        (
            400,
            "invalid_argument".into(),
            "ttl 1day 1h is above the maximum of 1day".into()
        )
    );

    let open = Stack::desk_with(GatewayConfig {
        anonymous_tokens: true,
        anonymous_per_minute: 2,
        ..Default::default()
    })
    .await;
    for _ in 0..2 {
        let body = json_of(open.post("/v1/tokens").await).await;
        assert!(body["subject"].as_str().unwrap().starts_with("anon-"));
        assert_eq!(
            body["scopes"],
            json!(["rates:subscribe=*", "orders:place", "orders:read"])
        );
    }
    let (status, code, message) = error_of(open.post("/v1/tokens").await).await;
    assert_eq!((status, code.as_str()), (429, "resource_exhausted"));
    assert_eq!(
        message,
        "too many anonymous tokens for 127.0.0.1: at most 2 per minute"
    );
}

#[tokio::test]
async fn operations_endpoints() {
    let h = Stack::desk().await;
    let health = json_of(h.get("/healthz").await).await;
    assert_eq!(health["status"], "ok");
    let ready = h.get("/readyz").await;
    assert_eq!(ready.status(), 200);

    let doc = json_of(h.get("/openapi.json").await).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/symbols",
        "/v1/rates",
        "/v1/rates/{symbol}",
        "/v1/orders",
        "/v1/orders/{order_id}",
        "/v1/tokens",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(
        doc["components"]["schemas"]["PlaceOrderJson"]["properties"]["client_order_id"].is_object()
    );
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Side"]["enum"],
        json!(["buy", "sell"]),
        "{}",
        schemas["Side"]
    );
    assert_eq!(
        schemas["OrderStatus"]["enum"],
        json!(["filled", "rejected", "pending"])
    );

    let token = h.browser_token().await;
    h.get_as("/v1/rates", &token).await;
    let metrics = h.metrics_text().await;
    assert!(metrics.contains("fxcast_gateway_http_requests_total{method=\"GET\",route=\"/v1/rates\",status=\"200\"} 1"), "{metrics}");
    assert!(metrics.contains("fxcast_gateway_ticks_received_total"));
    assert!(
        metrics.contains("fxcast_gateway_symbol_stale{symbol=\"USD_JPY\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fxcast_gateway_symbol_sequence{symbol=\"USD_JPY\"} 1"),
        "{metrics}"
    );

    let ui = h.get("/").await;
    assert_eq!(ui.headers()["content-type"], "text/html; charset=utf-8");
    assert!(
        ui.text()
            .await
            .unwrap()
            .contains("<script src=\"/app.js\">")
    );

    // Every documented operation exists on the server: no 404 or 405.
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{symbol}", "USD_JPY")
            .replace("{order_id}", "no-such-order");
        for method in item.as_object().unwrap().keys() {
            let method: reqwest::Method = method.to_uppercase().parse().unwrap();
            let mut request = h
                .client
                .request(method.clone(), h.url(&concrete))
                .bearer_auth(&token);
            if concrete == "/v1/rates/stream" {
                request = request.query(&[("symbols", "USD_JPY")]);
            }
            let status = request.send().await.unwrap().status().as_u16();
            assert!(
                status != 404 || concrete.contains("no-such-order"),
                "{method} {path} is documented but not served"
            );
            assert_ne!(status, 405, "{method} {path} is documented but not served");
            operations += 1;
        }
    }
    assert!(operations >= 12, "only {operations} operations documented");
    for path in ["/v1/stream", "/v1/rates/stream"] {
        assert!(
            doc["paths"][path]["get"].is_object(),
            "{path} is not documented"
        );
    }
    // Unknown fields are refused, as the document says.
    assert_eq!(
        schemas["PlaceOrderJson"]["additionalProperties"],
        json!(false)
    );
}

#[tokio::test]
async fn not_ready_until_every_symbol_has_a_rate() {
    let config = fxcast_services::Config {
        feed: fxcast_services::FeedKind::None,
        symbols: vec!["USD_JPY".into(), "EUR_USD".into()],
        ..Default::default()
    };
    let h = Stack::start_with(config, GatewayConfig::default()).await;
    let response = h.get("/readyz").await;
    let (status, code, message) = error_of(response).await;
    assert_eq!(
        (status, code.as_str(), message.as_str()),
        (
            503,
            "not_ready",
            "no rate received yet for EUR_USD, USD_JPY"
        )
    );
    h.publish("USD_JPY", "151.100", "151.110").await;
    h.publish("EUR_USD", "1.08500", "1.08510").await;
    h.wait_ready().await;
}

/// `POST /v1/orders` bearing `token`, `body` sent as is as JSON.
async fn post_order(h: &Stack, token: &str, body: String) -> reqwest::Response {
    let request = h.client.post(h.url("/v1/orders")).bearer_auth(token);
    let request = request.header("content-type", "application/json");
    request.body(body).send().await.unwrap()
}

/// What a raw HTTP/1.1 exchange got back: the status, the headers (names
/// lowercased) and the body, read until the server closed the connection,
/// and how long that took.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
    took: Duration,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn error(&self) -> (u16, &str, &str) {
        (
            self.status,
            self.body["error"]["code"].as_str().unwrap_or_default(),
            self.body["error"]["message"].as_str().unwrap_or_default(),
        )
    }
}

/// Sends `request` as is (no library fixes it up) and reads the answer
/// until the server closes, within 15 s.
async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), socket.read_to_end(&mut answer))
        .await
        .expect("the server neither answered nor closed within 15 s")
        .unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
        took,
    }
}

/// A desk whose HTTP listener waits `header_timeout` for request heads
/// (and bodies).
async fn desk_with_header_timeout(header_timeout: Duration) -> Stack {
    Stack::desk_with(GatewayConfig {
        anonymous_tokens: true,
        connections: ListenerConfig {
            header_timeout,
            ..ListenerConfig::default()
        },
        ..GatewayConfig::default()
    })
    .await
}

/// A raw `POST /v1/orders` from a browser to a desk waiting
/// `header_timeout`, announcing a JSON body of `length` bytes and sending
/// `body`.
async fn raw_order(header_timeout: Duration, length: usize, body: &str) -> RawResponse {
    let h = desk_with_header_timeout(header_timeout).await;
    let token = h.browser_token().await;
    let request = format!(
        "POST /v1/orders HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}"
    );
    raw(h.http, request.as_bytes()).await
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_at_once_with_413() {
    // The body would have 10 s to arrive: the refusal must not wait for it.
    let response = raw_order(Duration::from_secs(10), 20000, "").await;
    let expected = "the request body is 20000 bytes (Content-Length); at most 16384 are allowed";
    assert_eq!(response.error(), (413, "payload_too_large", expected));
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert!(
        response.took < Duration::from_secs(3),
        "answered after {:?}",
        response.took
    );
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_and_the_connection_closed() {
    let timeout = Duration::from_millis(500);
    let response = raw_order(timeout, 100, "{\"client_o").await;
    let expected = "the request body did not arrive within 500ms (10 bytes of 100 received)";
    assert_eq!(response.error(), (408, "request_timeout", expected));
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        response.took >= timeout && response.took < Duration::from_secs(5),
        "answered after {:?}",
        response.took
    );
}

#[tokio::test]
async fn every_error_the_router_produces_is_json() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;

    // 405 keeps its Allow header.
    let response = h.client.post(h.url("/v1/symbols")).send().await.unwrap();
    assert_eq!(
        response.headers()["allow"].to_str().unwrap(),
        "GET,HEAD",
        "{response:?}"
    );
    assert_eq!(
        error_of(response).await,
        (
            405,
            "method_not_allowed".into(),
            "POST is not allowed on \"/v1/symbols\" (allowed: GET,HEAD)".into()
        )
    );

    // A path that is not UTF-8 once decoded.
    let response = h.get_as("/v1/orders/%ff", &token).await;
    assert_eq!(
        error_of(response).await,
        (
            400,
            "invalid_argument".into(),
            "Invalid URL: Invalid UTF-8 in `order_id`".into()
        )
    );

    // 404 for an unknown path; 414 and 431 for heads over the limits, as
    // raw requests (a client library might refuse to send them).
    let response = raw(
        h.http,
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        response.error(),
        (404, "not_found", "no route for GET \"/v2\"")
    );
    let long_path = format!("/v1/rates/{}", "A".repeat(10_000));
    let request = format!("GET {long_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let response = raw(h.http, request.as_bytes()).await;
    assert_eq!(
        response.error(),
        (
            414,
            "uri_too_long",
            "the request URI is 10010 bytes long; at most 8192 are allowed"
        )
    );
    let request = format!(
        "GET /v1/symbols HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(20_000)
    );
    let response = raw(h.http, request.as_bytes()).await;
    assert_eq!(
        response.error(),
        (
            431,
            "header_fields_too_large",
            "the request headers are 20041 bytes in 3 fields; at most 16384 bytes and 100 fields are allowed"
        )
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn unknown_symbols_are_400_everywhere() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let expected = (
        400,
        "invalid_argument".to_owned(),
        "unknown symbol \"XXX\" (known: EUR_USD, USD_JPY)".to_owned(),
    );
    assert_eq!(
        error_of(h.get_as("/v1/rates/XXX", &token).await).await,
        expected
    );
    assert_eq!(
        error_of(h.get_as("/v1/orders?symbol=XXX", &token).await).await,
        expected
    );
    let known = h.get_json("/v1/orders?symbol=USD_JPY", &token).await;
    assert_eq!(known["orders"], json!([]));
}

#[tokio::test]
async fn error_messages_quote_at_most_64_bytes_of_the_input() {
    let h = Stack::desk().await;
    let token = h.browser_token().await;
    let post = |body: String| post_order(&h, &token, body);
    // Through the order service's validation.
    let quantity = "9".repeat(15_000);
    let body = json!({"client_order_id": "q-1", "symbol": "USD_JPY", "side": "buy", "quantity": quantity, "price": "151.110"});
    assert_eq!(
        error_of(post(body.to_string()).await).await,
        (
            400,
            "invalid_argument".into(),
            format!(
                "quantity \"{}\"... (15000 bytes) is not a plain decimal number such as \"1000\"",
                "9".repeat(64)
            )
        )
    );
    // Through serde: an unknown field and a string where a number belongs.
    let field = "f".repeat(10_000);
    let (status, _, message) = error_of(post(format!("{{\"{field}\": 1}}")).await).await;
    assert_eq!(status, 422);
    assert!(
        message.contains(&format!(
            "unknown field `{}`... (10000 bytes)",
            "f".repeat(64)
        )),
        "{message}"
    );
    assert!(message.len() < 500, "{} bytes: {message}", message.len());
    let ttl = "7".repeat(10_000);
    let body = json!({"subject": "a", "scopes": ["orders:read"], "ttl_seconds": ttl});
    let (status, _, message) = error_of(h.post_as("/v1/tokens", &h.api_key(), &body).await).await;
    assert_eq!(status, 422);
    assert!(message.contains("... (10000 bytes)"), "{message}");
    assert!(message.len() < 500, "{} bytes: {message}", message.len());
    // Through the gateway's own checks and a path.
    let path = format!("/v1/orders?status={}", "s".repeat(5_000));
    let (status, _, message) = error_of(h.get_as(&path, &token).await).await;
    assert_eq!(
        (status, message),
        (
            400,
            format!(
                "status must be filled, rejected or pending, got \"{}\"... (5000 bytes)",
                "s".repeat(64)
            )
        )
    );
    let response = h
        .get_as(&format!("/v1/orders/{}", "o".repeat(5_000)), &token)
        .await;
    assert_eq!(
        error_of(response).await,
        (
            404,
            "not_found".into(),
            format!(
                "you have no order with order_id \"{}\"... (5000 bytes)",
                "o".repeat(64)
            )
        )
    );
}
