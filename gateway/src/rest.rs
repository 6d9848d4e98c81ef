//! REST handlers: thin translations to the gRPC services, forwarding the
//! client's own credential so the services decide what it may do.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::{ConnectInfo, FromRequest, Path, Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use fxcast_proto::v1::{
    GetLatestRateRequest, IssueTokenRequest, IssueTokenResponse, ListSymbolsRequest,
};
use fxcast_services::quote::{QUOTE_LIMIT, bound_quoted_spans, quoted};
use serde::de::DeserializeOwned;

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    json::{
        MomentoAccessJson, RateJson, RatesJson, SymbolJson, SymbolsJson, TokenJson,
        TokenRequestJson, rfc3339,
    },
    session::credential,
    upstream::Bearer,
};

/// `Json` with errors in the API's own shape: 400 for malformed JSON, 413 for
/// an oversized body, 415 without a JSON content type, 422 for wrong fields.
/// Messages name the field and quote what serde quotes bounded
/// ([`bound_quoted_spans`]), so they never grow with the body.
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !json_content_type(request.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                let status = rejection.status();
                let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "payload_too_large"
                } else {
                    "malformed_json"
                };
                ApiError::new(status, code, rejection.body_text())
            })?;
        parse_json(&body).map(Self)
    }
}

/// `application/json` or `application/<anything>+json`.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .get(.."application/".len())
            .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
            && essence.to_ascii_lowercase().ends_with("+json")
}

/// Deserialises a JSON body: 400 `malformed_json` for what is not JSON,
/// 422 `invalid_field` for JSON of the wrong shape, naming the field.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde takes a struct from an array of its fields in order too, which
    // would answer `[1]` with "[0]: expected a string"; every body here is
    // an object, so say that (of a well-formed array: a broken one is 400,
    // like any other broken body).
    let first = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first == Some(&b'[') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(err) => body_error(".", &err),
                Ok(_) => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    "the body must be a JSON object, not an array",
                ),
            },
        );
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        body_error(&path, &err.into_inner())
    })?;
    deserializer.end().map_err(|err| body_error(".", &err))?;
    Ok(value)
}

/// The refusal of a body serde could not take at `path` (`.`: the whole;
/// `?`: inside an object before its next key, as when the body ends there).
fn body_error(path: &str, err: &serde_json::Error) -> ApiError {
    let detail = bound_quoted_spans(&err.to_string()).into_owned();
    // The path is made of the body's own keys: quoted when long.
    let message = match path {
        "." | "?" => detail,
        short if short.len() <= QUOTE_LIMIT => format!("{short}: {detail}"),
        long => format!("{}: {detail}", quoted(long)),
    };
    match err.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", message),
    }
}

/// A JSON body that may be absent (an empty body). Errors as [`ApiJson`].
pub(crate) struct OptionalJson<T>(pub(crate) Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let empty = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v == "0")
            || (!request
                .headers()
                .contains_key(axum::http::header::CONTENT_TYPE)
                && !request
                    .headers()
                    .contains_key(axum::http::header::TRANSFER_ENCODING)
                && !request
                    .headers()
                    .contains_key(axum::http::header::CONTENT_LENGTH));
        if empty {
            return Ok(Self(None));
        }
        ApiJson::<T>::from_request(request, state)
            .await
            .map(|ApiJson(v)| Self(Some(v)))
    }
}

/// The symbols the bearer of `headers` may see, as the services list them.
async fn allowed_symbols(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Vec<fxcast_proto::v1::SymbolInfo>, ApiError> {
    let bearer = credential(headers, None)?;
    Ok(state
        .upstream
        .rates(bearer)
        .list_symbols(ListSymbolsRequest {})
        .await?
        .into_inner()
        .symbols)
}

/// The symbols the caller may see.
#[utoipa::path(get, path = "/v1/symbols", tag = "rates",
    responses((status = 200, body = SymbolsJson), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn symbols(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<SymbolsJson>, ApiError> {
    let symbols = allowed_symbols(&state, &headers).await?;
    let symbols = symbols.into_iter().map(SymbolJson::from).collect();
    Ok(Json(SymbolsJson { symbols }))
}

/// The latest rate of every symbol the caller may see.
#[utoipa::path(get, path = "/v1/rates", tag = "rates",
    responses((status = 200, body = RatesJson), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn rates(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<RatesJson>, ApiError> {
    let allowed = allowed_symbols(&state, &headers).await?;
    let rates = allowed
        .iter()
        .filter_map(|s| state.ticker.latest(&s.symbol))
        .map(|t| t.rate.clone())
        .collect();
    Ok(Json(RatesJson { rates }))
}

/// The latest rate of one symbol.
#[utoipa::path(get, path = "/v1/rates/{symbol}", tag = "rates",
    params(("symbol" = String, Path, description = "e.g. USD_JPY")),
    responses((status = 200, body = RateJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody, description = "no rate yet")),
    security(("bearer" = [])))]
pub(crate) async fn rate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(symbol): Path<String>,
) -> Result<Json<RateJson>, ApiError> {
    let bearer = credential(&headers, None)?;
    let rate = state
        .upstream
        .rates(bearer)
        .get_latest_rate(GetLatestRateRequest { symbol })
        .await?
        .into_inner();
    Ok(Json(RateJson::from(&rate)))
}

fn token_json(issued: IssueTokenResponse) -> TokenJson {
    TokenJson {
        token: issued.token,
        token_id: issued.token_id,
        expires_at: rfc3339(issued.expires_at),
        subject: issued.subject,
        scopes: issued.scopes,
        momento: issued.momento.map(momento_json),
    }
}

fn momento_json(m: fxcast_proto::v1::MomentoAccess) -> MomentoAccessJson {
    MomentoAccessJson {
        token: m.token,
        expires_at: rfc3339(m.expires_at),
        cache_name: m.cache_name,
        topics: m.topics,
        endpoint: m.endpoint,
        max_messages_per_second: m.max_messages_per_second,
    }
}

/// A fresh Momento disposable token for the caller's own fxcast token
/// (Momento tokens live at most 1 hour and cannot be renewed). 422 when the
/// server offers no direct Momento access.
#[utoipa::path(post, path = "/v1/tokens/momento", tag = "tokens",
    responses((status = 200, body = MomentoAccessJson), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn issue_momento_access(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<MomentoAccessJson>, ApiError> {
    let bearer = credential(&headers, None)?;
    let access = state
        .upstream
        .tokens(bearer)
        .issue_momento_access(fxcast_proto::v1::IssueMomentoAccessRequest {})
        .await?
        .into_inner();
    Ok(Json(momento_json(access)))
}

/// Issues a token. With `authorization: Bearer <API key or tokens:issue
/// token>` it issues what the body asks; without credentials, when the
/// gateway allows it (loopback), a short-lived browser token.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = TokenRequestJson,
    responses((status = 200, body = TokenJson), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn issue_token(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<TokenRequestJson>,
) -> Result<Json<TokenJson>, ApiError> {
    let body = body.unwrap_or_default();
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        let bearer = credential(&headers, None)?;
        let request = IssueTokenRequest {
            subject: body.subject.unwrap_or_default(),
            scopes: body.scopes,
            ttl: body.ttl_seconds.map(|s| fxcast_proto::Duration {
                seconds: s.min(i64::MAX as u64) as i64,
                nanos: 0,
            }),
        };
        let issued = state
            .upstream
            .tokens(bearer)
            .issue_token(request)
            .await?
            .into_inner();
        return Ok(Json(token_json(issued)));
    }
    if !state.config.anonymous_tokens {
        return Err(ApiError::unauthenticated(
            "missing credentials: POST /v1/tokens needs `authorization: Bearer <API key>` (anonymous browser tokens are off on this address)",
        ));
    }
    let grant = state.anonymous.grant(client.ip())?;
    let request = IssueTokenRequest {
        subject: grant.subject,
        scopes: grant.scopes.0.iter().map(ToString::to_string).collect(),
        ttl: Some(fxcast_proto::Duration {
            seconds: grant.ttl.as_secs() as i64,
            nanos: 0,
        }),
    };
    let issued = state
        .upstream
        .admin_tokens()?
        .issue_token(request)
        .await?
        .into_inner();
    tracing::info!(subject = %issued.subject, client = %client.ip(), "issued anonymous browser token");
    Ok(Json(token_json(issued)))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
pub(crate) async fn healthz() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// Why RateService is not serving, if it is not: its gRPC health follows
/// the transport (a reconnecting Momento).
async fn rate_service_not_serving(state: &AppState) -> Option<String> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(state.upstream.with(Bearer::none()));
    let request = HealthCheckRequest {
        service: "fxcast.v1.RateService".to_owned(),
    };
    match health.check(request).await {
        Ok(response) if response.get_ref().status() == ServingStatus::Serving => None,
        Ok(response) => Some(format!(
            "the rate service is {}: its transport is reconnecting (the server log says why)",
            response.get_ref().status().as_str_name()
        )),
        Err(status) => Some(format!(
            "the rate service cannot be reached: {}",
            status.message()
        )),
    }
}

/// Readiness: the rate service and its transport serve, and every symbol
/// has a rate.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200), (status = 503, body = ErrorBody)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if let Some(reason) = rate_service_not_serving(&state).await {
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).into_response();
    }
    let missing = state.ticker.missing();
    // A symbol whose feed went quiet is re-published with `stale: true`.
    let stale: Vec<&str> = state
        .ticker
        .symbols()
        .iter()
        .map(|s| s.symbol.as_str())
        .filter(|s| state.ticker.latest(s).is_some_and(|t| t.rate.stale))
        .collect();
    if missing.is_empty() && stale.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else if !missing.is_empty() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("no rate received yet for {}", missing.join(", ")),
        )
        .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the feed is stale for {}", stale.join(", ")),
        )
        .into_response()
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    // Feed health as the gateway sees it: per symbol, whether its latest rate
    // is marked stale and its sequence.
    for symbol in state.ticker.symbols() {
        let labels = crate::metrics::SymbolLabels {
            symbol: symbol.symbol.clone(),
        };
        let latest = state.ticker.latest(&symbol.symbol);
        let stale = latest.as_ref().is_none_or(|t| t.rate.stale);
        state
            .metrics
            .symbol_stale
            .get_or_create(&labels)
            .set(i64::from(stale));
        let sequence = latest.map_or(0, |t| t.rate.sequence);
        state
            .metrics
            .symbol_sequence
            .get_or_create(&labels)
            .set(sequence as i64);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Unknown paths answer in the API's error shape.
pub(crate) async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route for {} {}",
            request.method(),
            quoted(request.uri().path())
        ),
    )
}

/// Handlers that take longer than this answer 504.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
