//! Momento API keys and where they point.
//!
//! Three forms of key are accepted from `MOMENTO_API_KEY`:
//! - a **v1 key** (also what `GenerateDisposableToken` hands out):
//!   base64 of `{"endpoint": "...", "api_key": "..."}`; the endpoint is in
//!   the key;
//! - a **v2 key** (a JWT whose claims say `"t": "g"`): the endpoint comes
//!   separately, from `MOMENTO_ENDPOINT` ([`MomentoConfig::base_endpoint`]);
//! - **anything else**, only together with an endpoint URL: a key for a
//!   Momento-compatible server such as `fxcast momento-local`, which accepts
//!   any key by default (the empty one too).
//!
//! An endpoint URL (`--momento-endpoint`) sends every connection there:
//! `http://` in plaintext, `https://` with TLS and Mozilla's roots.
//!
//! [`MomentoConfig::base_endpoint`]: super::MomentoConfig::base_endpoint

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use momento::CredentialProvider;
use serde::{Deserialize, Serialize};

use crate::Error;

/// What a key resolved to.
pub(super) struct Resolved {
    /// For the SDK clients (publish, cache, tokens).
    pub(super) provider: CredentialProvider,
    /// The `authorization` value of the raw subscription calls.
    pub(super) authorization: String,
    /// The topics endpoint, e.g. `https://cache.cell-1.prod.a.momentohq.com`
    /// or `http://127.0.0.1:8080`.
    pub(super) url: String,
}

#[derive(Serialize, Deserialize)]
struct V1Key {
    endpoint: String,
    api_key: String,
}

fn invalid(message: String) -> Error {
    Error::InvalidConfig(format!("momento: {message}"))
}

fn decode_v1(key: &str) -> Option<V1Key> {
    let key = key.trim();
    [URL_SAFE, URL_SAFE_NO_PAD, STANDARD, STANDARD_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(key).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// A v1 key in the exact form the SDK parses (URL-safe base64, padded).
fn encode_v1(endpoint: &str, api_key: &str) -> String {
    let json = serde_json::to_vec(&V1Key {
        endpoint: endpoint.to_owned(),
        api_key: api_key.to_owned(),
    })
    .expect("two strings serialise");
    URL_SAFE.encode(json)
}

fn is_v2(key: &str) -> bool {
    let mut segments = key.split('.');
    let (Some(_), Some(claims), Some(_), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return false;
    };
    URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .is_some_and(|claims| claims.get("t").and_then(|t| t.as_str()) == Some("g"))
}

/// The host of an `http://` or `https://` URL.
fn host_of(url: &str) -> Result<String, Error> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(format!(
                "endpoint {url:?} must start with http:// (plaintext, e.g. momento-local) or https://"
            ))
        })?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        // [::1]:8080
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err(invalid(format!("endpoint {url:?} names no host")));
    }
    Ok(host.to_owned())
}

/// Resolves `api_key` with the optional base endpoint (for v2 keys) and
/// endpoint URL override.
///
/// # Errors
/// [`Error::InvalidConfig`] saying what is missing or malformed; the key
/// itself is never part of the message.
pub(super) fn resolve(
    api_key: &str,
    base_endpoint: Option<&str>,
    url_override: Option<&str>,
) -> Result<Resolved, Error> {
    let override_host = url_override.map(host_of).transpose()?;
    let sdk = |what: &str, e: momento::MomentoError| {
        invalid(format!("the SDK refused the {what}: {}", e.message))
    };
    let (provider, authorization, base) = if let Some(v1) = decode_v1(api_key) {
        let provider =
            CredentialProvider::from_disposable_token(encode_v1(&v1.endpoint, &v1.api_key))
                .map_err(|e| sdk("v1 API key", e))?;
        (provider, v1.api_key, v1.endpoint)
    } else if is_v2(api_key) {
        let base = base_endpoint
            .map(str::to_owned)
            .or_else(|| override_host.clone())
            .ok_or_else(|| {
                invalid(
                    "a v2 API key needs its endpoint: set MOMENTO_ENDPOINT (e.g. \
                     cell-4-us-west-2-1.prod.a.momentohq.com) or --momento-endpoint"
                        .to_owned(),
                )
            })?;
        let provider = CredentialProvider::from_api_key_v2(api_key, &base)
            .map_err(|e| sdk("v2 API key", e))?;
        (provider, api_key.to_owned(), base)
    } else {
        // A key for a Momento-compatible server: it needs the server's URL.
        let Some(host) = override_host.clone() else {
            return Err(invalid(
                "MOMENTO_API_KEY is neither a Momento v1 nor a v2 API key; for hosted Momento \
                 use a key from the Momento console, for fxcast momento-local also pass \
                 --momento-endpoint http://HOST:PORT"
                    .to_owned(),
            ));
        };
        let provider = CredentialProvider::from_disposable_token(encode_v1(&host, api_key))
            .map_err(|e| sdk("API key", e))?;
        (provider, api_key.to_owned(), host)
    };
    let (provider, url) = match url_override {
        Some(url) if url.starts_with("http://") => {
            (provider.insecure_endpoint_override(url), url.to_owned())
        }
        Some(url) => (provider.full_endpoint_override(url), url.to_owned()),
        None => (provider, format!("https://cache.{base}")),
    };
    Ok(Resolved {
        provider,
        authorization,
        url: url.trim_end_matches('/').to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_keys_carry_their_endpoint() {
        let key = STANDARD.encode(r#"{"endpoint":"cell-1.example.com","api_key":"secret"}"#);
        let resolved = resolve(&key, None, None).unwrap();
        assert_eq!(resolved.authorization, "secret");
        assert_eq!(resolved.url, "https://cache.cell-1.example.com");

        let resolved = resolve(&key, None, Some("http://127.0.0.1:8080/")).unwrap();
        assert_eq!(resolved.url, "http://127.0.0.1:8080");
    }

    #[test]
    fn v2_keys_need_an_endpoint() {
        let claims = URL_SAFE_NO_PAD.encode(r#"{"t":"g","jti":"x"}"#);
        let key = format!("eyJhbGciOiJIUzUxMiJ9.{claims}.c2ln");
        let err = resolve(&key, None, None).err().expect("refused");
        assert!(err.to_string().contains("MOMENTO_ENDPOINT"), "{err}");
        assert!(!err.to_string().contains(&key));
        let resolved = resolve(&key, Some("cell-2.example.com"), None).unwrap();
        assert_eq!(resolved.url, "https://cache.cell-2.example.com");
        assert_eq!(resolved.authorization, key);
    }

    #[test]
    fn other_keys_need_an_endpoint_url() {
        let err = resolve("dev-key", None, None).err().expect("refused");
        assert!(err.to_string().contains("--momento-endpoint"), "{err}");
        assert!(!err.to_string().contains("dev-key"), "{err}");
        let resolved = resolve("", None, Some("http://[::1]:9000")).unwrap();
        assert_eq!(resolved.authorization, "");
        assert_eq!(resolved.url, "http://[::1]:9000");
        let err = resolve("k", None, Some("127.0.0.1:8080"))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("http://"), "{err}");
    }
}
