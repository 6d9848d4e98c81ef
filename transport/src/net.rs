//! What the network backends (NATS, Redis) share about reaching a server:
//! TLS towards it, and its URL without the credentials it may carry.

use std::{fmt, path::Path, sync::Arc};

use crate::Error;

/// TLS towards a server of `backend`: verified against the CA certificates
/// in `ca` (read now, so a bad file is refused at start), else Mozilla's
/// roots. The ring provider is chosen here rather than the process-wide
/// default, which is ambiguous (and panics) in a binary linking both ring
/// and aws-lc-rs.
pub(crate) fn tls_client_config(
    backend: &str,
    ca: Option<&Path>,
) -> Result<rustls::ClientConfig, Error> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let unusable = |e: &dyn fmt::Display| {
                Error::InvalidConfig(format!("{backend}: the CA file {}: {e}", path.display()))
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| unusable(&e))? {
                roots
                    .add(cert.map_err(|e| unusable(&e))?)
                    .map_err(|e| unusable(&e))?;
            }
            if roots.is_empty() {
                return Err(unusable(&"holds no PEM certificate"));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("{backend}: TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether `error` or one of its causes is rustls refusing the handshake.
pub(crate) fn tls_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(err) = cause {
        // An I/O error's `source` skips the error it wraps.
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if err.is::<rustls::Error>() || wrapped.is_some_and(|inner| inner.is::<rustls::Error>()) {
            return true;
        }
        cause = err.source();
    }
    false
}

/// `url` without the credentials it may carry, for messages and logs. A
/// list of servers (NATS's `nats://a,nats://b`) loses each server's: the
/// credentials of one run from its `://` to the last `@` before the next
/// `://`, so a password with a comma in it is hidden whole too.
pub(crate) fn redacted(url: &str) -> String {
    let starts: Vec<usize> = url.match_indices("://").map(|(i, _)| i + 3).collect();
    if starts.is_empty() {
        return match url.rfind('@') {
            Some(at) => format!("<redacted>@{}", &url[at + 1..]),
            None => url.to_owned(),
        };
    }
    let mut out = String::with_capacity(url.len());
    let mut copied = 0;
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(url.len());
        if let Some(at) = url[start..end].rfind('@') {
            out.push_str(&url[copied..start]);
            out.push_str("<redacted>");
            copied = start + at;
        }
    }
    out.push_str(&url[copied..]);
    out
}

/// `text` with each `marker` followed by two hex digits replaced by the
/// byte they spell (`=2E` or `%2E` for `.`). A marker without two hex
/// digits after it is kept as it is when `lenient` (URLs), and makes the
/// text invalid (`None`) otherwise; so does a result that is not UTF-8.
#[cfg(any(test, feature = "redis"))]
pub(crate) fn unescape(text: &str, marker: u8, lenient: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == marker {
            // Two hex digits: from_str_radix alone would take "+F".
            let hex = text
                .get(i + 1..i + 3)
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
            match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                None if !lenient => return None,
                None => {}
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_need_two_hex_digits() {
        assert_eq!(unescape("a=2Eb", b'=', false).as_deref(), Some("a.b"));
        assert_eq!(unescape("a=+1", b'=', false), None);
        assert_eq!(unescape("a=2", b'=', false), None);
        assert_eq!(
            unescape("p%40ss%+1%", b'%', true).as_deref(),
            Some("p@ss%+1%")
        );
        assert_eq!(unescape("%FF", b'%', true), None, "not UTF-8");
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redacted("nats://u:hunter2@a:4222,tls://b:4222"),
            "nats://<redacted>@a:4222,tls://b:4222"
        );
        assert_eq!(
            redacted("rediss://:p@ss@redis.example:6380/2"),
            "rediss://<redacted>@redis.example:6380/2"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        // A comma in a password is not taken for the next server.
        assert_eq!(
            redacted("redis://:pa,ss@h:6379"),
            "redis://<redacted>@h:6379"
        );
        assert_eq!(
            redacted("nats://u:a,b@x:4222,nats://v:c@y:4222"),
            "nats://<redacted>@x:4222,nats://<redacted>@y:4222"
        );
        assert_eq!(redacted("u:p@h:4222"), "<redacted>@h:4222");
    }
}
