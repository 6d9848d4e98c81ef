//! Token revocations learnt from the upstream (`TokenService/WatchRevocations`),
//! so a WebSocket or SSE connection ends as soon as its token is revoked,
//! not only when it expires.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use fxcast_proto::v1::WatchRevocationsRequest;
use fxcast_services::auth::until_revoked;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::upstream::{Upstream, follow_stream};

/// Revocations buffered per connection before it lags (and re-reads the set).
const CAPACITY: usize = 256;

/// The revoked token ids this gateway knows of. A cheap `Clone` handle.
#[derive(Clone)]
pub(crate) struct Revocations {
    /// Token id -> when the revocation lapses.
    known: Arc<RwLock<HashMap<Arc<str>, SystemTime>>>,
    news: broadcast::Sender<Arc<str>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            known: Arc::default(),
            news: broadcast::Sender::new(CAPACITY),
        }
    }
}

impl Revocations {
    fn is_revoked(&self, token_id: &str) -> bool {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(token_id)
    }

    /// Records a revocation and tells the open connections.
    fn revoke(&self, token_id: &str, expires_at: SystemTime) {
        let id: Arc<str> = token_id.into();
        {
            let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
            let now = SystemTime::now();
            known.retain(|_, lapses| *lapses >= now);
            known.insert(Arc::clone(&id), expires_at);
        }
        // Known first, then announced: a connection that subscribes and then
        // checks the set never misses it. No connection is not an error.
        let _ = self.news.send(id);
    }

    /// Completes once `token_id` is revoked (at once if it already is);
    /// never for `None`. Starts watching at once, not when first polled.
    pub(crate) fn revoked(
        &self,
        token_id: Option<&str>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let news = self.news.subscribe();
        let this = self.clone();
        let token_id: Option<Arc<str>> = token_id.map(Into::into);
        async move {
            let Some(token_id) = token_id else {
                return std::future::pending().await;
            };
            let names_it = |id: &Arc<str>| *id == token_id;
            until_revoked(news, names_it, || this.is_revoked(&token_id)).await;
        }
    }

    /// Follows the upstream's revocations until `stop`, reconnecting with
    /// capped backoff. An upstream without `WatchRevocations` (an older
    /// fxcast) is logged once; connections then end only at expiry.
    pub(crate) async fn follow(self, upstream: Upstream, stop: CancellationToken) {
        let (this, upstream) = (&self, &upstream);
        follow_stream(&stop, || this.follow_once(upstream), |outcome, backoff| match outcome {
            Ok(()) => {
                backoff.reset();
                Some(backoff.next_delay())
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::warn!(
                    "the upstream does not offer WatchRevocations: revoked tokens' streams end only when they expire"
                );
                None
            }
            Err(status) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    code = ?status.code(),
                    message = status.message(),
                    retry_in = ?delay,
                    "revocation watch lost; reconnecting"
                );
                Some(delay)
            }
        })
        .await;
    }

    /// One watch stream, until it ends.
    async fn follow_once(&self, upstream: &Upstream) -> Result<(), tonic::Status> {
        let mut stream = upstream
            .admin_tokens()?
            .watch_revocations(WatchRevocationsRequest {})
            .await?
            .into_inner();
        while let Some(revocation) = stream.message().await? {
            let lapses = revocation
                .expires_at
                .and_then(|t| SystemTime::try_from(t).ok())
                .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(24 * 3600));
            if !self.is_revoked(&revocation.token_id) {
                tracing::info!(token_id = %revocation.token_id, "token revoked upstream; closing its connections");
            }
            self.revoke(&revocation.token_id, lapses);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[tokio::test]
    async fn a_watcher_completes_when_its_token_is_revoked_and_not_for_others() {
        let revocations = Revocations::default();
        let mine = revocations.revoked(Some("t1"));
        let none = revocations.revoked(None);
        revocations.revoke("t2", SystemTime::now() + Duration::from_secs(60));
        tokio::pin!(mine, none);
        assert!(mine.as_mut().now_or_never().is_none(), "t2 is not t1");
        revocations.revoke("t1", SystemTime::now() + Duration::from_secs(60));
        tokio::time::timeout(Duration::from_secs(5), &mut mine)
            .await
            .expect("revocation of t1 seen");
        assert!(none.as_mut().now_or_never().is_none());
        // Already revoked: completes at once.
        revocations.revoked(Some("t2")).await;
    }

    #[tokio::test]
    async fn a_lagging_watcher_still_sees_its_revocation() {
        let revocations = Revocations::default();
        let mine = revocations.revoked(Some("target"));
        for n in 0..CAPACITY * 2 {
            revocations.revoke(
                &format!("other-{n}"),
                SystemTime::now() + Duration::from_secs(60),
            );
        }
        revocations.revoke("target", SystemTime::now() + Duration::from_secs(60));
        tokio::time::timeout(Duration::from_secs(5), mine)
            .await
            .expect("revocation seen after lagging");
    }
}
