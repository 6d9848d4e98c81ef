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
pub use fxcast_proto::{Authed, Bearer};
use fxcast_transport::{Backoff, BackoffPolicy};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::{Status, transport::Channel};

/// Waits between the attempts of a stream follower: 100 ms doubling to 5 s.
const FOLLOW_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

/// The endpoint of the upstream services at `url`, as every gateway
/// connects to it: no Nagle delay on small tick frames, and HTTP/2
/// keepalives so long-lived streams (ticks, revocations) notice a dead
/// connection within half a minute even when nothing is sent.
///
/// # Errors
/// [`crate::Error::UpstreamAddress`] when `url` is not a usable URI.
pub fn upstream_endpoint(url: &str) -> Result<tonic::transport::Endpoint, crate::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| crate::Error::UpstreamAddress(format!("{url:?}: {e}")))?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Keeps one of the upstream's long-lived streams open until `stop`: runs
/// `stream` again after every end. `ended` is told how each run ended and
/// returns the delay before the next one, taken from the follower's backoff
/// (100 ms doubling to 5 s), or `None` to give up.
pub(crate) async fn follow_stream<F: Future<Output = Result<(), Status>>>(
    stop: &CancellationToken,
    mut stream: impl FnMut() -> F,
    mut ended: impl FnMut(Result<(), Status>, &mut Backoff) -> Option<Duration>,
) {
    let mut backoff = Backoff::new(FOLLOW_BACKOFF);
    loop {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = stream() => outcome,
        };
        let Some(delay) = ended(outcome, &mut backoff) else {
            return;
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[derive(Debug)]
struct CachedToken {
    token: String,
    expires_at: SystemTime,
    /// When a quarter of its life is left.
    renew_at: SystemTime,
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
        fxcast_proto::authed(self.channel.clone(), bearer)
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
            && SystemTime::now() < token.renew_at
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
        let now = SystemTime::now();
        let expires_at = response
            .expires_at
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or_else(|| now + Duration::from_secs(3600));
        let life = expires_at.duration_since(now).unwrap_or_default();
        *cached = Some(CachedToken {
            token: response.token.clone(),
            expires_at,
            renew_at: now + life * 3 / 4,
        });
        Ok((response.token, expires_at))
    }
}
