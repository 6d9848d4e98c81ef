//! The tower layer that authenticates every gRPC call.
//!
//! One layer in front of all services: health and reflection are open; token
//! management accepts the admin API key or a token (and, for `IssueToken`,
//! no credentials at all, which the handler then judges); everything else
//! needs a valid token. The handler sees the result as a [`Caller`]
//! request extension, so no service parses credentials itself.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{
    Status,
    codegen::http::{Request, Response, header::AUTHORIZATION},
};
use tower::{Layer, Service};

use super::TokenAuthority;

/// What a path requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// No credentials needed.
    Open,
    /// Credentials optional; when sent they must be valid (API key allowed).
    Optional,
    /// A valid token or the API key.
    TokenOrApiKey,
    /// A valid token.
    Token,
}

fn policy(path: &str) -> Policy {
    if path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
    {
        Policy::Open
    } else if path == "/fxcast.v1.TokenService/IssueToken" {
        Policy::Optional
    } else if path.starts_with("/fxcast.v1.TokenService/") {
        Policy::TokenOrApiKey
    } else {
        Policy::Token
    }
}

/// Adds [`AuthService`] in front of a service.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authority: TokenAuthority,
}

impl AuthLayer {
    /// A layer verifying credentials with `authority`.
    pub fn new(authority: TokenAuthority) -> Self {
        Self { authority }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authority: self.authority.clone(),
        }
    }
}

/// Authenticates each request, then calls the inner service.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    authority: TokenAuthority,
}

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let policy = policy(request.uri().path());
        let header = request
            .headers()
            .get(AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        let outcome = match (policy, header) {
            (Policy::Open, _) | (Policy::Optional, None) => Ok(None),
            (Policy::Optional | Policy::TokenOrApiKey, header) => {
                self.authority.authenticate(header, true).map(Some)
            }
            (Policy::Token, header) => self.authority.authenticate(header, false).map(Some),
        };
        match outcome {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                // Standard tower pattern: call the clone that was driven to
                // readiness, keep a fresh clone for the next call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(err) => {
                let response = Status::from(err).into_http();
                Box::pin(std::future::ready(Ok(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_policies() {
        assert_eq!(policy("/grpc.health.v1.Health/Check"), Policy::Open);
        assert_eq!(
            policy("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Policy::Open
        );
        assert_eq!(
            policy("/fxcast.v1.TokenService/IssueToken"),
            Policy::Optional
        );
        assert_eq!(
            policy("/fxcast.v1.TokenService/RevokeToken"),
            Policy::TokenOrApiKey
        );
        assert_eq!(policy("/fxcast.v1.RateService/StreamRates"), Policy::Token);
        assert_eq!(policy("/anything/else"), Policy::Token);
    }
}
