//! Revoked token ids: kept in SQLite (survive restarts) and mirrored in
//! memory (checked on every request without I/O).

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use rusqlite::Connection;

use super::keys::unix;
use crate::Error;

/// The persistent set of revoked token ids. A cheap `Clone` handle.
#[derive(Clone)]
pub(super) struct Revocations {
    // token id -> expiry (Unix seconds): entries are dropped once the token
    // would have expired anyway.
    memory: Arc<RwLock<HashMap<String, u64>>>,
    db: Arc<Mutex<Connection>>,
    /// Each new revocation, for streams that must end when their token is
    /// revoked.
    news: tokio::sync::broadcast::Sender<Revoked>,
}

/// One revocation: the token id and when it lapses (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The revoked token id.
    pub token_id: Arc<str>,
    /// When the token would have expired anyway (Unix seconds).
    pub expires_at: u64,
}

/// Completes once a token is revoked: at once when `is_revoked` already says
/// so, else when `news` announces it (`names_it` tells whether an
/// announcement is of this token). After lagging behind `news` it asks
/// `is_revoked` again; once `news` is closed it never completes. Subscribe
/// to `news` before calling, so nothing announced meanwhile is missed.
pub async fn until_revoked<T: Clone>(
    mut news: tokio::sync::broadcast::Receiver<T>,
    names_it: impl Fn(&T) -> bool,
    is_revoked: impl Fn() -> bool,
) {
    use tokio::sync::broadcast::error::RecvError;
    if is_revoked() {
        return;
    }
    loop {
        match news.recv().await {
            Ok(announced) if names_it(&announced) => return,
            Ok(_) => {}
            Err(RecvError::Lagged(_)) if is_revoked() => return,
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// Revocations buffered per listener before it lags (and re-reads the set).
const NEWS_CAPACITY: usize = 256;

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("count", &self.memory.read().map_or(0, |m| m.len()))
            .finish()
    }
}

fn db_err(context: &str) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::Io {
        context: format!("revocation store: {context}"),
        source: std::io::Error::other(e),
    }
}

impl Revocations {
    /// Opens (or creates) the store at `path` and loads unexpired entries.
    ///
    /// # Errors
    /// [`Error::Io`] when the database cannot be opened.
    pub(super) fn open(path: &Path) -> Result<Self, Error> {
        let db = Connection::open(path).map_err(db_err("open"))?;
        db.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err("enable WAL"))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS revoked_tokens (
                 token_id   TEXT PRIMARY KEY,
                 expires_at INTEGER NOT NULL,
                 revoked_at INTEGER NOT NULL
             );",
        )
        .map_err(db_err("create table"))?;
        let now = unix(SystemTime::now());
        db.execute("DELETE FROM revoked_tokens WHERE expires_at < ?1", [now])
            .map_err(db_err("prune"))?;
        let mut memory = HashMap::new();
        {
            let mut stmt = db
                .prepare("SELECT token_id, expires_at FROM revoked_tokens")
                .map_err(db_err("load"))?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?))
                })
                .map_err(db_err("load"))?;
            for row in rows {
                let (id, exp) = row.map_err(db_err("load"))?;
                memory.insert(id, exp);
            }
        }
        Ok(Self {
            memory: Arc::new(RwLock::new(memory)),
            db: Arc::new(Mutex::new(db)),
            news: tokio::sync::broadcast::Sender::new(NEWS_CAPACITY),
        })
    }

    /// Revokes `token_id` (valid until `expires_at` at the latest). Durable
    /// before it returns.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be stored.
    pub(super) fn revoke(&self, token_id: &str, expires_at: SystemTime) -> Result<(), Error> {
        let exp = unix(expires_at);
        let now = unix(SystemTime::now());
        {
            let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
            db.execute(
                "INSERT INTO revoked_tokens (token_id, expires_at, revoked_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(token_id) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
                rusqlite::params![token_id, exp, now],
            )
            .map_err(db_err("insert"))?;
            db.execute("DELETE FROM revoked_tokens WHERE expires_at < ?1", [now])
                .map_err(db_err("prune"))?;
        }
        {
            let mut memory = self.memory.write().unwrap_or_else(|e| e.into_inner());
            memory.retain(|_, e| *e >= now);
            memory.insert(token_id.to_owned(), exp);
        }
        // In memory first: a listener that subscribes and then checks the
        // set never misses a revocation. No listener is not an error.
        let _ = self.news.send(Revoked {
            token_id: token_id.into(),
            expires_at: exp,
        });
        Ok(())
    }

    /// Every revocation still in force.
    pub(super) fn entries(&self) -> Vec<Revoked> {
        let now = unix(SystemTime::now());
        self.memory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, exp)| **exp >= now)
            .map(|(id, exp)| Revoked {
                token_id: id.as_str().into(),
                expires_at: *exp,
            })
            .collect()
    }

    /// Revocations from now on.
    pub(super) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Revoked> {
        self.news.subscribe()
    }

    /// Whether `token_id` is revoked.
    pub(super) fn is_revoked(&self, token_id: &str) -> bool {
        self.memory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(token_id)
    }
}
