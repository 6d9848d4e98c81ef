//! What every request passes before the router, and every error response
//! after it: the request's head is held to fixed limits (URI 8 KiB, header
//! section 16 KiB and 100 fields: 414 and 431), its body to the gateway's
//! `max_body` (a larger `Content-Length` is refused at once with 413) and
//! to the header timeout (a body that stalls is answered 408; both close the
//! connection). The body is read whole here, so handlers never wait on a
//! client and their own timeout measures only their work. Whatever error
//! response is not JSON yet (405, axum's rejections such as a path that is
//! not UTF-8, the handler timeout's 504) is rewritten as
//! `{"error":{"code","message"}}`.
//!
//! hyper parses the head before anything here runs: it is allowed 64 KiB
//! and 256 fields (see `server`), so these limits answer first; beyond
//! hyper's, hyper itself answers 431 with an empty body and closes.

use std::time::Duration;

use axum::{
    Router,
    body::{Body, Bytes, HttpBody},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use fxcast_services::quote::{bound_quoted_spans, quoted};
use tower::Layer;

use crate::error::ApiError;

/// Longest accepted request target (path and query), in bytes.
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest accepted header section (each field's name and value, plus 4),
/// in bytes.
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most header fields accepted in one request.
pub(crate) const MAX_HEADER_FIELDS: usize = 100;
/// At most this much of a non-JSON error body is kept as the message.
const MAX_ERROR_TEXT: usize = 4 * 1024;

/// The limits of [`guarded`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLimits {
    /// Largest request body, in bytes.
    pub(crate) max_body: usize,
    /// How long a request body may take to arrive, from the end of its head.
    pub(crate) body_timeout: Duration,
}

/// `router` behind the limits and with every error response in JSON. The
/// guard wraps the whole router (not each route, as `Router::layer` would),
/// so it sees requests before routing and responses as the router finished
/// them (a 405 with its `Allow` header).
pub(crate) fn guarded(router: Router, limits: RequestLimits) -> Router {
    Router::new().fallback_service(middleware::from_fn_with_state(limits, guard).layer(router))
}

async fn guard(State(limits): State<RequestLimits>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match admit(limits, request).await {
        Ok(request) => next.run(request).await,
        Err(refusal) => return refusal.into_response(),
    };
    json_error(response, &method, &path).await
}

/// Why a request is answered without reaching the router.
enum Refusal {
    /// Answered; the connection may serve more requests.
    Answer(ApiError),
    /// Answered, then the connection is closed: what is left of the body is
    /// not read.
    Close(ApiError),
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Answer(error) => error.into_response(),
            Self::Close(error) => {
                let mut response = error.into_response();
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
        }
    }
}

/// The request with its body read, or the refusal to answer instead.
async fn admit(limits: RequestLimits, request: Request) -> Result<Request, Refusal> {
    check_head(&request).map_err(Refusal::Answer)?;
    // HTTP/2 extended CONNECT (a WebSocket) streams its body: never read it.
    if request.method() == Method::CONNECT || request.body().is_end_stream() {
        return Ok(request);
    }
    let declared = request.body().size_hint().exact();
    if let Some(length) = declared.filter(|n| *n > limits.max_body as u64) {
        return Err(Refusal::Close(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is {length} bytes (Content-Length); at most {} are allowed",
                limits.max_body
            ),
        )));
    }
    let (parts, body) = request.into_parts();
    let body = read_body(body, declared, limits)
        .await
        .map_err(Refusal::Close)?;
    Ok(Request::from_parts(parts, Body::from(body)))
}

/// 414 for a long URI, 431 for a large header section.
fn check_head(request: &Request) -> Result<(), ApiError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target > MAX_URI_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request URI is {target} bytes long; at most {MAX_URI_BYTES} are allowed"),
        ));
    }
    let headers = request.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES || headers.len() > MAX_HEADER_FIELDS {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_fields_too_large",
            format!(
                "the request headers are {bytes} bytes in {} fields; at most {MAX_HEADER_BYTES} bytes and {MAX_HEADER_FIELDS} fields are allowed",
                headers.len()
            ),
        ));
    }
    Ok(())
}

/// The whole body, at most `max_body` bytes, within `body_timeout`.
async fn read_body(
    body: Body,
    declared: Option<u64>,
    limits: RequestLimits,
) -> Result<Bytes, ApiError> {
    let mut received = Vec::new();
    let mut stream = body.into_data_stream();
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|err| {
                ApiError::bad_request(format!("the request body could not be read: {err}"))
            })?;
            if received.len() + chunk.len() > limits.max_body {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the request body is over {} bytes, the most allowed",
                        limits.max_body
                    ),
                ));
            }
            received.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(())) => Ok(Bytes::from(received)),
        Ok(Err(refusal)) => Err(refusal),
        Err(_) => {
            let expected = declared.map_or_else(String::new, |n| format!(" of {n}"));
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} ({} bytes{expected} received)",
                    humantime::format_duration(limits.body_timeout),
                    received.len()
                ),
            ))
        }
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// An error `response` that is not JSON, rewritten as the API's error body
/// (its text, if any, as the message); every other response unchanged.
async fn json_error(response: Response, method: &Method, path: &str) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = if parts.headers.contains_key(header::CONTENT_ENCODING) {
        String::new()
    } else {
        axum::body::to_bytes(body, MAX_ERROR_TEXT)
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
            .unwrap_or_default()
    };
    let message = if text.is_empty() {
        default_message(status, &parts.headers, method, path)
    } else {
        bound_quoted_spans(&text).into_owned()
    };
    let mut json = ApiError::new(status, code_of(status), message).into_response();
    for (name, value) in &parts.headers {
        let body_header = [
            header::CONTENT_TYPE,
            header::CONTENT_LENGTH,
            header::CONTENT_ENCODING,
            header::TRANSFER_ENCODING,
        ]
        .contains(name);
        if !body_header {
            json.headers_mut().append(name.clone(), value.clone());
        }
    }
    json
}

/// The `code` of an error status, as [`ApiError`] names them.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_argument",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "permission_denied",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_field",
        StatusCode::TOO_MANY_REQUESTS => "resource_exhausted",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "header_fields_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::GATEWAY_TIMEOUT => "deadline_exceeded",
        StatusCode::NOT_IMPLEMENTED => "unimplemented",
        s if s.is_client_error() => "invalid_request",
        _ => "internal",
    }
}

/// What an empty error response of `status` meant.
fn default_message(status: StatusCode, headers: &HeaderMap, method: &Method, path: &str) -> String {
    match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            format!(
                "{method} is not allowed on {} (allowed: {allowed})",
                quoted(path)
            )
        }
        StatusCode::GATEWAY_TIMEOUT => format!(
            "{method} {} took longer than {} to answer",
            quoted(path),
            humantime::format_duration(crate::rest::REQUEST_TIMEOUT)
        ),
        _ => status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase(),
    }
}
