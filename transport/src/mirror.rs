//! A primary transport whose messages are also copied to a second one.
//!
//! `fxcast serve --momento-bridge` runs on the in-process transport (local
//! gRPC, WebSocket and SSE clients keep in-process latency) and mirrors every
//! rate to Momento Topics, where browsers and remote consumers read it. The
//! mirror is written to, never read from: subscriptions are the primary's.
//!
//! A failing mirror never fails the primary: its errors are logged, and its
//! health is what [`Transport::health`] reports (the primary, in-process, is
//! always connected). The mirror should pace its own publishes (the Momento
//! backend conflates per topic in the background), so copying costs the
//! publishing task nothing but a hand-off.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::watch;

use crate::{Call, Error, SubscriberAccess, Subscription, Transport, TransportHealth};

/// Publishes to `primary` and copies messages of topics starting with a
/// prefix to `mirror`.
#[derive(Debug, Clone)]
pub struct MirroredTransport {
    primary: Arc<dyn Transport>,
    mirror: Arc<dyn Transport>,
    prefix: Arc<str>,
    failures: Arc<AtomicU64>,
}

impl MirroredTransport {
    /// Mirrors topics starting with `prefix` (`"rates."`; `""` for all) from
    /// `primary` to `mirror`.
    pub fn new(primary: Arc<dyn Transport>, mirror: Arc<dyn Transport>, prefix: &str) -> Self {
        Self {
            primary,
            mirror,
            prefix: prefix.into(),
            failures: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Messages the mirror refused since start.
    pub fn mirror_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn mirrored(&self, topic: &str) -> bool {
        topic.starts_with(&*self.prefix)
    }

    fn mirror_failed(&self, what: &str, topic: &str, err: &Error) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        // The first failure, then every 100th: a mirror that is down must
        // not flood the log at the tick rate.
        if failures == 1 || failures.is_multiple_of(100) {
            tracing::warn!(
                backend = self.mirror.name(),
                %topic,
                error = %err,
                failures,
                "could not {what} to the mirror transport"
            );
        }
    }
}

impl Transport for MirroredTransport {
    fn name(&self) -> &'static str {
        self.primary.name()
    }

    fn publish<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        Box::pin(async move {
            let copy = self.mirrored(topic).then(|| payload.clone());
            self.primary.publish(topic, payload).await?;
            if let Some(copy) = copy
                && let Err(err) = self.mirror.publish(topic, copy).await
            {
                self.mirror_failed("publish", topic, &err);
            }
            Ok(())
        })
    }

    fn subscribe<'a>(&'a self, topic: &'a str) -> Call<'a, Subscription> {
        self.primary.subscribe(topic)
    }

    fn local_subscribers(&self, topic: &str) -> usize {
        self.primary.local_subscribers(topic)
    }

    fn health(&self) -> watch::Receiver<TransportHealth> {
        self.mirror.health()
    }

    fn retain<'a>(&'a self, topic: &'a str, payload: Bytes) -> Call<'a, ()> {
        Box::pin(async move {
            if !self.mirrored(topic) {
                return self.primary.retain(topic, payload).await;
            }
            self.primary.retain(topic, payload.clone()).await?;
            if let Err(err) = self.mirror.retain(topic, payload).await {
                self.mirror_failed("retain", topic, &err);
            }
            Ok(())
        })
    }

    fn retain_for<'a>(&'a self, topic: &'a str, payload: Bytes, keep: Duration) -> Call<'a, ()> {
        Box::pin(async move {
            if !self.mirrored(topic) {
                return self.primary.retain_for(topic, payload, keep).await;
            }
            self.primary
                .retain_for(topic, payload.clone(), keep)
                .await?;
            if let Err(err) = self.mirror.retain_for(topic, payload, keep).await {
                self.mirror_failed("retain", topic, &err);
            }
            Ok(())
        })
    }

    fn retained<'a>(&'a self, topic: &'a str) -> Call<'a, Option<Bytes>> {
        Box::pin(async move {
            match self.primary.retained(topic).await? {
                Some(payload) => Ok(Some(payload)),
                None if self.mirrored(topic) => self.mirror.retained(topic).await,
                None => Ok(None),
            }
        })
    }

    fn subscriber_access<'a>(
        &'a self,
        topics: &'a [String],
        valid_for: Duration,
    ) -> Call<'a, Option<SubscriberAccess>> {
        // Browsers subscribe where the copies go.
        if topics.iter().all(|t| self.mirrored(t)) {
            self.mirror.subscriber_access(topics, valid_for)
        } else {
            self.primary.subscriber_access(topics, valid_for)
        }
    }
}
