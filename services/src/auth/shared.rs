//! Revocations shared between servers that accept the same tokens.
//!
//! A server that revokes a token announces it on
//! [`REVOCATIONS_TOPIC`](super::REVOCATIONS_TOPIC) (its peers refuse the
//! token at once and end its streams) and retains the whole set in force on
//! the transport's shared storage, so a server that starts later refuses
//! the token from its first request. The retained set is rewritten by every
//! server that learns a revocation it did not have, so concurrent
//! revocations on different servers converge to their union; a follower
//! that misses announcements (a gap) reads the retained set again.
//!
//! On an in-process transport there are no peers and nothing is retained.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use fxcast_transport::{Backoff, BackoffPolicy, Delivery, Subscription, Transport};
use tokio_util::sync::CancellationToken;

use super::{REVOCATIONS_TOPIC, TokenAuthority};

/// A revocation as announced on [`REVOCATIONS_TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RevocationMessage {
    /// The revoked token id.
    pub token_id: String,
    /// When the revocation lapses (Unix seconds).
    pub expires_at: u64,
}

/// Every revocation in force, as retained on [`REVOCATIONS_TOPIC`].
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct RetainedRevocations {
    revocations: Vec<RevocationMessage>,
}

/// How long a retained read may take at start before the server serves
/// without it (and keeps trying in the background).
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Announces `token_id`'s revocation to the other servers on `transport`
/// and retains the set in force. Revoked here whatever happens: when the
/// transport fails, both are retried in the background with backoff until
/// they succeed or `shutdown`, so servers that were cut off learn it once
/// the transport is back.
pub(super) async fn announce(
    transport: &Arc<dyn Transport>,
    authority: &TokenAuthority,
    token_id: &str,
    shutdown: &CancellationToken,
) {
    let message = RevocationMessage {
        token_id: token_id.to_owned(),
        expires_at: SystemTime::now()
            .checked_add(authority.config().max_ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(u64::MAX, |d| d.as_secs()),
    };
    let payload =
        bytes::Bytes::from(serde_json::to_vec(&message).expect("a revocation serialises"));
    if try_announce(&**transport, authority, &payload)
        .await
        .is_ok()
    {
        return;
    }
    let (transport, authority, shutdown) =
        (Arc::clone(transport), authority.clone(), shutdown.clone());
    let token_id = token_id.to_owned();
    tokio::spawn(async move {
        let mut backoff = Backoff::new(BackoffPolicy::new(
            Duration::from_millis(200),
            Duration::from_secs(30),
        ));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
            if try_announce(&*transport, &authority, &payload)
                .await
                .is_ok()
            {
                tracing::info!(%token_id, "announced the revocation to other servers after retrying");
                return;
            }
        }
    });
}

/// Publishes one announcement and retains the set in force.
async fn try_announce(
    transport: &dyn Transport,
    authority: &TokenAuthority,
    payload: &bytes::Bytes,
) -> Result<(), fxcast_transport::Error> {
    if let Err(err) = transport.publish(REVOCATIONS_TOPIC, payload.clone()).await {
        tracing::warn!(error = %err, "could not announce a revocation to other servers; retrying");
        return Err(err);
    }
    retain(transport, authority).await
}

/// Writes every revocation in force to `transport`'s shared storage, kept
/// until the last of them lapses.
async fn retain(
    transport: &dyn Transport,
    authority: &TokenAuthority,
) -> Result<(), fxcast_transport::Error> {
    let now = unix_now();
    let revocations: Vec<_> = authority
        .revocations()
        .into_iter()
        .filter(|r| r.expires_at > now)
        .map(|r| RevocationMessage {
            token_id: r.token_id.to_string(),
            expires_at: r.expires_at,
        })
        .collect();
    let Some(last) = revocations.iter().map(|r| r.expires_at).max() else {
        return Ok(());
    };
    let keep_for = Duration::from_secs(last - now);
    let count = revocations.len();
    let payload =
        serde_json::to_vec(&RetainedRevocations { revocations }).expect("revocations serialise");
    match transport
        .retain_for(REVOCATIONS_TOPIC, payload.into(), keep_for)
        .await
    {
        Ok(()) => {
            tracing::debug!(count, "retained the revocations in force");
            Ok(())
        }
        Err(err) => {
            tracing::warn!(error = %err, "could not retain the revocations for servers that start later");
            Err(err)
        }
    }
}

/// Applies one revocation received from another server, capped at the
/// longest a token can live from now (and no overflow from a hostile
/// value). Whether it was new to this server.
fn apply(authority: &TokenAuthority, message: &RevocationMessage) -> bool {
    let longest = SystemTime::now() + authority.config().max_ttl;
    let until = UNIX_EPOCH
        .checked_add(Duration::from_secs(message.expires_at))
        .map_or(longest, |until| until.min(longest));
    let new = !authority.is_revoked(&message.token_id);
    match authority.apply_revocation(&message.token_id, until) {
        Ok(()) => new && authority.is_revoked(&message.token_id),
        Err(err) => {
            tracing::warn!(token_id = %message.token_id, error = %err, "cannot apply a shared revocation");
            false
        }
    }
}

/// Applies the revocations retained on `transport` to `authority`; how many
/// were new here.
///
/// # Errors
/// When the transport cannot be read; a malformed retained set is logged
/// and ignored.
pub async fn load_retained_revocations(
    transport: &dyn Transport,
    authority: &TokenAuthority,
) -> Result<usize, fxcast_transport::Error> {
    let Some(payload) = transport.retained(REVOCATIONS_TOPIC).await? else {
        return Ok(0);
    };
    let set: RetainedRevocations = match serde_json::from_slice(&payload) {
        Ok(set) => set,
        Err(err) => {
            tracing::warn!(error = %err, "ignoring a malformed retained revocation set");
            return Ok(0);
        }
    };
    let new = set
        .revocations
        .iter()
        .filter(|message| apply(authority, message))
        .count();
    if new > 0 {
        tracing::info!(new, "applied revocations retained by other servers");
    }
    Ok(new)
}

/// Applies the revocations other servers announce on `transport` to
/// `authority` until `shutdown`, so a token revoked on one server sharing
/// the signing keys is refused by all of them (and their open streams end).
///
/// `subscribed` is the topic's subscription when the caller already holds
/// one (so nothing announced after its start is missed); otherwise this
/// subscribes, retrying with backoff. `loaded` says whether the retained set
/// was already read; if not, this reads it, retrying with backoff.
async fn follow_shared_revocations(
    transport: Arc<dyn Transport>,
    authority: TokenAuthority,
    shutdown: CancellationToken,
    subscribed: Option<Subscription>,
    loaded: bool,
) {
    // Retried with capped backoff: a transport that is down at start comes
    // back, and revocations must not be ignored for the rest of the run.
    let policy = BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut backoff = Backoff::new(policy);
    let mut subscription = if let Some(subscription) = subscribed {
        subscription
    } else {
        loop {
            match transport.subscribe(REVOCATIONS_TOPIC).await {
                Ok(subscription) => break subscription,
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, retry_in = ?delay, "cannot follow other servers' revocations yet");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    };
    // When the retained set must be read (again), and the backoff of those
    // reads.
    let mut reload = (!loaded).then(tokio::time::Instant::now);
    let mut reload_backoff = Backoff::new(policy);
    loop {
        let reload_at = async {
            match reload {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let delivery = tokio::select! {
            () = shutdown.cancelled() => return,
            () = reload_at => {
                match load_retained_revocations(&*transport, &authority).await {
                    Ok(_) => {
                        reload = None;
                        reload_backoff = Backoff::new(policy);
                    }
                    Err(err) => {
                        let delay = reload_backoff.next_delay();
                        tracing::warn!(error = %err, retry_in = ?delay, "cannot read the revocations other servers retained yet");
                        reload = Some(tokio::time::Instant::now() + delay);
                    }
                }
                continue;
            }
            delivery = subscription.next() => delivery,
        };
        match delivery {
            Some(Delivery::Message(payload)) => {
                match serde_json::from_slice::<RevocationMessage>(&payload) {
                    // New here: the retained set may lack it (revoked
                    // concurrently with another), so this server rewrites it.
                    Ok(message) if apply(&authority, &message) => {
                        // A failure is logged; the revoking server retries.
                        let _ = retain(&*transport, &authority).await;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "ignoring a malformed revocation message");
                    }
                }
            }
            Some(Delivery::Gap(gap)) => {
                tracing::warn!(%gap, "missed revocations announced by other servers; reading the retained set");
                reload.get_or_insert_with(tokio::time::Instant::now);
            }
            None => return,
        }
    }
}

/// Subscribes to other servers' revocations and reads the retained set
/// (within a few seconds) before returning, so a server that reports itself
/// started already refuses every token revoked elsewhere; then follows them
/// in a task on `tasks`. What fails here is retried by the follower.
pub async fn start_following(
    transport: &Arc<dyn Transport>,
    authority: &TokenAuthority,
    shutdown: &CancellationToken,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let subscribed = match transport.subscribe(REVOCATIONS_TOPIC).await {
        Ok(subscription) => Some(subscription),
        Err(err) => {
            tracing::warn!(error = %err, "cannot follow other servers' revocations yet; retrying");
            None
        }
    };
    let loaded = match tokio::time::timeout(
        LOAD_TIMEOUT,
        load_retained_revocations(&**transport, authority),
    )
    .await
    {
        Ok(Ok(_)) => true,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "cannot read the revocations other servers retained; retrying");
            false
        }
        Err(_) => {
            tracing::warn!(timeout = ?LOAD_TIMEOUT, "no answer reading the revocations other servers retained; retrying");
            false
        }
    };
    tasks.spawn(follow_shared_revocations(
        Arc::clone(transport),
        authority.clone(),
        shutdown.clone(),
        subscribed,
        loaded,
    ));
}
