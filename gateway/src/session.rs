//! Who a streaming client is: its credential from the `authorization` header
//! or `?token=`, checked by the upstream.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::http::{HeaderMap, header::AUTHORIZATION};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use fxcast_proto::v1::ListSymbolsRequest;
use fxcast_services::stream::SlowConsumer;

use crate::{
    error::ApiError,
    upstream::{Bearer, Upstream},
};

/// The credential of an HTTP request: the `authorization` header, or a
/// `token` query parameter (browsers cannot set headers on WebSocket/SSE).
pub(crate) fn credential(
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Bearer, ApiError> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = value.to_str().map_err(|_| {
            ApiError::unauthenticated("malformed authorization header: expected `Bearer <token>`")
        })?;
        return Bearer::header(value).map_err(ApiError::from);
    }
    match query_token {
        Some(token) if !token.is_empty() => Bearer::token(token).map_err(ApiError::from),
        _ => Err(ApiError::unauthenticated(
            "missing credentials: send `authorization: Bearer <token>` or `?token=<token>`",
        )),
    }
}

/// A client allowed to stream.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Forwarded upstream for the client's own calls (order events).
    pub(crate) bearer: Bearer,
    /// Symbols the token may read.
    pub(crate) allowed: BTreeSet<String>,
    /// When the credential expires (the stream is closed then).
    pub(crate) expires_at: Option<SystemTime>,
    /// The token's id (the stream is closed when it is revoked).
    pub(crate) token_id: Option<String>,
}

impl Session {
    /// Asks the upstream which symbols `bearer` may read; that also verifies
    /// it (signature, expiry, revocation).
    pub(crate) async fn open(
        upstream: &Upstream,
        bearer: Bearer,
        raw_token: Option<&str>,
    ) -> Result<Self, ApiError> {
        let symbols = upstream
            .rates(bearer.clone())
            .list_symbols(ListSymbolsRequest {})
            .await?
            .into_inner()
            .symbols;
        let allowed = symbols.into_iter().map(|s| s.symbol).collect();
        let claims = raw_token.and_then(claims_of);
        let claim = |name: &str| claims.as_ref().and_then(|c| c.get(name));
        Ok(Self {
            bearer,
            allowed,
            // The exact expiry (milliseconds), else JWT's whole seconds.
            expires_at: claim("exp_ms")
                .and_then(serde_json::Value::as_u64)
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                .or_else(|| {
                    claim("exp")
                        .and_then(serde_json::Value::as_u64)
                        .map(|exp| UNIX_EPOCH + Duration::from_secs(exp))
                }),
            token_id: claim("jti")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned),
        })
    }

    /// Completes when the token is revoked upstream.
    pub(crate) fn revoked(
        &self,
        revocations: &crate::revocations::Revocations,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        revocations.revoked(self.token_id.as_deref())
    }

    /// Seconds until expiry as a deadline on tokio's clock.
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        let left = self
            .expires_at?
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Some(tokio::time::Instant::now() + left)
    }
}

/// The token inside a `Bearer <token>` header value.
pub(crate) fn bearer_token(headers: &HeaderMap, query_token: Option<&str>) -> Option<String> {
    match headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(value) => value.split_once(' ').map(|(_, t)| t.trim().to_owned()),
        None => query_token.map(str::to_owned),
    }
}

/// The claims of a JWT the upstream has already verified (not an API key).
fn claims_of(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Why a connection that kept falling behind is closed: the WebSocket close
/// reason, the SSE `error` event's message.
pub(crate) fn slow_consumer_reason(slow: &SlowConsumer) -> String {
    format!("{slow}; reconnect (resuming from the last sequence) to continue")
}
