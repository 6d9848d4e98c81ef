//! The transport's two connections to the server, kept up by one task.
//!
//! A transport holds one *command* connection (publishes, stream reads,
//! retained payloads; requests multiplexed on it) and one *pub/sub*
//! connection subscribed to the channel of every topic with a local
//! subscriber. The link task owns both: it dispatches what arrives on the
//! pub/sub connection to the topics' feeds, subscribes and unsubscribes
//! channels as feeds come and go, and pings both connections every
//! heartbeat. When either fails (the server died, a ping went unanswered,
//! a command found its connection closed) it drops both, reports
//! [`TransportHealth::Reconnecting`](crate::TransportHealth), and opens
//! new ones on the project's [`Backoff`] schedule; once they are up it
//! subscribes every channel again, bumps the connection's *generation*
//! and tells every feed to resync from its stream (`feed`), which is how
//! what was published meanwhile is delivered or announced as a gap.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::{
    Msg,
    aio::{MultiplexedConnection, PubSubSink, PubSubStream},
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use super::{
    BACKEND,
    endpoint::{ConnectError, Endpoint},
};
use crate::{Backoff, BackoffPolicy, Error, health::HealthBoard};

/// The health board's key for the connections.
const CONNECTION: &str = "connection";

/// A Redis stream entry id, `<milliseconds>-<sequence>`; ids grow with
/// every entry of a stream (fxcast's are `<epoch>-<n>`, see `feed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct StreamId {
    pub(super) ms: u64,
    pub(super) seq: u64,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = s.split_once('-').ok_or(())?;
        Ok(Self {
            ms: ms.parse().map_err(drop)?,
            seq: seq.parse().map_err(drop)?,
        })
    }
}

/// What the link hands a topic's feed.
#[derive(Debug)]
pub(super) enum FeedEvent {
    /// A message from the pub/sub connection of `generation`.
    Live {
        generation: u64,
        id: StreamId,
        payload: Bytes,
    },
    /// A new connection is subscribed: read the stream from the cursor.
    Resync,
}

/// A feed's inbox as the link holds it. The queue is bounded; when it is
/// full, messages are dropped and `overflowed` set until the feed resyncs
/// from the stream, which holds them (nothing is lost unless the stream
/// no longer does, and then a gap is announced).
#[derive(Clone)]
pub(super) struct FeedInbox {
    pub(super) id: u64,
    pub(super) sender: mpsc::Sender<FeedEvent>,
    pub(super) overflowed: Arc<AtomicBool>,
}

impl FeedInbox {
    fn deliver(&self, event: FeedEvent) {
        if self.overflowed.load(Ordering::Acquire) {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.sender.try_send(event) {
            self.overflowed.store(true, Ordering::Release);
        }
    }
}

/// A live command connection.
#[derive(Clone)]
pub(super) struct Connection {
    pub(super) commands: MultiplexedConnection,
    /// Counts the connections made: feeds tell a new one from the old.
    pub(super) generation: u64,
    /// The server process's `run_id`: it changes when the server restarts,
    /// which may have lost what it had not persisted.
    pub(super) run_id: Arc<str>,
}

enum Control {
    Subscribe {
        channel: String,
        inbox: FeedInbox,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Unsubscribe {
        channel: String,
        feed: u64,
    },
    /// A command found the connection of `generation` unusable.
    Failed {
        generation: u64,
        reason: String,
    },
}

/// What feeds and the transport use to reach the link. The link task ends
/// once every handle is gone.
#[derive(Clone)]
pub(super) struct LinkHandle {
    control: mpsc::UnboundedSender<Control>,
    connection: watch::Receiver<Option<Connection>>,
    url: Arc<str>,
}

impl LinkHandle {
    /// The current command connection.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while the link reconnects.
    pub(super) fn connection(&self) -> Result<Connection, Error> {
        self.connection
            .borrow()
            .clone()
            .ok_or_else(|| Error::Unavailable {
                backend: BACKEND,
                message: format!("not connected to {}: reconnecting", self.url),
            })
    }

    /// Subscribes `channel` for `inbox`; returns once the server confirmed.
    pub(super) async fn subscribe(&self, channel: String, inbox: FeedInbox) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Subscribe {
                channel,
                inbox,
                reply,
            })
            .map_err(|_| "the transport is shutting down".to_owned())?;
        answer
            .await
            .map_err(|_| "the transport is shutting down".to_owned())?
    }

    /// Unsubscribes `channel` if `feed` still holds it.
    pub(super) fn unsubscribe(&self, channel: String, feed: u64) {
        let _ = self.control.send(Control::Unsubscribe { channel, feed });
    }

    /// Reports that a command on the connection of `generation` failed
    /// the way a dead connection does, so the link replaces it now rather
    /// than at the next heartbeat.
    pub(super) fn failed(&self, generation: u64, reason: String) {
        let _ = self.control.send(Control::Failed { generation, reason });
    }
}

/// Both connections, just opened.
pub(super) struct Established {
    commands: MultiplexedConnection,
    driver: JoinHandle<()>,
    sink: PubSubSink,
    stream: PubSubStream,
    pub(super) server: ServerInfo,
}

/// What `INFO` says about the server.
#[derive(Debug, Clone)]
pub(super) struct ServerInfo {
    pub(super) run_id: Arc<str>,
    pub(super) version: String,
    /// Whether the server keeps an append-only file (survives a restart
    /// with what it acknowledged).
    pub(super) aof: bool,
}

/// Opens both connections and reads the server's identity.
pub(super) async fn establish(
    endpoint: &Endpoint,
    request_timeout: Duration,
) -> Result<Established, ConnectError> {
    let (mut commands, driver) = endpoint.commands(request_timeout).await?;
    let info = redis::cmd("INFO")
        .arg("server")
        .arg("persistence")
        .query_async::<String>(&mut commands)
        .await;
    let info = match info {
        Ok(info) => info,
        Err(e) => {
            driver.abort();
            return Err(endpoint.failed(&e));
        }
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let server = ServerInfo {
        run_id: field("run_id").unwrap_or_default().into(),
        version: field("redis_version").unwrap_or("unknown").to_owned(),
        aof: field("aof_enabled") == Some("1"),
    };
    let pubsub = match endpoint.pubsub().await {
        Ok(pubsub) => pubsub,
        Err(e) => {
            driver.abort();
            return Err(e);
        }
    };
    let (sink, stream) = pubsub.split();
    Ok(Established {
        commands,
        driver,
        sink,
        stream,
        server,
    })
}

/// Starts the link task over connections already established.
pub(super) fn spawn(
    endpoint: Endpoint,
    first: Established,
    timing: Timing,
    health: HealthBoard,
) -> LinkHandle {
    let (control_tx, control) = mpsc::unbounded_channel();
    // Usable at once; the task publishes the same connection again as
    // generation 1 when it starts serving it.
    let (connection_tx, connection) = watch::channel(Some(Connection {
        commands: first.commands.clone(),
        generation: 1,
        run_id: Arc::clone(&first.server.run_id),
    }));
    let handle = LinkHandle {
        control: control_tx,
        connection,
        url: endpoint.url().into(),
    };
    let link = Link {
        endpoint,
        timing,
        health,
        connection: connection_tx,
        control,
        feeds: HashMap::new(),
        generation: 0,
    };
    tokio::spawn(link.run(first));
    handle
}

/// How the link paces itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timing {
    pub(super) request_timeout: Duration,
    pub(super) heartbeat: Duration,
    pub(super) reconnect: BackoffPolicy,
}

struct Link {
    endpoint: Endpoint,
    timing: Timing,
    health: HealthBoard,
    connection: watch::Sender<Option<Connection>>,
    control: mpsc::UnboundedReceiver<Control>,
    /// The feed of each subscribed channel.
    feeds: HashMap<String, FeedInbox>,
    generation: u64,
}

impl Link {
    async fn run(mut self, first: Established) {
        let mut backoff = Backoff::new(self.timing.reconnect);
        let mut next = Some(first);
        loop {
            let established = match next.take() {
                Some(established) => established,
                None => match self.reconnect(&mut backoff).await {
                    Some(established) => established,
                    None => return,
                },
            };
            let Some(reason) = self.serve(established).await else {
                return;
            };
            self.connection.send_replace(None);
            tracing::warn!(url = %self.endpoint.url(), %reason, "redis connection lost; reconnecting");
            self.health.fail(
                CONNECTION,
                format!("lost the connection to {}: {reason}", self.endpoint.url()),
            );
        }
    }

    /// New connections, after a delay per failed attempt; `None` once the
    /// transport is gone.
    async fn reconnect(&mut self, backoff: &mut Backoff) -> Option<Established> {
        loop {
            let wait = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    control = self.control.recv() => match control? {
                        Control::Subscribe { reply, .. } => {
                            let _ = reply.send(Err(format!(
                                "not connected to {}: reconnecting",
                                self.endpoint.url()
                            )));
                        }
                        Control::Unsubscribe { channel, feed } => {
                            self.forget(&channel, feed);
                        }
                        Control::Failed { .. } => {}
                    },
                }
            }
            match establish(&self.endpoint, self.timing.request_timeout).await {
                Ok(established) => {
                    backoff.reset();
                    return Some(established);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "redis reconnect attempt failed");
                    self.health.fail(CONNECTION, e.message);
                }
            }
        }
    }

    fn forget(&mut self, channel: &str, feed: u64) -> bool {
        let held = self
            .feeds
            .get(channel)
            .is_some_and(|inbox| inbox.id == feed);
        if held {
            self.feeds.remove(channel);
        }
        held
    }

    /// Runs the connections until they fail (the reason) or the transport
    /// is gone (`None`).
    async fn serve(&mut self, established: Established) -> Option<String> {
        let Established {
            commands,
            mut driver,
            mut sink,
            mut stream,
            server,
        } = established;
        // Aborts the command connection's task however this returns.
        struct AbortOnDrop(JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let timeout = self.timing.request_timeout;
        if let Err(reason) = self.resubscribe(&mut sink).await {
            driver.abort();
            return Some(reason);
        }
        self.generation += 1;
        let generation = self.generation;
        let mut ping = commands.clone();
        self.connection.send_replace(Some(Connection {
            commands,
            generation,
            run_id: server.run_id.clone(),
        }));
        self.health.recover(CONNECTION);
        if generation > 1 {
            tracing::info!(url = %self.endpoint.url(), feeds = self.feeds.len(), "redis connection re-established; resyncing");
        }
        for inbox in self.feeds.values() {
            inbox.deliver(FeedEvent::Resync);
        }
        let mut heartbeat = tokio::time::interval(self.timing.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.reset();
        let result = loop {
            tokio::select! {
                biased;
                control = self.control.recv() => {
                    let Some(control) = control else { break None };
                    if let Err(reason) = self.handle(control, &mut sink, generation).await {
                        break Some(reason);
                    }
                }
                message = stream.next() => match message {
                    Some(message) => self.dispatch(&message, generation),
                    None => break Some("the pub/sub connection closed".to_owned()),
                },
                _ = &mut driver => break Some("the command connection closed".to_owned()),
                _ = heartbeat.tick() => {
                    // Any answer will do: a subscribed connection answers
                    // `pong` in an array, not `PONG`.
                    let command = redis::cmd("PING");
                    let pings = futures_util::future::try_join(
                        sink.ping::<redis::Value>(),
                        command.query_async::<redis::Value>(&mut ping),
                    );
                    match tokio::time::timeout(timeout, pings).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break Some(format!("ping: {e}")),
                        Err(_) => break Some(format!("no answer to a ping within {timeout:?}")),
                    }
                }
            }
        };
        drop(AbortOnDrop(driver));
        result
    }

    /// Subscribes a new pub/sub connection to every feed's channel.
    async fn resubscribe(&self, sink: &mut PubSubSink) -> Result<(), String> {
        if self.feeds.is_empty() {
            return Ok(());
        }
        let timeout = self.timing.request_timeout;
        let channels: Vec<String> = self.feeds.keys().cloned().collect();
        match tokio::time::timeout(timeout, sink.subscribe(channels)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("resubscribing: {e}")),
            Err(_) => Err(format!("resubscribing: no answer within {timeout:?}")),
        }
    }

    async fn handle(
        &mut self,
        control: Control,
        sink: &mut PubSubSink,
        generation: u64,
    ) -> Result<(), String> {
        let timeout = self.timing.request_timeout;
        match control {
            Control::Subscribe {
                channel,
                inbox,
                reply,
            } => {
                let confirmed = tokio::time::timeout(timeout, sink.subscribe(&channel)).await;
                let result = match confirmed {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("subscribe to {channel}: {e}")),
                    Err(_) => Err(format!(
                        "subscribe to {channel}: no answer within {timeout:?}"
                    )),
                };
                match result {
                    Ok(()) => {
                        self.feeds.insert(channel, inbox);
                        let _ = reply.send(Ok(()));
                        Ok(())
                    }
                    Err(reason) => {
                        let _ = reply.send(Err(reason.clone()));
                        Err(reason)
                    }
                }
            }
            Control::Unsubscribe { channel, feed } => {
                if !self.forget(&channel, feed) {
                    return Ok(());
                }
                match tokio::time::timeout(timeout, sink.unsubscribe(&channel)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("unsubscribe from {channel}: {e}")),
                    Err(_) => Err(format!(
                        "unsubscribe from {channel}: no answer within {timeout:?}"
                    )),
                }
            }
            Control::Failed {
                generation: failed,
                reason,
            } if failed == generation => Err(reason),
            Control::Failed { .. } => Ok(()),
        }
    }

    /// Hands a pub/sub message (`<stream id> <payload>`) to its feed.
    fn dispatch(&self, message: &Msg, generation: u64) {
        let Some(inbox) = self.feeds.get(message.get_channel_name()) else {
            return;
        };
        let bytes = message.get_payload_bytes();
        let parsed = bytes.iter().position(|&b| b == b' ').and_then(|space| {
            let id = std::str::from_utf8(&bytes[..space]).ok()?.parse().ok()?;
            Some((id, Bytes::copy_from_slice(&bytes[space + 1..])))
        });
        match parsed {
            Some((id, payload)) => inbox.deliver(FeedEvent::Live {
                generation,
                id,
                payload,
            }),
            None => tracing::warn!(
                channel = message.get_channel_name(),
                "redis message without a stream id dropped (published by something other than fxcast?)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_and_order() {
        let a: StreamId = "1700000000000-0".parse().unwrap();
        let b: StreamId = "1700000000000-7".parse().unwrap();
        let c: StreamId = "1700000000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-7");
        assert!("12".parse::<StreamId>().is_err());
        assert!("a-1".parse::<StreamId>().is_err());
    }
}
