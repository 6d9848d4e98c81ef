//! One JetStream consumer per topic per process, fanned out locally.
//!
//! A topic's *feed* is a task holding the topic's single ephemeral push
//! consumer on the stream (filtered to the topic's subject, no acks, flow
//! control and idle heartbeats) and a `tokio::sync::broadcast` ring that
//! every local [`Subscription`] of the topic reads, as in the Momento
//! backend: a payload is stored once, a slow local reader is told
//! `Gap { cause: Lagged }` and memory stays bounded. The last local
//! subscription to go ends the feed; the consumer is deleted with it (and
//! would lapse on its own once nobody listens on its inbox).
//!
//! Live messages come through the consumer rather than a core NATS
//! subscription, so every delivery carries its stream sequence:
//! - **resume**: when the connection comes back (or the consumer stops
//!   sending heartbeats) the feed creates a new consumer starting right
//!   after the last stream sequence it delivered, so nothing published
//!   meanwhile is lost and nothing is repeated;
//! - **dedupe**: a delivery at or below that sequence is dropped;
//! - **gaps**: if the stream no longer holds everything after that
//!   sequence (the topic's history of `history` messages per subject
//!   rolled past it while this process was away), a
//!   `Gap { missed: None, cause: Reconnected }` comes before the resumed
//!   messages. The stream's limit drops the oldest messages of a subject
//!   first, so the history is intact when a message at or before the
//!   resume point is still stored, or when the subject holds fewer than
//!   `history` messages; otherwise the gap is announced, without a count
//!   (NATS does not say how many were discarded);
//! - **deliveries lost on the way**: the consumer numbers its deliveries
//!   without holes, so a jump means messages sent to this process never
//!   reached the feed (async-nats dropped them for a slow reader, or the
//!   server kept writing to a connection that had died before it noticed,
//!   then carried on over the new one). The stream still holds them, so
//!   the feed resumes from the last message it delivered instead of
//!   announcing a gap; only a history rolled past that point is a gap.
//!
//! [`Subscription`]: crate::Subscription

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use async_nats::{
    Client, StatusCode, Subscriber,
    jetstream::{
        self,
        consumer::{AckPolicy, DeliverPolicy, push},
        stream::{LastRawMessageErrorKind, Stream},
    },
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::BACKEND;
use crate::{
    Backoff, BackoffPolicy, Delivery, Error, Gap, GapCause, Subscription,
    feeds::{Establishing, FeedCounters, Feeds},
    health::HealthBoard,
};

/// What every feed needs. Holds no reference to the transport, so feeds do
/// not keep it alive.
#[derive(Clone)]
pub(super) struct FeedContext {
    pub(super) client: Client,
    pub(super) jetstream: jetstream::Context,
    pub(super) stream: Stream,
    /// Messages the stream keeps per subject.
    pub(super) history: u64,
    pub(super) buffer: usize,
    pub(super) reconnect: BackoffPolicy,
    pub(super) request_timeout: Duration,
    /// How often an idle consumer says it is alive; two missed mean it is
    /// gone.
    pub(super) heartbeat: Duration,
    pub(super) health: HealthBoard,
    /// Bumped each time the connection comes back after it was lost.
    pub(super) reconnected: watch::Receiver<u64>,
    pub(super) counters: Arc<FeedCounters>,
}

/// A local subscription to `topic` (on `subject`), starting the topic's
/// feed if this is its first. Returns once the consumer exists on the
/// server, so every message published afterwards is received.
///
/// # Errors
/// [`Error::Unavailable`] when the consumer cannot be created.
pub(super) async fn subscribe(
    feeds: &Arc<Feeds>,
    context: &FeedContext,
    topic: &str,
    subject: String,
) -> Result<Subscription, Error> {
    feeds
        .subscribe(BACKEND, topic, context.buffer, |start| {
            let driver = Driver {
                context: context.clone(),
                topic: topic.to_owned(),
                subject,
                sender: start.sender,
            };
            tokio::spawn(driver.run(start.stop, start.state, start.feeds, start.id));
        })
        .await
}

/// Where a feed is in the stream.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The stream sequence of the last message delivered, or of the
    /// stream's last message when the first consumer began.
    sequence: u64,
}

/// Why a consumer was given up.
enum Ended {
    /// The feed's last subscriber left.
    Stopped,
    /// Resume with a new consumer.
    Resume(String),
}

/// One inbox message, screened by `Driver::screen`.
enum Screened {
    /// A message to deliver unless it is a repeat.
    Deliver(Fresh),
    /// A heartbeat, or a message without stream metadata.
    Skip,
    /// The consumer must be replaced.
    End(Ended),
}

/// A message worth delivering.
struct Fresh {
    stream_sequence: u64,
    payload: Bytes,
}

/// A live consumer: its inbox and name.
struct Started {
    inbox: Subscriber,
    /// The client's connection count when the consumer was set up.
    connection: u64,
    consumer: String,
    gap: Option<Gap>,
}

struct Driver {
    context: FeedContext,
    topic: String,
    subject: String,
    sender: broadcast::Sender<Delivery>,
}

impl Driver {
    async fn run(
        self,
        stop: CancellationToken,
        state: watch::Sender<Establishing>,
        feeds: Weak<Feeds>,
        id: u64,
    ) {
        let key = format!("subscription to {}", self.topic);
        let health = self.context.health.clone();
        let mut backoff = Backoff::new(self.context.reconnect);
        let mut cursor: Option<Cursor> = None;
        // The cursor at the last gap announced: resuming again before
        // anything was delivered is the same gap, announced once.
        let mut announced: Option<u64> = None;
        loop {
            let mut reconnected = self.context.reconnected.clone();
            reconnected.borrow_and_update();
            let started = tokio::select! {
                () = stop.cancelled() => return,
                started = self.start(cursor.map(|c| c.sequence)) => started,
            };
            let started = match started {
                Ok((started, first)) => {
                    if cursor.is_none() {
                        cursor = Some(first);
                        state.send_replace(Establishing::Live);
                    }
                    started
                }
                Err(message) if cursor.is_none() => {
                    state.send_replace(Establishing::Failed(message));
                    if let Some(feeds) = feeds.upgrade() {
                        feeds.remove(&self.topic, id);
                    }
                    return;
                }
                Err(message) => {
                    tracing::warn!(topic = %self.topic, %message, "nats consumer not re-created; retrying");
                    health.fail(&key, message);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            health.recover(&key);
            let Some(position) = cursor.as_mut() else {
                return;
            };
            if let Some(gap) = started.gap
                && announced != Some(position.sequence)
            {
                announced = Some(position.sequence);
                self.context.counters.gaps.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %self.topic, %gap, "nats stream no longer holds every message since the last one delivered");
                let _ = self.sender.send(Delivery::Gap(gap));
            }
            let ended = tokio::select! {
                () = stop.cancelled() => Ended::Stopped,
                ended = self.pump(started.inbox, started.connection, position, &mut reconnected) => ended,
            };
            self.forget_consumer(started.consumer);
            match ended {
                Ended::Stopped => return,
                Ended::Resume(why) => {
                    self.context
                        .counters
                        .restarts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(topic = %self.topic, %why, "resuming the nats consumer");
                }
            }
        }
    }

    /// Deletes a consumer given up, in the background (it lapses on its own
    /// anyway once nobody listens on its inbox).
    fn forget_consumer(&self, name: String) {
        let stream = self.context.stream.clone();
        tokio::spawn(async move {
            let _ = stream.delete_consumer(&name).await;
        });
    }

    /// Creates a consumer: from new messages the first time, else right
    /// after `cursor`, and says whether messages since `cursor` are gone.
    async fn start(&self, resume_after: Option<u64>) -> Result<(Started, Cursor), String> {
        let timeout = self.context.request_timeout * 2;
        match tokio::time::timeout(timeout, self.try_start(resume_after)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no consumer for {} within {timeout:?}",
                self.subject
            )),
        }
    }

    async fn try_start(&self, resume_after: Option<u64>) -> Result<(Started, Cursor), String> {
        let context = &self.context;
        // Read before anything is set up: deliveries made over a later
        // connection are then recognised (see `pump`).
        let connection = context.client.statistics().connects.load(Ordering::Relaxed);
        let deliver_subject = context.client.new_inbox();
        // Listen first, so nothing the consumer sends is lost.
        let inbox = context
            .client
            .subscribe(deliver_subject.clone())
            .await
            .map_err(|e| format!("subscribe to the consumer's inbox: {e}"))?;
        let deliver_policy = match resume_after {
            None => DeliverPolicy::New,
            Some(sequence) => DeliverPolicy::ByStartSequence {
                start_sequence: sequence + 1,
            },
        };
        let config = push::Config {
            deliver_subject,
            deliver_policy,
            ack_policy: AckPolicy::None,
            filter_subject: self.subject.clone(),
            flow_control: true,
            idle_heartbeat: context.heartbeat,
            // Lapses soon after this process stops listening.
            inactive_threshold: context.heartbeat * 6,
            memory_storage: true,
            num_replicas: 1,
            ..push::Config::default()
        };
        let consumer = context
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| format!("create a consumer for {}: {e}", self.subject))?;
        let info = consumer.cached_info();
        let name = info.name.clone();
        let first = Cursor {
            sequence: resume_after.unwrap_or(info.delivered.stream_sequence),
        };
        // Checked after the consumer exists: if the history is intact now,
        // the consumer started from the right message.
        let gap = match resume_after {
            None => None,
            Some(sequence) => self.history_lost_after(sequence).await?,
        };
        Ok((
            Started {
                inbox,
                connection,
                consumer: name,
                gap,
            },
            first,
        ))
    }

    /// A gap when the stream may have discarded messages of this subject
    /// published after `sequence`.
    async fn history_lost_after(&self, sequence: u64) -> Result<Option<Gap>, String> {
        let stream = &self.context.stream;
        match stream
            .get_first_raw_message_by_subject(&self.subject, 1)
            .await
        {
            Ok(oldest) if oldest.sequence <= sequence => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(format!("read the history of {}: {e}", self.subject)),
        }
        let mut subjects = stream
            .info_with_subjects(&self.subject)
            .await
            .map_err(|e| format!("count the history of {}: {e}", self.subject))?;
        let mut held = 0;
        while let Some(entry) = subjects.next().await {
            let (subject, count) =
                entry.map_err(|e| format!("count the history of {}: {e}", self.subject))?;
            if subject == self.subject {
                held = count as u64;
            }
        }
        if held < self.context.history {
            // Never full, so never trimmed.
            return Ok(None);
        }
        Ok(Some(Gap {
            missed: None,
            cause: GapCause::Reconnected,
        }))
    }

    /// Delivers what the consumer sends until it must be replaced.
    async fn pump(
        &self,
        mut inbox: Subscriber,
        connection: u64,
        cursor: &mut Cursor,
        reconnected: &mut watch::Receiver<u64>,
    ) -> Ended {
        let context = &self.context;
        let silence = context.heartbeat * 2 + context.request_timeout;
        let statistics = context.client.statistics();
        let mut delivered = 0u64;
        loop {
            let next = tokio::select! {
                changed = reconnected.changed() => {
                    if changed.is_err() {
                        return Ended::Stopped;
                    }
                    // The event lags the connection count: this consumer
                    // may already be on the new connection.
                    if statistics.connects.load(Ordering::Relaxed) == connection {
                        continue;
                    }
                    return Ended::Resume("the connection came back".to_owned());
                }
                next = tokio::time::timeout(silence, inbox.next()) => next,
            };
            let message = match next {
                Err(_) => {
                    return Ended::Resume(format!(
                        "no heartbeat from the consumer for {silence:?}"
                    ));
                }
                Ok(None) => return Ended::Resume("the consumer's inbox closed".to_owned()),
                Ok(Some(message)) => message,
            };
            // async-nats resubscribes the inbox after a reconnect, so this
            // consumer (if the server kept it) may carry on over the new
            // connection, silently skipping what the stream discarded
            // meanwhile. The connection event may reach `reconnected`
            // after such a delivery; the connection count is raised before
            // the client resubscribes, so it cannot. The delivery is not
            // taken: the new consumer starts after the cursor, once the
            // history is checked.
            if statistics.connects.load(Ordering::Relaxed) != connection {
                return Ended::Resume("the connection came back".to_owned());
            }
            let message = match self.screen(message, &mut delivered).await {
                Screened::Deliver(message) => message,
                Screened::Skip => continue,
                Screened::End(ended) => return ended,
            };
            if message.stream_sequence <= cursor.sequence {
                context.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            cursor.sequence = message.stream_sequence;
            let _ = self.sender.send(Delivery::Message(message.payload));
        }
    }

    /// What to do with one message from the consumer's inbox: answer a
    /// heartbeat's flow-control request, end on any other status or a hole
    /// in the consumer's numbering, or deliver it with its stream sequence.
    /// `delivered` is the consumer sequence of the last delivery, raised
    /// here (before the dedupe, so a repeat is no hole).
    async fn screen(&self, message: async_nats::Message, delivered: &mut u64) -> Screened {
        let context = &self.context;
        match message.status {
            None => {}
            Some(StatusCode::IDLE_HEARTBEAT) => {
                // A flow-control request carries a reply subject.
                if let Some(reply) = message.reply {
                    let _ = context.client.publish(reply, Bytes::new()).await;
                }
                return Screened::Skip;
            }
            Some(status) => {
                return Screened::End(Ended::Resume(format!(
                    "the consumer reported {status}: {}",
                    message.description.as_deref().unwrap_or("")
                )));
            }
        }
        let message = jetstream::Message {
            message,
            context: context.jetstream.clone(),
        };
        let (stream_sequence, consumer_sequence) = match message.info() {
            Ok(info) => (info.stream_sequence, info.consumer_sequence),
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "nats delivery without stream metadata dropped");
                return Screened::Skip;
            }
        };
        if consumer_sequence > *delivered + 1 {
            // Not taken: the new consumer starts again right after the
            // cursor, which still points before the lost ones.
            return Screened::End(Ended::Resume(format!(
                "deliveries {} to {} of the consumer did not arrive",
                *delivered + 1,
                consumer_sequence - 1
            )));
        }
        *delivered = consumer_sequence;
        Screened::Deliver(Fresh {
            stream_sequence,
            payload: message.message.payload,
        })
    }
}
