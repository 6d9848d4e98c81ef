//! Pub/sub transports for fxcast.
//!
//! A [`Transport`] moves opaque, already-serialised payloads ([`Bytes`]) from
//! publishers to every subscriber of a topic. The rate publisher serialises a
//! tick once and the same bytes reach every subscriber; nothing here looks
//! inside a payload.
//!
//! Callers hold an `Arc<dyn Transport>` so the backend is chosen at run time
//! (`--transport memory|momento|nats|redis`) without changing them.
//!
//! # Layout
//! - [`Transport`], [`Subscription`], [`Delivery`]: the contract; [`Call`]
//!   is what each of its calls returns.
//! - [`MemoryTransport`]: the in-process backend (the embedded default).
//! - `health`: `HealthBoard`, what a network backend has failing now, as
//!   its [`TransportHealth`].
//! - `feeds`: the per-topic feeds of the Momento, NATS and Redis backends
//!   (one engine subscription per topic per process, fanned out locally),
//!   with the counters they share.
//! - `local`: a subscriber's end of an in-process broadcast (lag becomes a
//!   gap), shared by the memory backend, `feeds` and Momento's shards.
//! - `momento` (feature `momento`): `MomentoTransport`, topics on Momento
//!   Topics, retained payloads in a Momento cache, disposable subscriber
//!   tokens.
//! - `nats` (feature `nats`): `NatsTransport`, topics on NATS subjects
//!   through a JetStream stream (resume after reconnects), retained
//!   payloads in a JetStream key-value bucket.
//! - `redis` (feature `redis`): `RedisTransport`, live fan-out over Redis
//!   pub/sub, a Redis stream per topic to resume from after a reconnect,
//!   retained payloads as keys with a TTL.
//! - `net` (with `nats` or `redis`): TLS towards the server, URLs without
//!   credentials, and the `%XX` decoding of Redis URLs (in tests also the
//!   `=XX` of NATS subjects).
//! - [`Backoff`], [`BackoffPolicy`]: the capped, jittered retry schedule
//!   every reconnecting loop of fxcast waits on.
//! - [`Secret`]: a credential whose `Debug` is `<redacted>`, used by every
//!   setting that holds one across fxcast.
//! - [`MirroredTransport`]: one transport as the primary, every message also
//!   copied to a second one (`--momento-bridge`).
//! - `conformance` (feature `conformance`): the test suite every backend passes.
//!
//! The Momento-wire-compatible server the Momento backend is tested against
//! (`fxcast momento-local`) is its own crate, `fxcast-momento-local`.

#![forbid(unsafe_code)]

use std::{
    fmt,
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::watch;

mod backoff;
mod local;
mod memory;
mod mirror;
mod secret;

#[cfg(feature = "momento")]
pub mod momento;

#[cfg(feature = "nats")]
pub mod nats;

#[cfg(feature = "redis")]
pub mod redis;

#[cfg(any(feature = "momento", feature = "nats", feature = "redis"))]
mod feeds;
#[cfg(any(feature = "momento", feature = "nats", feature = "redis"))]
mod health;
#[cfg(any(feature = "nats", feature = "redis"))]
mod net;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use backoff::{Backoff, BackoffPolicy};
pub use memory::{MemoryConfig, MemoryTransport};
pub use mirror::MirroredTransport;
pub use secret::Secret;

/// A boxed future, so [`Transport`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a [`Transport`] call returns: a boxed future of its result.
pub type Call<'a, T> = BoxFuture<'a, Result<T, Error>>;

/// Errors a transport reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload is larger than the backend accepts.
    #[error("payload of {size} bytes exceeds the {limit}-byte limit of the {backend} transport")]
    PayloadTooLarge {
        /// Size of the refused payload.
        size: usize,
        /// Largest payload the backend accepts.
        limit: usize,
        /// Backend name.
        backend: &'static str,
    },
    /// The topic name is not acceptable to the backend.
    #[error("invalid topic name {topic:?}: {reason}")]
    InvalidTopic {
        /// The refused name.
        topic: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The backend cannot be reached or failed; the message says how.
    #[error("{backend} transport unavailable: {message}")]
    Unavailable {
        /// Backend name.
        backend: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A setting is out of range; the message says which.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// One published payload, in publish order for its topic.
    Message(Bytes),
    /// Some messages were not delivered to this subscriber. Publishers'
    /// payloads carry their own sequence numbers when exact recovery matters.
    Gap(Gap),
}

/// Messages a subscriber missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// How many messages were missed, when the backend knows.
    pub missed: Option<u64>,
    /// Why they were missed.
    pub cause: GapCause,
}

/// Why a [`Gap`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapCause {
    /// The subscriber read more slowly than messages were published and its
    /// bounded buffer overflowed; the oldest messages were dropped.
    Lagged,
    /// The backend lost its connection and resubscribed.
    Reconnected,
}

impl fmt::Display for Gap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = match self.cause {
            GapCause::Lagged => "subscriber lagged",
            GapCause::Reconnected => "transport reconnected",
        };
        match self.missed {
            Some(n) => write!(f, "{n} messages missed ({cause})"),
            None => write!(f, "messages may have been missed ({cause})"),
        }
    }
}

/// Whether a backend can currently deliver messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportHealth {
    /// Subscriptions and publishes work.
    Connected,
    /// A subscription or publish failed and the backend is retrying with
    /// backoff. Subscribers are told what they missed with a
    /// [`Delivery::Gap`] once it reconnects.
    Reconnecting {
        /// What failed, for readiness checks and logs.
        reason: String,
    },
}

impl TransportHealth {
    /// Whether this is [`TransportHealth::Connected`].
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected)
    }
}

/// Credentials with which a client (a browser) subscribes to topics directly
/// on the backend's service, bypassing fxcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberAccess {
    /// The credential, as the backend's client SDKs take it (for Momento a
    /// disposable token).
    pub token: Secret,
    /// When the credential stops working.
    pub expires_at: SystemTime,
    /// The namespace the topics live in (for Momento the cache name).
    pub namespace: String,
    /// The topics the credential may subscribe to, and nothing else.
    pub topics: Vec<String>,
    /// Where clients connect.
    pub endpoint: String,
    /// `None`: every payload published goes out on its topic. `Some(n)`:
    /// each topic carries at most `n` messages a second, the latest payload
    /// each time (conflation), so a payload's own sequence may jump by
    /// design; only what the backend announces as a discontinuity is lost.
    pub max_messages_per_second: Option<NonZeroU32>,
}

impl Error {
    /// [`Error::Unavailable`] of `backend`.
    #[must_use]
    pub fn unavailable(backend: &'static str, message: String) -> Self {
        Self::Unavailable { backend, message }
    }

    /// Awaits `call` for at most `timeout`. A failure, or no answer in
    /// time, is [`Error::Unavailable`] of `backend`, saying `what` was
    /// being done: `"{what}: {error}"` or `"{what}: no answer within {timeout:?}"`.
    ///
    /// # Errors
    /// As described.
    pub async fn within<T, E: std::fmt::Display>(
        backend: &'static str,
        timeout: Duration,
        what: impl std::fmt::Display,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Self> {
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Self::unavailable(backend, format!("{what}: {e}"))),
            Err(_) => Err(Self::unavailable(
                backend,
                format!("{what}: no answer within {timeout:?}"),
            )),
        }
    }

    /// [`Error::PayloadTooLarge`] when `payload` is over `limit` bytes.
    ///
    /// # Errors
    /// As described.
    pub fn check_size(backend: &'static str, payload: &[u8], limit: usize) -> Result<(), Self> {
        if payload.len() > limit {
            return Err(Self::PayloadTooLarge {
                size: payload.len(),
                limit,
                backend,
            });
        }
        Ok(())
    }
}

/// An edit of default settings, and what the refusal must say.
#[cfg(test)]
pub(crate) type Refused<C> = (fn(&mut C), &'static str);

/// Test helper of the backends' settings: the defaults pass, and each edit
/// of them is refused with a message containing its text.
#[cfg(test)]
pub(crate) fn assert_refused<C: Default>(
    validate: impl Fn(&C) -> Result<(), Error>,
    edits: &[Refused<C>],
) {
    assert!(validate(&C::default()).is_ok());
    for (edit, message) in edits {
        let mut config = C::default();
        edit(&mut config);
        let err = validate(&config).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
}

/// A pub/sub backend.
///
/// Contract (checked by the conformance suite):
/// - messages on one topic arrive in publish order; topics are independent;
/// - every live subscriber of a topic receives every message (fan-out);
/// - dropping a [`Subscription`] unsubscribes it;
/// - a subscriber that falls behind receives a [`Delivery::Gap`] and then the
///   newer messages, and what is buffered for it stays bounded.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Short backend name for logs and metrics (`"memory"`, `"momento"`).
    fn name(&self) -> &'static str;

    /// Publishes `payload` to every current subscriber of `topic`.
    ///
    /// Publishing to a topic nobody subscribes to succeeds and drops the
    /// payload.
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`], [`Error::InvalidTopic`], or
    /// [`Error::Unavailable`] when a network backend cannot deliver it.
    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()>;

    /// Subscribes to `topic`: the subscription receives messages published
    /// after this call returns.
    ///
    /// # Errors
    /// [`Error::InvalidTopic`] or [`Error::Unavailable`].
    fn subscribe<'a>(&'a self, topic: &'a str) -> Call<'a, Subscription>;

    /// Number of live subscriptions to `topic` held in this process.
    fn local_subscribers(&self, topic: &str) -> usize;

    /// The backend's connection state, updated as it changes (readiness and
    /// gRPC health follow it). In-process backends are always connected.
    fn health(&self) -> watch::Receiver<TransportHealth> {
        watch::channel(TransportHealth::Connected).1
    }

    /// Keeps `payload` as the latest of `topic` in storage shared by every
    /// process on the backend, so a process that starts later can read it
    /// at once with [`Transport::retained`] (like MQTT's retained messages).
    /// Backends without shared storage keep nothing: each process already
    /// holds what it published or received.
    ///
    /// # Errors
    /// [`Error::PayloadTooLarge`], [`Error::InvalidTopic`], or
    /// [`Error::Unavailable`].
    fn retain<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        let _ = (topic, payload);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Like [`Transport::retain`], for state that must outlive the
    /// backend's own retention of latest payloads (revocations in force):
    /// the payload is kept for at least `keep`, and may be larger than
    /// one message (up to what the backend's storage holds in one item).
    /// Backends whose retained payloads expire must override this; the
    /// provided method is [`Transport::retain`].
    ///
    /// # Errors
    /// As [`Transport::retain`].
    fn retain_for<'a>(&'a self, topic: &'a str, payload: Bytes, keep: Duration) -> Call<'a, ()> {
        let _ = keep;
        self.retain(topic, payload)
    }

    /// The payload last retained for `topic` in shared storage, if the
    /// backend has such storage and it still holds one.
    ///
    /// # Errors
    /// [`Error::InvalidTopic`] or [`Error::Unavailable`].
    fn retained<'a>(&'a self, topic: &'a str) -> Call<'a, Option<Bytes>> {
        let _ = topic;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Mints a credential that may subscribe to `topics` on the backend's
    /// service directly and do nothing else, valid for `valid_for`; `None`
    /// when the backend has no service clients could reach.
    ///
    /// # Errors
    /// [`Error::InvalidTopic`], [`Error::InvalidConfig`] for an unusable
    /// lifetime, or [`Error::Unavailable`].
    fn subscriber_access<'a>(
        &'a self,
        topics: &'a [String],
        valid_for: Duration,
    ) -> Call<'a, Option<SubscriberAccess>> {
        let _ = (topics, valid_for);
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// A live subscription to one topic; a [`Stream`] of [`Delivery`].
///
/// The stream ends when the transport shuts down. Dropping it unsubscribes.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Delivery> + Send>>,
}

impl Subscription {
    /// Wraps a backend's stream.
    pub fn new(stream: impl Stream<Item = Delivery> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }

    /// The next delivery, or `None` once the transport has shut down.
    pub async fn next(&mut self) -> Option<Delivery> {
        futures_util::StreamExt::next(self).await
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Checks a topic name: 1–256 printable ASCII characters without spaces,
/// the common subset that Momento, NATS and Redis all accept.
///
/// # Errors
/// [`Error::InvalidTopic`] saying what is wrong.
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    let reason = if topic.is_empty() {
        "topic is empty"
    } else if topic.len() > 256 {
        "topic is longer than 256 bytes"
    } else if !topic.bytes().all(|b| b.is_ascii_graphic()) {
        "topic must be printable ASCII without spaces"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    })
}
