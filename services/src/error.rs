//! The one error type of the services crate and its mapping to gRPC status.

use std::sync::Arc;

use tonic::{Code, Status};

/// Everything that can go wrong in the services crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The symbol is not priced by this server.
    #[error("unknown symbol {} (known: {known})", crate::quote::quoted(symbol))]
    UnknownSymbol {
        /// The requested symbol.
        symbol: String,
        /// Comma-separated known symbols.
        known: String,
    },
    /// A request field is invalid; the message names the field and the problem.
    #[error("{0}")]
    InvalidArgument(String),
    /// No rate has been published yet for the symbol.
    #[error("no rate has been published for {0} yet")]
    NoRateYet(String),
    /// Bad configuration; the message says what to fix.
    #[error("configuration error: {0}")]
    Config(String),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] fxcast_transport::Error),
    /// A payload on the transport could not be decoded.
    #[error("undecodable payload on topic {topic}: {source}")]
    Decode {
        /// Where it came from.
        topic: String,
        /// Why it could not be decoded.
        #[source]
        source: prost::DecodeError,
    },
    /// An I/O error, e.g. binding a listener.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server error: {0}")]
    Server(#[from] tonic::transport::Error),
    /// The order journal failed; whatever was being written is not
    /// acknowledged (retrying an order is safe: it is idempotent).
    #[error("order journal: {context}: {source}")]
    Journal {
        /// What was being done.
        context: String,
        /// The underlying error (shared by every order of a failed batch).
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// A transient condition; the message says what to do (e.g. an order
    /// whose outcome the liquidity provider has not confirmed yet).
    #[error("{0}")]
    Unavailable(String),
    /// A credential was refused or lacks a scope.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::Auth(auth) => return auth.clone().into(),
            Error::UnknownSymbol { .. } | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NoRateYet(_) => Code::Unavailable,
            Error::Transport(fxcast_transport::Error::PayloadTooLarge { .. }) => {
                Code::InvalidArgument
            }
            Error::Transport(_) | Error::Journal { .. } | Error::Unavailable(_) => {
                Code::Unavailable
            }
            Error::Config(_) | Error::Decode { .. } | Error::Io { .. } | Error::Server(_) => {
                Code::Internal
            }
        };
        Status::new(code, err.to_string())
    }
}
