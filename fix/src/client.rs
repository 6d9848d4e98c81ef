//! The connection driver: one thread (with its own runtime) per session that connects, logs on,
//! moves bytes between the socket and the session rules, and reconnects
//! with the project's backoff when the connection ends.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use fxcast_transport::Backoff;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, tcp::OwnedWriteHalf},
    sync::{broadcast, mpsc, oneshot, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    BEGIN_STRING, FixError, SessionConfig,
    codec::{Decoded, Decoder, Message},
    session::{Action, SessionCore, SessionEvent},
    store::SeqStore,
};

/// Events buffered per subscriber; a subscriber further behind loses the
/// oldest (and learns so from `RecvError::Lagged`).
const EVENT_CAPACITY: usize = 8192;

/// What the session looks like now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStatus {
    /// Logged on: application messages can be sent.
    pub logged_on: bool,
    /// Logons so far (a new value means a new session on a new
    /// connection: subscriptions must be renewed).
    pub logons: u64,
    /// Why the last connection or attempt ended.
    pub last_error: Option<String>,
    /// Garbled messages ignored so far.
    pub garbled: u64,
    /// The session task has ended (after [`FixSession::logout`]).
    pub stopped: bool,
}

struct Outgoing {
    body: Message,
    reply: oneshot::Sender<Result<u64, FixError>>,
}

struct Shared {
    config: SessionConfig,
    events: broadcast::Sender<SessionEvent>,
    status: watch::Sender<SessionStatus>,
    outbox: mpsc::Sender<Outgoing>,
    inbox: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    started: OnceLock<Result<(), FixError>>,
    stop: CancellationToken,
}

/// A FIX initiator session: a cheap `Clone` handle shared by every user
/// of the one connection to the LP (the feed and the order adapter).
///
/// Created idle; [`start`](Self::start) starts its thread once. It
/// keeps the session up until [`logout`](Self::logout): it reconnects after
/// every loss, waiting [`fxcast_transport::Backoff`] delays.
#[derive(Clone)]
pub struct FixSession {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FixSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixSession")
            .field("config", &self.shared.config)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl PartialEq for FixSession {
    /// The same session (handles of one connection).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for FixSession {}

impl FixSession {
    /// An idle session.
    ///
    /// # Errors
    /// [`FixError::Config`] for unusable settings.
    pub fn new(config: SessionConfig) -> Result<Self, FixError> {
        config.validate()?;
        let (outbox, inbox) = mpsc::channel(1024);
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                events: broadcast::channel(EVENT_CAPACITY).0,
                status: watch::channel(SessionStatus::default()).0,
                outbox,
                inbox: Mutex::new(Some(inbox)),
                started: OnceLock::new(),
                stop: CancellationToken::new(),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SessionConfig {
        &self.shared.config
    }

    /// Opens the sequence store and starts the session on its own thread
    /// (once; later calls return the first call's result). Called inside a
    /// Tokio runtime, the session also logs out and ends when that runtime
    /// shuts down.
    ///
    /// # Errors
    /// [`FixError::Store`] when the sequence numbers cannot be read.
    pub fn start(&self) -> Result<(), FixError> {
        self.shared
            .started
            .get_or_init(|| {
                let config = &self.shared.config;
                let store = SeqStore::open(
                    &config.store_dir,
                    &config.sender_comp_id,
                    &config.target_comp_id,
                )?;
                let inbox = self
                    .shared
                    .inbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .ok_or(FixError::Stopped)?;
                tracing::info!(
                    host = %config.host,
                    port = config.port,
                    sender = %config.sender_comp_id,
                    target = %config.target_comp_id,
                    store = %store.path().display(),
                    next_sender = store.next_sender(),
                    next_target = store.next_target(),
                    "starting the FIX session"
                );
                // The session runs on its own thread with its own
                // single-threaded runtime: the store's fsync per outgoing
                // message (and any other blocking) then holds up only the
                // session, never the application's Tokio workers. The
                // channels to the rest of the application work across
                // runtimes.
                //
                // When the runtime that started the session shuts down
                // (its tasks dropped), the session logs out and its thread
                // ends, as a task of that runtime would have.
                let parent_gone = tokio::runtime::Handle::try_current().ok().map(|handle| {
                    let (alive, parent_gone) = oneshot::channel::<()>();
                    handle.spawn(async move {
                        let _alive = alive;
                        std::future::pending::<()>().await;
                    });
                    parent_gone
                });
                let shared = Arc::clone(&self.shared);
                std::thread::Builder::new()
                    .name("fix-session".into())
                    .spawn(move || session_thread(&shared, store, inbox, parent_gone))
                    .map_err(|e| {
                        FixError::Io(format!("cannot start the FIX session thread: {e}"))
                    })?;
                Ok(())
            })
            .clone()
    }

    /// Logs out (waiting at most `timeout` for the LP's Logout) and ends
    /// the session task; returns once it has ended or `timeout` passed.
    pub async fn logout(&self, timeout: Duration) {
        self.shared.stop.cancel();
        if self.shared.started.get().is_none() {
            return;
        }
        let mut status = self.status();
        let _ = tokio::time::timeout(timeout, status.wait_for(|s| s.stopped)).await;
    }

    /// Events from now on: logons, logouts, application messages, rejects.
    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.shared.events.subscribe()
    }

    /// The session's status, updated as it changes.
    pub fn status(&self) -> watch::Receiver<SessionStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until the session is logged on, at most `timeout`. Returns
    /// whether it is.
    pub async fn wait_logged_on(&self, timeout: Duration) -> bool {
        let mut status = self.status();
        tokio::time::timeout(timeout, status.wait_for(|s| s.logged_on))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Sends an application message (`body`: MsgType first, then its
    /// fields; the header is added). Returns its MsgSeqNum.
    ///
    /// # Errors
    /// [`FixError::NotLoggedOn`] when nothing was sent;
    /// [`FixError::Io`] when the write failed (the counterparty may or may
    /// not have it); [`FixError::Encode`] for an unencodable value.
    pub async fn send(&self, body: Message) -> Result<u64, FixError> {
        if self.shared.started.get().is_none() {
            return Err(FixError::NotLoggedOn);
        }
        let (reply, answer) = oneshot::channel();
        self.shared
            .outbox
            .send(Outgoing { body, reply })
            .await
            .map_err(|_| FixError::Stopped)?;
        answer.await.map_err(|_| FixError::Stopped)?
    }
}

/// The session thread: a current-thread runtime running [`run`] until
/// it ends (after [`FixSession::logout`] or the starting runtime's
/// shutdown).
fn session_thread(
    shared: &Shared,
    store: SeqStore,
    inbox: mpsc::Receiver<Outgoing>,
    parent_gone: Option<oneshot::Receiver<()>>,
) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(async {
            let stop = shared.stop.clone();
            let watch_parent = tokio::spawn(async move {
                // Err: the starting runtime dropped its guard task.
                if let Some(parent_gone) = parent_gone
                    && parent_gone.await.is_err()
                {
                    stop.cancel();
                }
            });
            run(shared, store, inbox).await;
            watch_parent.abort();
        }),
        Err(err) => {
            tracing::error!(%err, "cannot build the FIX session runtime");
            shared
                .status
                .send_modify(|s| s.last_error = Some(format!("cannot start: {err}")));
        }
    }
    shared.status.send_modify(|s| {
        s.logged_on = false;
        s.stopped = true;
    });
}

/// The session task: connect, run, back off, again.
async fn run(shared: &Shared, mut store: SeqStore, mut inbox: mpsc::Receiver<Outgoing>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.reconnect);
    let mut retrying = false;
    loop {
        if retrying {
            let delay = backoff.next_delay();
            let wait = tokio::time::sleep(delay);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    () = shared.stop.cancelled() => return,
                    Some(out) = inbox.recv() => {
                        let _ = out.reply.send(Err(FixError::NotLoggedOn));
                    }
                }
            }
        }
        retrying = true;
        if shared.stop.is_cancelled() {
            return;
        }
        let address = format!("{}:{}", config.host, config.port);
        let stream =
            match tokio::time::timeout(config.logon_timeout, TcpStream::connect(address.as_str()))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    fail(shared, format!("cannot connect to {address}: {err}"));
                    continue;
                }
                Err(_) => {
                    fail(shared, format!("cannot connect to {address}: timed out"));
                    continue;
                }
            };
        // Connecting to a local port nobody listens on can connect the
        // socket to itself (TCP simultaneous open) when the kernel picks that
        // same port as the local one: that is no counterparty.
        if let (Ok(local), Ok(peer)) = (stream.local_addr(), stream.peer_addr())
            && local == peer
        {
            fail(
                shared,
                format!("cannot connect to {address}: connected to itself"),
            );
            continue;
        }
        // Nagle would hold small orders and heartbeats back.
        let _ = stream.set_nodelay(true);
        let mut core = SessionCore::new(config.clone(), store, Instant::now().into_std());
        let reason = connection(shared, &mut core, stream, &mut inbox, &mut backoff).await;
        let was_active = core.is_active();
        store = core.into_store();
        let logged_on = shared.status.borrow().logged_on;
        shared.status.send_modify(|s| {
            s.logged_on = false;
            s.last_error = Some(reason.clone());
        });
        if logged_on || was_active {
            let _ = shared.events.send(SessionEvent::LoggedOut {
                reason: reason.clone(),
            });
        }
        tracing::warn!(
            %address,
            %reason,
            next_sender = store.next_sender(),
            next_target = store.next_target(),
            "FIX session ended"
        );
        if shared.stop.is_cancelled() {
            return;
        }
    }
}

fn fail(shared: &Shared, reason: String) {
    tracing::warn!(%reason, "FIX connection attempt failed; retrying");
    shared
        .status
        .send_modify(|s| s.last_error = Some(reason.clone()));
}

/// One connection, from Logon to its end; returns why it ended.
async fn connection(
    shared: &Shared,
    core: &mut SessionCore,
    stream: TcpStream,
    inbox: &mut mpsc::Receiver<Outgoing>,
    backoff: &mut Backoff,
) -> String {
    let (mut reader, mut writer) = stream.into_split();
    let now = || Instant::now().into_std();
    let logon = match core.logon(now()) {
        Ok(bytes) => bytes,
        Err(err) => return err.to_string(),
    };
    if let Err(err) = write(&mut writer, &logon, shared.config.heartbeat).await {
        return format!("cannot send Logon: {err}");
    }
    tracing::info!("FIX Logon sent");
    let mut decoder = Decoder::new(BEGIN_STRING);
    let mut buffer = vec![0u8; 64 * 1024];
    let period =
        (shared.config.heartbeat / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        let actions = tokio::select! {
            read = reader.read(&mut buffer) => {
                let n = match read {
                    Ok(0) => return "the counterparty closed the connection".into(),
                    Ok(n) => n,
                    Err(err) => return format!("connection lost: {err}"),
                };
                decoder.extend(&buffer[..n]);
                receive(shared, core, &mut decoder)
            }
            _ = tick.tick() => core.on_tick(now()),
            Some(out) = inbox.recv() => {
                match core.send_app(out.body, now()) {
                    Ok((seq, bytes)) => match write(&mut writer, &bytes, shared.config.heartbeat).await {
                        Ok(()) => {
                            let _ = out.reply.send(Ok(seq));
                            Vec::new()
                        }
                        Err(err) => {
                            let reason = format!("connection lost while sending: {err}");
                            let _ = out.reply.send(Err(FixError::Io(reason.clone())));
                            return reason;
                        }
                    },
                    Err(err) => {
                        let _ = out.reply.send(Err(err));
                        Vec::new()
                    }
                }
            }
            () = shared.stop.cancelled(), if !stopping => {
                stopping = true;
                if !core.is_active() {
                    return "stopped".into();
                }
                match core.logout("fxcast is shutting down", now()) {
                    Ok(bytes) => vec![Action::Send(bytes)],
                    Err(err) => return err.to_string(),
                }
            }
        };
        for action in actions {
            if let Some(reason) = apply(shared, &mut writer, action, backoff).await {
                return reason;
            }
        }
    }
}

/// Hands every whole message `decoder` holds to the session; returns what
/// the session wants done. Garbled input is counted and skipped.
fn receive(shared: &Shared, core: &mut SessionCore, decoder: &mut Decoder) -> Vec<Action> {
    let mut actions = Vec::new();
    while let Some(frame) = decoder.next_frame() {
        match frame {
            Decoded::Message(message) => {
                tracing::trace!(msg_type = message.msg_type(), seq = ?message.seq_num(), "FIX in");
                actions.extend(core.on_message(message, Instant::now().into_std()));
            }
            Decoded::Garbled { reason, skipped } => {
                shared.status.send_modify(|s| s.garbled += 1);
                tracing::warn!(%reason, skipped, "ignoring a garbled FIX message");
            }
        }
    }
    actions
}

/// Writes `bytes`, giving up after `limit` (the heartbeat interval): a
/// counterparty that stopped reading must not hold the session forever.
/// An error means the connection is to be treated as lost.
async fn write(writer: &mut OwnedWriteHalf, bytes: &[u8], limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, writer.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "the write did not complete within {}s (the counterparty is not reading)",
            limit.as_secs_f32()
        )),
    }
}

/// Carries out one action; `Some(reason)` ends the connection.
async fn apply(
    shared: &Shared,
    writer: &mut OwnedWriteHalf,
    action: Action,
    backoff: &mut Backoff,
) -> Option<String> {
    match action {
        Action::Send(bytes) => write(writer, &bytes, shared.config.heartbeat)
            .await
            .err()
            .map(|err| format!("connection lost: {err}")),
        Action::Event(event) => {
            if matches!(event, SessionEvent::LoggedOn) {
                backoff.reset();
                shared.status.send_modify(|s| {
                    s.logged_on = true;
                    s.logons += 1;
                    s.last_error = None;
                });
                tracing::info!("FIX session logged on");
            }
            let _ = shared.events.send(event);
            None
        }
        Action::Disconnect(reason) => {
            let _ = writer.shutdown().await;
            Some(reason)
        }
    }
}
