//! The tonic implementation of `fxcast.v1.TokenService`.

use std::{
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, SystemTime},
};

use std::pin::Pin;

use futures_util::Stream;
use fxcast_proto::v1::{
    IssueMomentoAccessRequest, IssueTokenRequest, IssueTokenResponse, MomentoAccess, Revocation,
    RevokeTokenRequest, RevokeTokenResponse, WatchRevocationsRequest,
    token_service_server::TokenService,
};
use fxcast_transport::Transport;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{Caller, IssuedToken, Scope, Scopes, TokenAuthority};
use crate::{Error, rates_topic};

/// `TokenService` over a [`TokenAuthority`].
#[derive(Debug, Clone)]
pub struct TokenServiceImpl {
    authority: TokenAuthority,
    direct: Option<DirectAccess>,
    shutdown: CancellationToken,
    /// Where revocations are announced to other servers.
    shared_revocations: Option<Arc<dyn Transport>>,
}

/// Where tokens that may subscribe to rates also get direct access.
#[derive(Debug, Clone)]
struct DirectAccess {
    transport: Arc<dyn Transport>,
    symbols: Arc<[String]>,
}

impl TokenServiceImpl {
    /// Creates the service.
    pub fn new(authority: TokenAuthority) -> Self {
        Self {
            authority,
            direct: None,
            shutdown: CancellationToken::new(),
            shared_revocations: None,
        }
    }

    /// Announces every revocation on `transport`'s
    /// [`REVOCATIONS_TOPIC`](super::REVOCATIONS_TOPIC), for the other servers
    /// that accept the same tokens.
    pub fn with_shared_revocations(mut self, transport: Arc<dyn Transport>) -> Self {
        self.shared_revocations = Some(transport);
        self
    }

    /// Ends `WatchRevocations` streams with `UNAVAILABLE` when `shutdown` is
    /// cancelled, so a graceful server shutdown never waits on them.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Also hands out, with every token that may subscribe to some of
    /// `symbols`, a credential of `transport` that may subscribe to just
    /// those rates topics, when the transport offers one (Momento: a
    /// disposable token, so browsers subscribe with Momento's web SDK).
    pub fn with_subscriber_access(
        mut self,
        transport: Arc<dyn Transport>,
        symbols: Vec<String>,
    ) -> Self {
        self.direct = Some(DirectAccess {
            transport,
            symbols: symbols.into(),
        });
        self
    }

    async fn response(&self, issued: IssuedToken) -> IssueTokenResponse {
        let momento = self.momento_access(&issued).await;
        IssueTokenResponse {
            token: issued.token,
            token_id: issued.token_id,
            expires_at: Some(issued.expires_at.into()),
            subject: issued.subject,
            scopes: issued.scopes.0.iter().map(ToString::to_string).collect(),
            momento,
        }
    }

    /// Direct access for `issued`, living as long as it at most. A failure
    /// leaves the fxcast token usable without it.
    async fn momento_access(&self, issued: &IssuedToken) -> Option<MomentoAccess> {
        match self
            .direct_access(&issued.scopes, Some(issued.expires_at))
            .await
        {
            Ok(Direct::Granted(access)) => Some(access),
            Ok(Direct::NoRates | Direct::NotOffered) => None,
            Err(err) => {
                tracing::warn!(
                    subject = %issued.subject,
                    error = %err,
                    "could not mint a subscriber token; issuing the token without one"
                );
                None
            }
        }
    }

    /// A credential of the transport for the rates topics `scopes` may see,
    /// living until `expires_at` at most (the backend caps it further);
    /// or why there is none.
    async fn direct_access(
        &self,
        scopes: &Scopes,
        expires_at: Option<SystemTime>,
    ) -> Result<Direct, fxcast_transport::Error> {
        let Some(direct) = self.direct.as_ref() else {
            return Ok(Direct::NotOffered);
        };
        let topics: Vec<String> = direct
            .symbols
            .iter()
            .filter(|symbol| scopes.may_subscribe(symbol))
            .map(|symbol| rates_topic(symbol))
            .collect();
        if topics.is_empty() {
            return Ok(Direct::NoRates);
        }
        // The API key never expires: the backend's own cap applies.
        let valid_for = match expires_at {
            Some(at) => match at.duration_since(SystemTime::now()) {
                Ok(left) => left,
                Err(_) => return Ok(Direct::NoRates),
            },
            None => self.authority.config().max_ttl,
        };
        let access = direct
            .transport
            .subscriber_access(&topics, valid_for)
            .await?;
        Ok(match access {
            Some(access) => Direct::Granted(MomentoAccess {
                token: access.token.expose().to_owned(),
                expires_at: Some(access.expires_at.into()),
                cache_name: access.namespace,
                topics: access.topics,
                endpoint: access.endpoint,
                max_messages_per_second: access.max_messages_per_second.map_or(0, NonZeroU32::get),
            }),
            None => Direct::NotOffered,
        })
    }
}

/// What [`TokenServiceImpl::direct_access`] found.
enum Direct {
    Granted(MomentoAccess),
    /// The caller's scopes see no rates (or its token has lapsed).
    NoRates,
    /// The transport hands out no credentials of its own.
    NotOffered,
}

fn parse_ttl(ttl: Option<prost_types::Duration>) -> Result<Option<Duration>, Status> {
    ttl.map(|d| {
        if d.seconds < 0 || d.nanos < 0 {
            Err(Status::invalid_argument("ttl must be positive"))
        } else {
            Ok(Duration::new(d.seconds as u64, d.nanos as u32))
        }
    })
    .transpose()
}

fn revocation(revoked: &super::Revoked) -> Revocation {
    Revocation {
        token_id: revoked.token_id.to_string(),
        expires_at: Some(fxcast_proto::Timestamp {
            seconds: i64::try_from(revoked.expires_at).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }
}

type RevocationStream = Pin<Box<dyn Stream<Item = Result<Revocation, Status>> + Send>>;

#[tonic::async_trait]
impl TokenService for TokenServiceImpl {
    type WatchRevocationsStream = RevocationStream;

    async fn issue_token(
        &self,
        request: Request<IssueTokenRequest>,
    ) -> Result<Response<IssueTokenResponse>, Status> {
        let Some(caller) = request.extensions().get::<Caller>().cloned() else {
            // No credentials: only a loopback browser may get an anonymous token.
            let issued = self
                .authority
                .issue_anonymous(request.remote_addr().map(|a| a.ip()))?;
            tracing::info!(subject = %issued.subject, token_id = %issued.token_id, "issued anonymous token");
            return Ok(Response::new(self.response(issued).await));
        };
        caller.require(&Scope::TokensIssue)?;
        let request = request.into_inner();
        let scopes = request
            .scopes
            .iter()
            .map(|s| {
                s.parse::<Scope>()
                    .map_err(|e| Status::invalid_argument(format!("scopes: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Scopes)?;
        if !caller.scopes.covers(&scopes) {
            return Err(Status::permission_denied(format!(
                "cannot issue scopes {}: the caller only has \"{}\"",
                crate::quote::quoted(&scopes.to_string()),
                caller.scopes
            )));
        }
        let mut ttl = parse_ttl(request.ttl)?;
        // A token never outlives the token that issued it: a ttl asked for is
        // refused when it would; the default is shortened to fit.
        if let Some(expires) = caller.expires_at {
            let left = expires
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            match ttl {
                Some(asked) if asked > left => {
                    return Err(Status::invalid_argument(
                        "ttl would outlive the issuing token; ask for a shorter ttl",
                    ));
                }
                None if left < Duration::from_secs(1) => {
                    return Err(Status::invalid_argument(
                        "the issuing token expires in under a second; issue with a fresh one",
                    ));
                }
                None if self.authority.config().default_ttl > left => ttl = Some(left),
                _ => {}
            }
        }
        let issued = self
            .authority
            .issue(&request.subject, scopes, ttl)
            .map_err(Status::from)?;
        tracing::info!(
            issuer = %caller.subject,
            subject = %issued.subject,
            token_id = %issued.token_id,
            scopes = %issued.scopes,
            "issued token"
        );
        Ok(Response::new(self.response(issued).await))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let caller = Caller::with_scope(&request, &Scope::TokensIssue)?.clone();
        let token_id = request.into_inner().token_id;
        self.authority.revoke(&token_id).map_err(|e| match e {
            Error::InvalidArgument(_) => Status::from(e),
            other => {
                tracing::error!(error = %other, "cannot store revocation");
                Status::internal("cannot store the revocation")
            }
        })?;
        tracing::info!(by = %caller.subject, %token_id, "revoked token");
        if let Some(transport) = &self.shared_revocations {
            super::shared::announce(transport, &self.authority, &token_id, &self.shutdown).await;
        }
        Ok(Response::new(RevokeTokenResponse {}))
    }

    async fn issue_momento_access(
        &self,
        request: Request<IssueMomentoAccessRequest>,
    ) -> Result<Response<MomentoAccess>, Status> {
        let caller = Caller::of(&request)?;
        match self.direct_access(&caller.scopes, caller.expires_at).await {
            Ok(Direct::Granted(access)) => {
                tracing::debug!(subject = %caller.subject, "issued a fresh Momento token");
                Ok(Response::new(access))
            }
            Ok(Direct::NotOffered) => Err(Status::failed_precondition(
                "no direct Momento access for this token: the server runs neither --transport \
                 momento nor --momento-bridge, or its --momento-board shows every symbol and \
                 the token may see only some",
            )),
            Ok(Direct::NoRates) => Err(Status::permission_denied(
                "the token may subscribe to no rates, so it gets no Momento access",
            )),
            Err(err) => {
                tracing::warn!(subject = %caller.subject, error = %err, "could not mint a Momento token");
                Err(Status::unavailable(format!(
                    "cannot mint a Momento token: {err}"
                )))
            }
        }
    }

    async fn watch_revocations(
        &self,
        request: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let caller = Caller::with_scope(&request, &Scope::TokensIssue)?.clone();
        // Subscribe before reading the set: nothing falls between the two.
        let mut news = self.authority.watch_revocations();
        let authority = self.authority.clone();
        let shutdown = self.shutdown.clone();
        tracing::info!(subject = %caller.subject, "revocation watcher connected");
        let stream = async_stream::stream! {
            for revoked in authority.revocations() {
                yield Ok(revocation(&revoked));
            }
            loop {
                let next = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => {
                        yield Err(Status::unavailable("server is shutting down; reconnect to keep watching"));
                        break;
                    }
                    next = news.recv() => next,
                };
                match next {
                    Ok(revoked) => yield Ok(revocation(&revoked)),
                    // Missed some: send the whole set again (watchers apply
                    // revocations idempotently).
                    Err(RecvError::Lagged(_)) => {
                        for revoked in authority.revocations() {
                            yield Ok(revocation(&revoked));
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
