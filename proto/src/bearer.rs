//! The client side of fxcast's bearer auth, shared by every client of the
//! services (the gateway, the CLI, tests and benches).

use tonic::{
    Request, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Adds one `authorization` value to every call of a client.
#[derive(Clone, Debug)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// Forwards an HTTP `authorization` header value as is.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` when the value cannot be a header.
    pub fn header(value: &str) -> Result<Self, Status> {
        value.parse().map(|v| Self(Some(v))).map_err(|_| {
            Status::unauthenticated("malformed authorization header: expected `Bearer <token>`")
        })
    }

    /// `Bearer <token>` (a token or the admin API key).
    ///
    /// # Errors
    /// `UNAUTHENTICATED` when the token has characters a header cannot carry.
    pub fn token(token: &str) -> Result<Self, Status> {
        Self::header(&format!("Bearer {token}"))
    }

    /// No credentials.
    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends a [`Bearer`] credential on every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// `channel` sending `bearer` on every call.
pub fn authed(channel: Channel, bearer: Bearer) -> Authed {
    InterceptedService::new(channel, bearer)
}
