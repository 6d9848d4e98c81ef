//! The order journal: SQLite in WAL mode under the data directory.
//!
//! Writes go through one writer thread that owns the only write connection
//! and commits whatever has queued up while the previous commit was being
//! made durable in one transaction (group commit): one `fsync` per batch,
//! not per order, so throughput grows with concurrency while each order
//! still waits for exactly the commit that holds it. Replies are sent only
//! after that commit returned, so an acknowledged order is on disk. The
//! order path wakes the writer once the runtime has run the tasks it had
//! ready, not at the first order of a burst (see `Doorbell`), so a commit
//! holds the whole burst.
//!
//! Reads (`find`, `get`, `list`, `pending`) run on pooled read-only
//! connections on the blocking pool; WAL readers never wait for the writer.
//! `find` first asks an in-memory set of the fingerprints of every
//! (subject, client_order_id) in the journal ([`KnownKeys`]): a new order,
//! the common case, is answered without touching SQLite, whose readers
//! otherwise drop their page cache after every commit.
//!
//! Checkpoints: a checkpointer thread copies the WAL back into the database
//! in the background (`PASSIVE`), keeping that work and its `fsync` off the
//! writer's path. Under continuous writes such a checkpoint never quite
//! catches up, and SQLite only rewinds the WAL once every frame is copied,
//! so on its own the WAL would grow without bound (and appending to a
//! growing file makes every `fsync` slower). So once the WAL holds more than
//! `REWIND_FRAMES` frames, the writer itself, between two batches, runs a
//! `RESTART` checkpoint: it copies the few frames the background checkpoint
//! has not and waits for the (short) reads of old frames, so the next commit
//! rewinds the WAL and overwrites it in place.
//!
//! Durability: `synchronous=FULL` (the default, [`JournalSync::Full`])
//! syncs the WAL on every commit, so an acknowledged order survives a
//! power loss. [`JournalSync::Normal`] syncs only at checkpoints: an
//! acknowledged order survives `kill -9` (it is in the OS page cache) but
//! not a power loss or kernel crash.

use std::{
    cell::Cell,
    collections::HashSet,
    ffi::c_int,
    fmt,
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
    thread,
    time::{Duration, SystemTime},
};

use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, hooks::Wal, params,
    params_from_iter, types::Value,
};
use rust_decimal::Decimal;
use tokio::sync::{mpsc, oneshot};

use super::{
    model::{
        OrderRecord, OrderStatus, OrderTerms, RejectReason, Side, from_unix_micros, unix_micros,
    },
    price_check::Tolerance,
};
use crate::Error;

/// Most commands committed in one transaction.
const MAX_BATCH: usize = 1024;
/// Commands queued for the writer before senders wait (back-pressure).
const QUEUE: usize = 16_384;
/// Idle read connections kept open.
const READERS: usize = 8;
/// Bytes of the database each read connection maps into memory.
const READER_MMAP: i64 = 1 << 30;
/// How often the checkpointer looks at the WAL.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// WAL size (in 4 KiB frames, ~32 MiB) at which the writer completes a
/// checkpoint itself so the WAL rewinds.
const REWIND_FRAMES: i64 = if cfg!(test) { 64 } else { 8192 };
/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    seq                INTEGER PRIMARY KEY,
    order_id           TEXT NOT NULL UNIQUE,
    subject            TEXT NOT NULL,
    client_order_id    TEXT NOT NULL,
    symbol             TEXT NOT NULL,
    side               TEXT NOT NULL,
    quantity           TEXT NOT NULL,
    price              TEXT NOT NULL,
    rate_id            TEXT,
    tolerance          TEXT,
    status             TEXT NOT NULL,
    reject_reason      TEXT,
    message            TEXT NOT NULL,
    market_price       TEXT,
    market_rate_id     TEXT,
    applied_tolerance  TEXT,
    fill_price         TEXT,
    liquidity_provider TEXT NOT NULL,
    lp_execution_id    TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    UNIQUE (subject, client_order_id)
) STRICT;
CREATE INDEX IF NOT EXISTS orders_by_subject ON orders (subject, seq);
CREATE INDEX IF NOT EXISTS orders_pending ON orders (status) WHERE status = 'PENDING';
";

const COLUMNS: &str = "seq, order_id, subject, client_order_id, symbol, side, quantity, price, rate_id, \
     tolerance, status, reject_reason, message, market_price, market_rate_id, applied_tolerance, \
     fill_price, liquidity_provider, lp_execution_id, created_at, updated_at";

/// How a commit is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalSync {
    /// `synchronous=FULL`: every commit is synced; survives power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: synced at checkpoints; survives `kill -9`, not
    /// power loss.
    Normal,
}

crate::words::words!(JournalSync, "journal sync", Full => "full", Normal => "normal");

/// What [`OrderJournal::record`] did.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// The order was inserted and is durable.
    Inserted,
    /// The subject already has an order with this client_order_id; nothing
    /// was written.
    Existing(Box<OrderRecord>),
}

/// Filters of [`OrderJournal::list`]; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this symbol.
    pub symbol: Option<String>,
    /// Only this status.
    pub status: Option<OrderStatus>,
    /// Only orders created at or after this time.
    pub created_after: Option<SystemTime>,
    /// Only orders created before this time.
    pub created_before: Option<SystemTime>,
}

/// One page of [`OrderJournal::list`].
#[derive(Debug, Clone)]
pub struct OrderPage {
    /// Newest first.
    pub orders: Vec<OrderRecord>,
    /// Cursor of the next page; `None` on the last.
    pub next: Option<i64>,
}

enum Command {
    Record {
        order: Box<OrderRecord>,
        reply: oneshot::Sender<Result<Recorded, Error>>,
    },
    Finalize {
        order: Box<OrderRecord>,
        reply: oneshot::Sender<Result<bool, Error>>,
    },
}

fn journal_err(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
    let context = context.into();
    move |e| Error::Journal {
        context,
        source: Arc::new(e),
    }
}

/// The durable record of every order. A cheap `Clone` handle; the writer
/// thread stops when the last handle is dropped.
#[derive(Clone)]
pub struct OrderJournal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    commands: mpsc::Sender<Command>,
    doorbell: Doorbell,
    keys: Arc<KnownKeys>,
    // Idle read-only connections. A std mutex: held only to push or pop.
    readers: Mutex<Vec<Connection>>,
    // Dropping it stops the checkpointer.
    _stop_checkpointer: std_mpsc::Sender<()>,
}

impl fmt::Debug for OrderJournal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrderJournal")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl OrderJournal {
    /// Opens (or creates) the journal at `path` and starts its writer and
    /// checkpointer threads.
    ///
    /// # Errors
    /// [`Error::Journal`] when the database cannot be opened, is not in WAL
    /// mode, or was written by a newer fxcast.
    pub fn open(path: &Path, sync: JournalSync) -> Result<Self, Error> {
        let display = path.display().to_string();
        let open_err = |what: &str| journal_err(format!("{what} {display}"));
        let conn = Connection::open(path).map_err(open_err("cannot open"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err("cannot configure"))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err("cannot enable WAL on"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Config(format!(
                "order journal {display}: the file system does not support WAL mode (got {mode})"
            )));
        }
        let synchronous = match sync {
            JournalSync::Full => "FULL",
            JournalSync::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(open_err("cannot configure"))?;
        // Checkpoints run on the checkpointer thread, not after commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err("cannot configure"))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(open_err("cannot read"))?;
        if version > SCHEMA_VERSION {
            return Err(Error::Config(format!(
                "order journal {display} has schema version {version}; this fxcast knows up to {SCHEMA_VERSION}"
            )));
        }
        conn.execute_batch(SCHEMA)
            .map_err(open_err("cannot create the schema of"))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(open_err("cannot write"))?;

        let keys = Arc::new(KnownKeys::load(&conn).map_err(open_err("cannot read"))?);

        // After the wal_autocheckpoint pragma, which would replace it.
        conn.wal_hook(Some(count_wal_frames));
        let (commands, receiver) = mpsc::channel(QUEUE);
        let (doorbell, rings) = Doorbell::new();
        // SQLite runs one checkpoint at a time and answers a second one
        // "busy" at once; this gate makes the writer's rewind wait for a
        // background checkpoint in progress instead of failing behind it.
        let gate = Arc::new(Mutex::new(()));
        let writer_gate = Arc::clone(&gate);
        let writer_keys = Arc::clone(&keys);
        thread::Builder::new()
            .name("order-journal".into())
            .spawn(move || writer_loop(conn, receiver, &rings, &writer_keys, &writer_gate))
            .map_err(|source| Error::Io {
                context: "cannot start the order journal writer".into(),
                source,
            })?;
        let (stop, stopped) = std_mpsc::channel();
        let checkpoint_conn = Connection::open(path).map_err(open_err("cannot open"))?;
        thread::Builder::new()
            .name("order-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpoint_conn, &stopped, &gate))
            .map_err(|source| Error::Io {
                context: "cannot start the order journal checkpointer".into(),
                source,
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                commands,
                doorbell,
                keys,
                readers: Mutex::new(Vec::new()),
                _stop_checkpointer: stop,
            }),
        })
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn send<T>(
        &self,
        command: Command,
        reply: oneshot::Receiver<Result<T, Error>>,
    ) -> Result<T, Error> {
        let stopped = || Error::Journal {
            context: "writer".into(),
            source: Arc::new(std::io::Error::other("the journal writer has stopped")),
        };
        self.inner
            .commands
            .send(command)
            .await
            .map_err(|_| stopped())?;
        self.inner.doorbell.ring_when_idle().await;
        reply.await.map_err(|_| stopped())?
    }

    /// Inserts `order` unless its subject already has an order with its
    /// client_order_id, in which case that one is returned. Returns once the
    /// answer is durable.
    ///
    /// # Errors
    /// [`Error::Journal`] when the write or the commit fails (the order is
    /// then not recorded).
    pub async fn record(&self, order: OrderRecord) -> Result<Recorded, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::Record {
                order: Box::new(order),
                reply,
            },
            rx,
        )
        .await
    }

    /// Writes the final state of a PENDING order. Returns `false` (writing
    /// nothing) when the order is not pending anymore.
    ///
    /// # Errors
    /// [`Error::Journal`] when the write or the commit fails.
    pub async fn finalize(&self, order: OrderRecord) -> Result<bool, Error> {
        let (reply, rx) = oneshot::channel();
        self.send(
            Command::Finalize {
                order: Box::new(order),
                reply,
            },
            rx,
        )
        .await
    }

    async fn read<T: Send + 'static>(
        &self,
        context: &'static str,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.read_now(context, query))
            .await
            .map_err(|e| Error::Journal {
                context: context.into(),
                source: Arc::new(e),
            })?
    }

    /// The subject's order with this client_order_id. Runs on the calling
    /// thread (it takes microseconds).
    ///
    /// # Errors
    /// [`Error::Journal`] when the read fails.
    pub fn find(&self, subject: &str, client_order_id: &str) -> Result<Option<OrderRecord>, Error> {
        // A key that was never inserted is not in the journal: every insert
        // goes through this journal's writer, which notes the key first.
        if !self.inner.keys.may_contain(subject, client_order_id) {
            return Ok(None);
        }
        // On the order path, run in place: a point lookup in a unique index
        // (pages mapped in memory) takes microseconds, less than the hop to
        // the blocking pool and back, whose two thread wake-ups per order
        // dominated the CPU profile on a 2-core machine.
        self.inner.read_now("find order", |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM orders WHERE subject = ?1 AND client_order_id = ?2"
            ))?
            .query_row(params![subject, client_order_id], row_to_order)
            .optional()
            .map(|found| found.map(|(_, order)| order))
        })
    }

    /// The order with this id, whoever's it is.
    ///
    /// # Errors
    /// [`Error::Journal`] when the read fails.
    pub async fn get(&self, order_id: &str) -> Result<Option<OrderRecord>, Error> {
        let order_id = order_id.to_owned();
        self.read("get order", move |conn| {
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM orders WHERE order_id = ?1"))?
                .query_row(params![order_id], row_to_order)
                .optional()
                .map(|found| found.map(|(_, order)| order))
        })
        .await
    }

    /// The subject's orders matching `filter`, newest first, at most `limit`,
    /// older than the cursor `before` (from a previous page's `next`).
    ///
    /// # Errors
    /// [`Error::Journal`] when the read fails.
    pub async fn list(
        &self,
        subject: &str,
        filter: ListFilter,
        before: Option<i64>,
        limit: usize,
    ) -> Result<OrderPage, Error> {
        let mut sql = format!("SELECT {COLUMNS} FROM orders WHERE subject = ?");
        let mut args = vec![Value::Text(subject.to_owned())];
        if let Some(symbol) = filter.symbol {
            sql.push_str(" AND symbol = ?");
            args.push(Value::Text(symbol));
        }
        if let Some(status) = filter.status {
            sql.push_str(" AND status = ?");
            args.push(Value::Text(status.as_str().into()));
        }
        if let Some(after) = filter.created_after {
            sql.push_str(" AND created_at >= ?");
            args.push(Value::Integer(unix_micros(after)));
        }
        if let Some(before_time) = filter.created_before {
            sql.push_str(" AND created_at < ?");
            args.push(Value::Integer(unix_micros(before_time)));
        }
        if let Some(cursor) = before {
            sql.push_str(" AND seq < ?");
            args.push(Value::Integer(cursor));
        }
        sql.push_str(" ORDER BY seq DESC LIMIT ?");
        args.push(Value::Integer(
            i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1),
        ));
        self.read("list orders", move |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows: Vec<(i64, OrderRecord)> = stmt
                .query_map(params_from_iter(args), row_to_order)?
                .collect::<Result<_, _>>()?;
            let next = if rows.len() > limit {
                rows.truncate(limit);
                rows.last().map(|(seq, _)| *seq)
            } else {
                None
            };
            Ok(OrderPage {
                orders: rows.into_iter().map(|(_, order)| order).collect(),
                next,
            })
        })
        .await
    }

    /// Every PENDING order, oldest first: what to recover at start-up.
    ///
    /// # Errors
    /// [`Error::Journal`] when the read fails.
    pub async fn pending(&self) -> Result<Vec<OrderRecord>, Error> {
        self.read("list pending orders", |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM orders WHERE status = 'PENDING' ORDER BY seq"
            ))?
            .query_map([], row_to_order)?
            .map(|row| row.map(|(_, order)| order))
            .collect()
        })
        .await
    }
}

impl Inner {
    /// Runs `query` on an idle read connection (opening one if none is
    /// idle) on the current thread.
    fn read_now<T>(
        &self,
        context: &'static str,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        let idle = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(journal_err(context))?,
        };
        let result = query(&conn).map_err(journal_err(context));
        let mut idle = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < READERS {
            idle.push(conn);
        }
        result
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Read database pages through a memory map instead of a read() each.
    conn.pragma_update(None, "mmap_size", READER_MMAP)?;
    Ok(conn)
}

thread_local! {
    /// Frames in the WAL after the writer thread's last commit.
    static WAL_FRAMES: Cell<i64> = const { Cell::new(0) };
}

/// SQLite's WAL hook: runs on the committing (writer) thread after each
/// commit with the number of frames now in the WAL.
fn count_wal_frames(_wal: &Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(i64::from(frames)));
    Ok(())
}

/// The fingerprints (64-bit hashes) of every (subject, client_order_id) in
/// the journal: read once at open, then noted by the writer before each
/// insert. A key that is not here is certainly not in the journal; one that
/// is (a retry, or rarely another key with the same hash) is looked up.
/// About 16 bytes per order held in memory.
#[derive(Debug, Default)]
struct KnownKeys {
    // A std mutex: held only for one hash-set lookup or insert.
    fingerprints: Mutex<HashSet<u64>>,
}

impl KnownKeys {
    fn load(conn: &Connection) -> rusqlite::Result<Self> {
        let mut fingerprints = HashSet::new();
        let mut stmt = conn.prepare("SELECT subject, client_order_id FROM orders")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let subject = row.get_ref(0)?.as_str()?;
            let client_order_id = row.get_ref(1)?.as_str()?;
            fingerprints.insert(fingerprint(subject, client_order_id));
        }
        Ok(Self {
            fingerprints: Mutex::new(fingerprints),
        })
    }

    fn note(&self, subject: &str, client_order_id: &str) {
        let fingerprint = fingerprint(subject, client_order_id);
        self.lock().insert(fingerprint);
    }

    fn may_contain(&self, subject: &str, client_order_id: &str) -> bool {
        let fingerprint = fingerprint(subject, client_order_id);
        self.lock().contains(&fingerprint)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.fingerprints.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The same for the same key within a process (`DefaultHasher::new` has
/// fixed keys), which is all an in-memory set needs.
fn fingerprint(subject: &str, client_order_id: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    (subject, client_order_id).hash(&mut hasher);
    hasher.finish()
}

/// How the order path wakes the writer: once per burst of commands, after
/// the runtime has run the tasks it had ready (often more orders, read from
/// the same sockets), not at the first command of the burst.
///
/// Woken at once, the writer can take the CPU from the runtime (on a busy
/// or single core), commit the first order alone and leave the rest of the
/// burst to wait for the next commit and its `fdatasync`. Deferred with
/// [`tokio::task::yield_now`], which the scheduler wakes only once it has
/// run out of ready tasks and polled the I/O driver (or, when always busy,
/// at its periodic maintenance), the ring finds the whole burst queued. A
/// lone order waits for nothing but one more turn of the scheduler.
struct Doorbell {
    // A ring is on its way (a caller is yielding before it rings).
    armed: AtomicBool,
    // At most one ring waits for the writer: more would wake it for nothing.
    ring: std_mpsc::SyncSender<()>,
}

impl Doorbell {
    fn new() -> (Self, std_mpsc::Receiver<()>) {
        let (ring, rings) = std_mpsc::sync_channel(1);
        let doorbell = Self {
            armed: AtomicBool::new(false),
            ring,
        };
        (doorbell, rings)
    }

    /// Called after queueing a command: the first caller of a burst yields
    /// to the runtime, then rings; the others rely on its ring.
    async fn ring_when_idle(&self) {
        if self.armed.swap(true, Ordering::AcqRel) {
            return;
        }
        // Rings on drop, so a caller cancelled while yielding still wakes
        // the writer.
        let _ring = RingOnDrop(self);
        tokio::task::yield_now().await;
    }
}

struct RingOnDrop<'a>(&'a Doorbell);

impl Drop for RingOnDrop<'_> {
    fn drop(&mut self) {
        // Disarmed before ringing, by a read-modify-write: a command queued
        // by a caller that saw the bell armed is then queued before this
        // ring, and one queued later rings itself. The writer drains the
        // queue after every ring, so no command waits without one.
        self.0.armed.swap(false, Ordering::AcqRel);
        // Full: a ring is already waiting, which is as good.
        let _ = self.0.ring.try_send(());
    }
}

fn writer_loop(
    mut conn: Connection,
    mut commands: mpsc::Receiver<Command>,
    rings: &std_mpsc::Receiver<()>,
    keys: &KnownKeys,
    gate: &Mutex<()>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Each ring drains the queue; so does the end of every commit, since
    // commands may have been queued (and their ring taken) meanwhile.
    while rings.recv().is_ok() {
        loop {
            while batch.len() < MAX_BATCH {
                match commands.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            commit_batch(&mut conn, &mut batch, keys);
            rewind_if_long(&conn, gate);
        }
    }
    tracing::debug!("order journal writer stopped");
}

/// Rewinds a WAL that has grown past [`REWIND_FRAMES`] (see the module
/// documentation), between two batches.
fn rewind_if_long(conn: &Connection, gate: &Mutex<()>) {
    if WAL_FRAMES.with(Cell::get) > REWIND_FRAMES {
        // Nothing is appended while this runs, so it can copy every
        // frame; RESTART then waits (briefly: reads are short) for
        // readers of the old frames, so the next commit rewinds.
        let _gate = gate.lock().unwrap_or_else(|e| e.into_inner());
        match checkpoint(conn, "RESTART") {
            Ok((0, log, done)) if log == done => WAL_FRAMES.with(|f| f.set(0)),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "order journal checkpoint failed"),
        }
    }
}

/// A checkpoint in `mode`: (busy, frames in the WAL, frames checkpointed).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

enum Applied {
    Recorded(Result<Recorded, Error>),
    Finalized(Result<bool, Error>),
}

/// Applies every command of `batch` in one transaction, commits, and only
/// then answers each. A failed commit fails every command of the batch.
fn commit_batch(conn: &mut Connection, batch: &mut Vec<Command>, keys: &KnownKeys) {
    let applied = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let applied: Vec<Applied> = batch
            .iter()
            .map(|command| match command {
                Command::Record { order, .. } => {
                    // Noted before the insert: should it fail, the set only
                    // holds one key too many, which costs a lookup.
                    keys.note(&order.subject, &order.terms.client_order_id);
                    Applied::Recorded(
                        insert_unless_exists(&tx, order).map_err(journal_err("record order")),
                    )
                }
                Command::Finalize { order, .. } => {
                    Applied::Finalized(finalize(&tx, order).map_err(journal_err("finalize order")))
                }
            })
            .collect();
        tx.commit()?;
        Ok::<_, rusqlite::Error>(applied)
    })();
    match applied {
        Ok(applied) => {
            for (command, result) in batch.drain(..).zip(applied) {
                // A dropped receiver is a caller that went away: nothing to do.
                match (command, result) {
                    (Command::Record { reply, .. }, Applied::Recorded(r)) => drop(reply.send(r)),
                    (Command::Finalize { reply, .. }, Applied::Finalized(r)) => drop(reply.send(r)),
                    _ => unreachable!("results are in command order"),
                }
            }
        }
        Err(err) => {
            tracing::error!(error = %err, orders = batch.len(), "order journal commit failed");
            let source = Arc::new(err);
            let error = || Error::Journal {
                context: "commit".into(),
                source: Arc::clone(&source) as _,
            };
            for command in batch.drain(..) {
                match command {
                    Command::Record { reply, .. } => drop(reply.send(Err(error()))),
                    Command::Finalize { reply, .. } => drop(reply.send(Err(error()))),
                }
            }
        }
    }
}

fn insert_unless_exists(conn: &Connection, order: &OrderRecord) -> rusqlite::Result<Recorded> {
    // The unique index decides in the same step as the insert; the existing
    // order is read only when there is one (rare: the executor looked first).
    let dec = |d: &Option<Decimal>| d.map(|d| d.to_string());
    let inserted = conn.prepare_cached(
        "INSERT INTO orders (order_id, subject, client_order_id, symbol, side, quantity, price, rate_id, \
         tolerance, status, reject_reason, message, market_price, market_rate_id, applied_tolerance, \
         fill_price, liquidity_provider, lp_execution_id, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20) \
         ON CONFLICT (subject, client_order_id) DO NOTHING",
    )?
    .execute(params![
        order.order_id,
        order.subject,
        order.terms.client_order_id,
        order.terms.symbol,
        order.terms.side.as_str(),
        order.terms.quantity.to_string(),
        order.terms.price.to_string(),
        order.terms.rate_id,
        order.terms.tolerance.map(|t| t.to_string()),
        order.status.as_str(),
        order.reject_reason.map(RejectReason::as_str),
        order.message,
        dec(&order.market_price),
        order.market_rate_id,
        dec(&order.applied_tolerance),
        dec(&order.fill_price),
        order.liquidity_provider,
        order.lp_execution_id,
        unix_micros(order.created_at),
        unix_micros(order.updated_at),
    ])?;
    if inserted == 1 {
        return Ok(Recorded::Inserted);
    }
    let (_, existing) = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM orders WHERE subject = ?1 AND client_order_id = ?2"
        ))?
        .query_row(
            params![order.subject, order.terms.client_order_id],
            row_to_order,
        )?;
    Ok(Recorded::Existing(Box::new(existing)))
}

fn finalize(conn: &Connection, order: &OrderRecord) -> rusqlite::Result<bool> {
    let changed = conn
        .prepare_cached(
            "UPDATE orders SET status = ?2, reject_reason = ?3, message = ?4, fill_price = ?5, \
             lp_execution_id = ?6, updated_at = ?7 WHERE order_id = ?1 AND status = 'PENDING'",
        )?
        .execute(params![
            order.order_id,
            order.status.as_str(),
            order.reject_reason.map(RejectReason::as_str),
            order.message,
            order.fill_price.map(|d| d.to_string()),
            order.lp_execution_id,
            unix_micros(order.updated_at),
        ])?;
    Ok(changed == 1)
}

fn checkpoint_loop(conn: &Connection, stop: &std_mpsc::Receiver<()>, gate: &Mutex<()>) {
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        // PASSIVE never blocks the writer (only its rewind, through the gate).
        let _gate = gate.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = checkpoint(conn, "PASSIVE") {
            tracing::warn!(error = %err, "order journal checkpoint failed");
        }
    }
    // Leave a short WAL behind for the next start.
    let _ = checkpoint(conn, "PASSIVE");
}

fn conversion_error(column: usize, what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("invalid {what} {value:?} in the order journal").into(),
    )
}

fn decimal_at(row: &Row<'_>, column: usize) -> rusqlite::Result<Decimal> {
    let text: String = row.get(column)?;
    Decimal::from_str_exact(&text).map_err(|_| conversion_error(column, "decimal", &text))
}

fn optional_decimal_at(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<Decimal>> {
    let text: Option<String> = row.get(column)?;
    text.map(|t| Decimal::from_str_exact(&t).map_err(|_| conversion_error(column, "decimal", &t)))
        .transpose()
}

fn row_to_order(row: &Row<'_>) -> rusqlite::Result<(i64, OrderRecord)> {
    let side: String = row.get(5)?;
    let tolerance: Option<String> = row.get(9)?;
    let status: String = row.get(10)?;
    let reason: Option<String> = row.get(11)?;
    let order = OrderRecord {
        order_id: row.get(1)?,
        subject: row.get(2)?,
        terms: OrderTerms {
            client_order_id: row.get(3)?,
            symbol: row.get(4)?,
            side: Side::parse(&side).ok_or_else(|| conversion_error(5, "side", &side))?,
            quantity: decimal_at(row, 6)?,
            price: decimal_at(row, 7)?,
            rate_id: row.get(8)?,
            tolerance: tolerance
                .map(|t| {
                    t.parse::<Tolerance>()
                        .map_err(|_| conversion_error(9, "tolerance", &t))
                })
                .transpose()?,
        },
        status: OrderStatus::parse(&status)
            .ok_or_else(|| conversion_error(10, "status", &status))?,
        reject_reason: reason
            .map(|r| {
                RejectReason::parse(&r).ok_or_else(|| conversion_error(11, "reject reason", &r))
            })
            .transpose()?,
        message: row.get(12)?,
        market_price: optional_decimal_at(row, 13)?,
        market_rate_id: row.get(14)?,
        applied_tolerance: optional_decimal_at(row, 15)?,
        fill_price: optional_decimal_at(row, 16)?,
        liquidity_provider: row.get(17)?,
        lp_execution_id: row.get(18)?,
        created_at: from_unix_micros(row.get(19)?),
        updated_at: from_unix_micros(row.get(20)?),
    };
    Ok((row.get(0)?, order))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    static NEXT_ID: AtomicU64 = AtomicU64::new(1);

    /// The first page, of at most `limit`, of alice's orders matching `filter`.
    async fn alices_first(
        journal: &OrderJournal,
        filter: ListFilter,
        limit: usize,
    ) -> Vec<OrderRecord> {
        journal
            .list("alice", filter, None, limit)
            .await
            .unwrap()
            .orders
    }

    fn order(subject: &str, coid: &str, status: OrderStatus) -> OrderRecord {
        let now = SystemTime::now();
        OrderRecord {
            order_id: super::super::model::new_order_id(
                now,
                u128::from(NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            ),
            subject: subject.into(),
            terms: OrderTerms {
                client_order_id: coid.into(),
                symbol: "USD_JPY".into(),
                side: Side::Sell,
                quantity: "1000.50".parse().unwrap(),
                price: "151.230".parse().unwrap(),
                rate_id: Some("USD_JPY-r-1".into()),
                tolerance: Some("0.5bp".parse().unwrap()),
            },
            status,
            reject_reason: None,
            message: "m".into(),
            market_price: Some("151.231".parse().unwrap()),
            market_rate_id: Some("USD_JPY-r-2".into()),
            applied_tolerance: Some("0.0075615".parse().unwrap()),
            fill_price: None,
            liquidity_provider: "simulated".into(),
            lp_execution_id: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn records_once_per_subject_and_client_order_id() {
        let dir = tempfile::tempdir().unwrap();
        let journal = OrderJournal::open(&dir.path().join("o.sqlite3"), JournalSync::Full).unwrap();
        let first = order("alice", "c1", OrderStatus::Rejected);
        assert!(matches!(
            journal.record(first.clone()).await.unwrap(),
            Recorded::Inserted
        ));
        match journal
            .record(order("alice", "c1", OrderStatus::Filled))
            .await
            .unwrap()
        {
            Recorded::Existing(existing) => assert_eq!(existing.order_id, first.order_id),
            Recorded::Inserted => panic!("second insert of alice/c1"),
        }
        assert!(matches!(
            journal
                .record(order("bob", "c1", OrderStatus::Filled))
                .await
                .unwrap(),
            Recorded::Inserted
        ));
        let found = journal.find("alice", "c1").unwrap().unwrap();
        assert_eq!(
            found.terms.quantity.to_string(),
            "1000.50",
            "decimals keep their scale"
        );
        assert_eq!(found.terms.tolerance, first.terms.tolerance);
        assert!(
            first.created_at.duration_since(found.created_at).unwrap() < Duration::from_micros(1)
        );
        assert!(journal.find("carol", "c1").unwrap().is_none());
        assert_eq!(
            journal.get(&first.order_id).await.unwrap().unwrap().subject,
            "alice"
        );
    }

    #[tokio::test]
    async fn pending_orders_are_finalized_once_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sqlite3");
        let journal = OrderJournal::open(&path, JournalSync::Full).unwrap();
        let mut pending = order("alice", "p1", OrderStatus::Pending);
        journal.record(pending.clone()).await.unwrap();
        assert_eq!(journal.pending().await.unwrap().len(), 1);
        pending.status = OrderStatus::Filled;
        pending.fill_price = Some("151.231".parse().unwrap());
        pending.lp_execution_id = Some("X1".into());
        assert!(journal.finalize(pending.clone()).await.unwrap());
        assert!(
            !journal.finalize(pending.clone()).await.unwrap(),
            "already final"
        );
        drop(journal);
        let journal = OrderJournal::open(&path, JournalSync::Full).unwrap();
        assert!(journal.pending().await.unwrap().is_empty());
        // The keys of the orders already journalled are known after reopening.
        let found = journal.find("alice", "p1").unwrap().unwrap();
        assert_eq!(found.order_id, pending.order_id);
        assert!(journal.find("alice", "p2").unwrap().is_none());
        let read = journal.get(&pending.order_id).await.unwrap().unwrap();
        assert_eq!(
            (read.status, read.lp_execution_id.as_deref()),
            (OrderStatus::Filled, Some("X1"))
        );
    }

    #[tokio::test]
    async fn concurrent_records_are_group_committed_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let journal =
            OrderJournal::open(&dir.path().join("o.sqlite3"), JournalSync::Normal).unwrap();
        let tasks: Vec<_> = (0..250)
            .map(|i| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let mut o = order("alice", &format!("c{i}"), OrderStatus::Filled);
                    if i % 2 == 0 {
                        o.terms.symbol = "EUR_USD".into();
                    }
                    journal.record(o).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert!(matches!(task.await.unwrap(), Recorded::Inserted));
        }
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let filter = ListFilter {
                symbol: Some("EUR_USD".into()),
                ..Default::default()
            };
            let page = journal.list("alice", filter, cursor, 40).await.unwrap();
            seen.extend(page.orders.into_iter().map(|o| o.terms.client_order_id));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), 125);
        let unique: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), 125, "pages do not overlap");
        let rejected = ListFilter {
            status: Some(OrderStatus::Rejected),
            ..Default::default()
        };
        assert!(alices_first(&journal, rejected, 10).await.is_empty());
        let future = ListFilter {
            created_after: Some(SystemTime::now() + Duration::from_secs(1)),
            ..Default::default()
        };
        assert!(alices_first(&journal, future, 10).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_rewinds_under_continuous_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sqlite3");
        let journal = OrderJournal::open(&path, JournalSync::Normal).unwrap();
        let writers: Vec<_> = (0..20)
            .map(|w| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    for i in 0..300 {
                        // A reader too, as on the order path: readers pin snapshots.
                        journal.find("alice", "nobody").unwrap();
                        journal
                            .record(order("alice", &format!("w{w}-{i}"), OrderStatus::Filled))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let wal = dir.path().join("o.sqlite3-wal");
        let mut largest = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let db = std::fs::metadata(&path).unwrap().len();
        // Without rewinding, the WAL holds every frame written (~30 MiB).
        assert!(
            largest < 8 << 20,
            "WAL grew to {largest} bytes (database {db})"
        );
        let all = alices_first(&journal, ListFilter::default(), 10_000).await;
        assert_eq!(all.len(), 6000);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.sqlite3");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = OrderJournal::open(&path, JournalSync::Full).unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[tokio::test]
    async fn a_caller_dropped_before_the_writer_is_rung_still_gets_its_order_written() {
        let dir = tempfile::tempdir().unwrap();
        let journal = OrderJournal::open(&dir.path().join("o.sqlite3"), JournalSync::Full).unwrap();
        // Polled once: the command is queued and its caller yields before
        // ringing; then the caller is dropped.
        let dropped = futures_util::FutureExt::now_or_never(journal.record(order(
            "alice",
            "gone",
            OrderStatus::Filled,
        )));
        assert!(dropped.is_none(), "recorded without yielding");
        // The next caller's order is committed (a bell left armed would
        // never ring again), and so is the dropped one.
        let next = tokio::time::timeout(
            Duration::from_secs(10),
            journal.record(order("alice", "next", OrderStatus::Filled)),
        )
        .await
        .expect("the writer was never rung");
        assert!(matches!(next.unwrap(), Recorded::Inserted));
        assert!(journal.find("alice", "gone").unwrap().is_some());
    }
}
