//! Where the server is and how to open a connection to it.
//!
//! The URL is parsed here rather than by redis-rs, whose `rediss://`
//! support would bring its own TLS (on the process-wide rustls provider):
//! the socket is opened here, TCP or TLS (tokio-rustls, ring provider,
//! the CA file or Mozilla's roots), and handed to redis-rs, which speaks
//! the protocol on it and authenticates with what [`Endpoint::info`]
//! carries.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use redis::{
    ErrorKind, RedisConnectionInfo, RedisError,
    aio::{MultiplexedConnection, PubSub},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, rustls::pki_types::ServerName};

use super::BACKEND;
use crate::{
    Error,
    net::{redacted, tls_client_config, tls_refused},
};

/// A byte stream to the server, plain or TLS.
trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// A server, parsed once from the URL: what to connect to and how to log
/// in. `Debug` and [`Endpoint::url`] never show the password.
#[derive(Clone)]
pub(super) struct Endpoint {
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    info: RedisConnectionInfo,
    /// The URL without its credentials.
    url: String,
    connect_timeout: Duration,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a connection could not be opened, with what to check.
#[derive(Debug)]
pub(super) struct ConnectError {
    pub(super) message: String,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Endpoint {
    /// Parses `url` (`redis://[[user]:password@]host[:port][/db]`,
    /// `rediss://` for TLS); `password`, when given, replaces the URL's.
    pub(super) fn parse(
        url: &str,
        password: Option<&str>,
        ca: Option<&Path>,
        connect_timeout: Duration,
    ) -> Result<Self, Error> {
        let shown = redacted(url);
        let invalid = |why: &str| Error::InvalidConfig(format!("redis: the URL {shown}: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let tls = match parsed.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => return Err(invalid("the scheme must be redis:// or rediss:// (TLS)")),
        };
        let host = match parsed.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(invalid("no host")),
        };
        let port = parsed.port().unwrap_or(6379);
        let db = match parsed.path().trim_start_matches('/') {
            "" => 0,
            db => db
                .parse::<i64>()
                .ok()
                .filter(|db| *db >= 0)
                .ok_or_else(|| invalid("the path must be a database number, e.g. /0"))?,
        };
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid("query parameters are not supported"));
        }
        let decode = |part: &str| {
            percent_decode(part).ok_or_else(|| invalid("the credentials are not valid UTF-8"))
        };
        let mut info = RedisConnectionInfo::default()
            .set_db(db)
            .set_lib_name("fxcast", env!("CARGO_PKG_VERSION"));
        if !parsed.username().is_empty() {
            info = info.set_username(decode(parsed.username())?);
        }
        let password = match password {
            Some(password) => Some(password.to_owned()),
            None => parsed.password().map(decode).transpose()?,
        };
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            info = info.set_password(password);
        }
        let tls = if tls {
            let config = tls_client_config(BACKEND, ca)?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| invalid(&format!("{host} is not a TLS server name: {e}")))?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            tls,
            info,
            url: shown,
            connect_timeout,
        })
    }

    /// The URL without its credentials.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// A command connection (requests multiplexed, answers matched in
    /// order) and the task that drives it, which ends with the connection.
    pub(super) async fn commands(
        &self,
        response_timeout: Duration,
    ) -> Result<(MultiplexedConnection, tokio::task::JoinHandle<()>), ConnectError> {
        let socket = self.socket().await?;
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(self.connect_timeout));
        let (connection, driver) = self
            .within(MultiplexedConnection::new_with_config(
                &self.info, socket, config,
            ))
            .await?;
        Ok((connection, tokio::spawn(driver)))
    }

    /// A connection in pub/sub mode (RESP2), logged in.
    pub(super) async fn pubsub(&self) -> Result<PubSub, ConnectError> {
        let socket = self.socket().await?;
        self.within(PubSub::new(&self.info, socket)).await
    }

    async fn within<T>(
        &self,
        setup: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, ConnectError> {
        match tokio::time::timeout(self.connect_timeout, setup).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> ConnectError {
        ConnectError {
            message: format!(
                "cannot connect to {}: no answer within {:?} (is redis-server running and reachable there?)",
                self.url, self.connect_timeout
            ),
        }
    }

    /// What went wrong in words, without the credentials.
    pub(super) fn failed(&self, error: &RedisError) -> ConnectError {
        let hint = if refused_credentials(error) {
            " (the server refused the credentials: check the password in the URL or \
             FXCAST_REDIS_PASSWORD, and the user)"
        } else if error.is_io_error() || error.is_connection_refusal() {
            " (is redis-server running and reachable there?)"
        } else {
            ""
        };
        ConnectError {
            message: format!("cannot connect to {}: {error}{hint}", self.url),
        }
    }

    async fn socket(&self) -> Result<Box<dyn Socket>, ConnectError> {
        let fail = |why: String, hint: &str| ConnectError {
            message: format!("cannot connect to {}: {why}{hint}", self.url),
        };
        let reachable = " (is redis-server running and reachable there?)";
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| self.timed_out())?
        .map_err(|e| fail(e.to_string(), reachable))?;
        // One small message per publish: no Nagle delay.
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        match tokio::time::timeout(self.connect_timeout, connector.connect(name.clone(), tcp)).await
        {
            Err(_) => Err(self.timed_out()),
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(e)) if tls_refused(&e) => Err(fail(
                format!("TLS: {e}"),
                " (the server's certificate is not trusted: it must chain to the CA file, \
                 or to Mozilla's roots without one)",
            )),
            Ok(Err(e)) => Err(fail(
                format!("TLS: {e}"),
                " (does the server speak TLS on that port? rediss:// needs redis-server's tls-port)",
            )),
        }
    }
}

/// Whether the server refused the credentials (or wants some).
fn refused_credentials(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
        || error
            .detail()
            .is_some_and(|d| d.contains("NOAUTH") || d.contains("WRONGPASS"))
}

/// `%xx` sequences decoded, as URLs carry passwords with reserved
/// characters.
fn percent_decode(part: &str) -> Option<String> {
    crate::net::unescape(part, b'%', true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, password: Option<&str>) -> Result<Endpoint, Error> {
        Endpoint::parse(url, password, None, Duration::from_secs(1))
    }

    #[test]
    fn urls_are_parsed_with_their_credentials_and_database() {
        let e = parse("redis://127.0.0.1", None).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.info.db()),
            ("127.0.0.1", 6379, 0)
        );
        assert_eq!(e.info.password(), None);
        let e = parse("redis://fx:p%40ss%3Aword@cache.internal:6380/3", None).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.info.db()),
            ("cache.internal", 6380, 3)
        );
        assert_eq!(e.info.username(), Some("fx"));
        assert_eq!(e.info.password(), Some("p@ss:word"));
        assert_eq!(e.url(), "redis://<redacted>@cache.internal:6380/3");
        assert!(!format!("{e:?}").contains("p@ss"));
        // The environment's password wins over the URL's.
        let e = parse("redis://:in-url@h", Some("from-env")).unwrap();
        assert_eq!(e.info.password(), Some("from-env"));
        let e = parse("rediss://h:6390", None).unwrap();
        assert!(e.tls.is_some());
    }

    #[test]
    fn bad_urls_are_refused_without_showing_the_password() {
        for (url, why) in [
            ("http://h", "scheme"),
            ("redis://:secret-pw@h/x", "database number"),
            ("redis://:secret-pw@h/0?protocol=resp3", "query"),
            ("not a url", "URL"),
        ] {
            let err = parse(url, None).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("secret-pw"), "{err}");
        }
    }
}
