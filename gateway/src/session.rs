//! Who a streaming client is: its credential from the `authorization` header
//! or `?token=`, checked by the upstream.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::http::{HeaderMap, header::AUTHORIZATION};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use fxcast_proto::v1::ListSymbolsRequest;

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
        Ok(Self {
            bearer,
            allowed,
            expires_at: raw_token.and_then(expiry_of),
        })
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

/// The `exp` claim of a JWT the upstream has already verified.
fn expiry_of(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(claims.get("exp")?.as_u64()?))
}
