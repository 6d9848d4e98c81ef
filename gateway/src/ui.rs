//! The browser UI, embedded in the binary: no build step, no web server.
//!
//! In Momento mode the page also loads Momento's web SDK, bundled by
//! `scripts/build-ui-bundle` into `ui/momento-sdk.js` (committed, so
//! building needs no Node). It is served as `/app.js?module=momento-sdk`:
//! the same route as the page's own script, and only fetched, with a
//! dynamic `import()`, by pages that subscribe to Momento directly.

use std::sync::LazyLock;

use axum::{
    extract::RawQuery,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::error::ApiError;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");
const MOMENTO_SDK: &str = include_str!("ui/momento-sdk.js");

/// The query naming the Momento SDK module.
const MOMENTO_SDK_QUERY: &str = "module=momento-sdk";

/// The SDK is 1.5 MB (200 KB compressed): browsers revalidate it
/// (`no-cache`, like the rest of the UI) and get a 304 while the binary is
/// the same. FNV-1a of the content, computed once.
static MOMENTO_SDK_ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let hash = MOMENTO_SDK.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    HeaderValue::from_str(&format!("\"{hash:016x}-{}\"", MOMENTO_SDK.len()))
        .unwrap_or_else(|_| HeaderValue::from_static("\"momento-sdk\""))
});

pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

/// `/app.js`, or with `?module=momento-sdk` Momento's web SDK. Other
/// queries (cache busters) still get `app.js`; another `module` is a 404.
pub(crate) async fn script(RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let module = query
        .as_deref()
        .and_then(|q| q.split('&').find(|pair| pair.starts_with("module=")));
    match module {
        None => javascript(SCRIPT, None),
        Some(MOMENTO_SDK_QUERY) => {
            let etag = &*MOMENTO_SDK_ETAG;
            if headers
                .get(header::IF_NONE_MATCH)
                .is_some_and(|seen| seen == etag)
            {
                return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone())]).into_response();
            }
            javascript(MOMENTO_SDK, Some(etag.clone()))
        }
        Some(other) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no UI module {other:?} (the UI has module=momento-sdk)"),
        )
        .into_response(),
    }
}

fn javascript(body: &'static str, etag: Option<HeaderValue>) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

pub(crate) async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    async fn get(query: Option<&str>, if_none_match: Option<&HeaderValue>) -> Response {
        let mut headers = HeaderMap::new();
        if let Some(etag) = if_none_match {
            headers.insert(header::IF_NONE_MATCH, etag.clone());
        }
        script(RawQuery(query.map(str::to_owned)), headers).await
    }

    async fn body(response: Response) -> String {
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        String::from_utf8(bytes.to_vec()).expect("utf-8")
    }

    #[tokio::test]
    async fn the_sdk_module_is_javascript_with_an_etag_and_revalidates() {
        let response = get(Some("module=momento-sdk"), None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let etag = response.headers()[header::ETAG].clone();
        let text = body(response).await;
        assert!(text.starts_with("// @gomomento/sdk-web "), "the bundle");
        assert!(text.contains("TopicClient"), "exports the topic client");

        let again = get(Some("v=2&module=momento-sdk"), Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert!(body(again).await.is_empty());
        let stale = HeaderValue::from_static("\"other\"");
        assert_eq!(
            get(Some("module=momento-sdk"), Some(&stale)).await.status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn app_js_stays_the_default_and_unknown_modules_are_404() {
        for query in [None, Some("v=123")] {
            let response = get(query, None).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert!(response.headers().get(header::ETAG).is_none());
            assert_eq!(body(response).await, SCRIPT);
        }
        let missing = get(Some("module=../../etc/passwd"), None).await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
