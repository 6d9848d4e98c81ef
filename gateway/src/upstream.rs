//! The gateway's link to the gRPC services: one channel, and the gateway's
//! own service token (minted with the admin API key and renewed before it
//! expires) for the shared rate stream.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use fxcast_proto::v1::{
    IssueTokenRequest, rate_service_client::RateServiceClient,
    token_service_client::TokenServiceClient,
};
use tokio::sync::Mutex;
use tonic::{
    Request, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// Adds one `authorization` value to every call.
#[derive(Clone, Debug)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    /// Forwards an HTTP `authorization` header value as is.
    pub fn header(value: &str) -> Result<Self, Status> {
        value.parse().map(|v| Self(Some(v))).map_err(|_| {
            Status::unauthenticated("malformed authorization header: expected `Bearer <token>`")
        })
    }

    /// `Bearer <token>`.
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

/// A channel with credentials.
pub type Authed = InterceptedService<Channel, Bearer>;

#[derive(Debug)]
struct CachedToken {
    token: String,
    expires_at: SystemTime,
}

/// The upstream gRPC services. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Upstream {
    channel: Channel,
    api_key: Arc<str>,
    service_token: Arc<Mutex<Option<CachedToken>>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    /// Wraps a channel; `api_key` lets the gateway mint its own tokens.
    pub fn new(channel: Channel, api_key: &str) -> Self {
        Self {
            channel,
            api_key: api_key.into(),
            service_token: Arc::new(Mutex::new(None)),
        }
    }

    /// A channel carrying `bearer`.
    pub fn with(&self, bearer: Bearer) -> Authed {
        InterceptedService::new(self.channel.clone(), bearer)
    }

    /// RateService as the caller identified by `bearer`.
    pub fn rates(&self, bearer: Bearer) -> RateServiceClient<Authed> {
        RateServiceClient::new(self.with(bearer))
    }

    /// TokenService as the caller identified by `bearer`.
    pub fn tokens(&self, bearer: Bearer) -> TokenServiceClient<Authed> {
        TokenServiceClient::new(self.with(bearer))
    }

    /// TokenService with the admin API key (the gateway issuing tokens itself).
    ///
    /// # Errors
    /// When the API key cannot be put in a header.
    pub fn admin_tokens(&self) -> Result<TokenServiceClient<Authed>, Status> {
        Ok(self.tokens(Bearer::token(&self.api_key)?))
    }

    /// The gateway's own token for streaming every symbol, renewed when less
    /// than a quarter of its life is left.
    ///
    /// # Errors
    /// The upstream's status when it refuses to issue one.
    pub async fn service_token(&self) -> Result<(String, SystemTime), Status> {
        let mut cached = self.service_token.lock().await;
        if let Some(token) = cached.as_ref()
            && token.expires_at > SystemTime::now() + Duration::from_secs(60)
        {
            return Ok((token.token.clone(), token.expires_at));
        }
        let response = self
            .admin_tokens()?
            .issue_token(IssueTokenRequest {
                subject: "gateway".into(),
                scopes: vec!["rates:subscribe=*".into()],
                ttl: Some(fxcast_proto::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            })
            .await?
            .into_inner();
        let expires_at = response
            .expires_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
        *cached = Some(CachedToken {
            token: response.token.clone(),
            expires_at,
        });
        Ok((response.token, expires_at))
    }
}
