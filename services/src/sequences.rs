//! Where each symbol's sequence continues after a restart.
//!
//! Sequences never go backwards, also across restarts: clients resume with
//! the last sequence they saw, and every cache (the hub, the latest-rate
//! store, other processes sharing a Momento topic, browsers) ignores a tick
//! that is not newer than the one it holds. So a restarted publisher must not
//! start again at 1.
//!
//! `<data-dir>/sequences.json` holds, per symbol, a *floor*: every sequence
//! published so far is below it. The publisher reserves sequences in blocks
//! of [`BLOCK`]: before it publishes a sequence at or above the floor it
//! durably raises the floor by a block (one small synced write per 1,024
//! ticks of a symbol). A clean shutdown lowers the floors to exactly one past
//! the last published sequence, so the next run continues without a gap;
//! after a crash it continues after the reserved block, and clients resuming
//! across the restart see the skipped numbers as a gap.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use crate::Error;

/// File name of the sequence floors inside the data directory.
pub const SEQUENCES_FILE: &str = "sequences.json";

/// Sequences reserved per synced write.
pub const BLOCK: u64 = 1024;

/// The durable per-symbol sequence floors. A cheap `Clone` handle.
#[derive(Debug, Clone)]
pub(crate) struct SequenceStore {
    path: Arc<PathBuf>,
    floors: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Serialises writers, so an older snapshot never overwrites a newer one.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Symbols whose next block is being reserved in the background.
    raising: Arc<Mutex<std::collections::HashSet<String>>>,
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

impl SequenceStore {
    /// Opens the floors at `path` (none yet when the file does not exist).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read, [`Error::Config`] when it
    /// is not a JSON object of symbol to floor.
    pub(crate) fn open(path: &Path) -> Result<Self, Error> {
        let floors = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Config(format!(
                    "{} is not a JSON object of symbol to sequence floor: {e}; remove it to restart every sequence at 1",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io_error(format!("cannot read {}", path.display()))(e)),
        };
        Ok(Self {
            path: Arc::new(path.to_owned()),
            floors: Arc::new(Mutex::new(floors)),
            writer: Arc::default(),
            raising: Arc::default(),
        })
    }

    /// Every sequence `symbol` may already have used is below this (1 when
    /// it never published).
    pub(crate) fn floor(&self, symbol: &str) -> u64 {
        self.floors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(symbol)
            .copied()
            .unwrap_or(1)
            .max(1)
    }

    /// Makes sure `sequence` of `symbol` is below the durable floor, raising
    /// it by a block (and syncing the file) when it is not.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written; the sequence must then
    /// not be published.
    pub(crate) async fn reserve(&self, symbol: &str, sequence: u64) -> Result<(), Error> {
        let floor = self.floor(symbol);
        if sequence >= floor {
            return self.set(symbol, sequence.saturating_add(BLOCK)).await;
        }
        // Half the block used: raise the floor in the background, so the
        // synced write is rarely on a tick's path.
        if sequence >= floor.saturating_sub(BLOCK / 2) && self.claim_background(symbol) {
            let (store, symbol) = (self.clone(), symbol.to_owned());
            tokio::spawn(async move {
                // Never lowers: only raises past what is reserved now.
                let next = store.floor(&symbol).max(floor).saturating_add(BLOCK);
                if let Err(err) = store.raise(&symbol, next).await {
                    tracing::warn!(%symbol, error = %err, "could not reserve the next sequence block ahead");
                }
                store.release_background(&symbol);
            });
        }
        Ok(())
    }

    /// Raises `symbol`'s floor to `floor` unless it is already there.
    async fn raise(&self, symbol: &str, floor: u64) -> Result<(), Error> {
        if self.floor(symbol) >= floor {
            return Ok(());
        }
        self.set(symbol, floor).await
    }

    /// Whether this caller may start the background raise of `symbol`.
    fn claim_background(&self, symbol: &str) -> bool {
        self.raising
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(symbol.to_owned())
    }

    fn release_background(&self, symbol: &str) {
        self.raising
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(symbol);
    }

    /// Sets `symbol`'s floor to exactly `floor` (after a clean stop: one past
    /// the last published sequence) and syncs the file.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub(crate) async fn set(&self, symbol: &str, floor: u64) -> Result<(), Error> {
        let _writer = self.writer.lock().await;
        let mut snapshot = self
            .floors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        snapshot.insert(symbol.to_owned(), floor);
        let path = Arc::clone(&self.path);
        let written = snapshot.clone();
        tokio::task::spawn_blocking(move || write_synced(&path, &written))
            .await
            .map_err(|e| Error::Io {
                context: "sequence floor writer".into(),
                source: std::io::Error::other(e),
            })??;
        // Only once it is on disk: a failed write must leave the floor where
        // it was, so the next sequence tries to reserve again.
        *self.floors.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
        Ok(())
    }
}

/// Replaces `path` atomically with `floors`, synced to disk.
fn write_synced(path: &Path, floors: &BTreeMap<String, u64>) -> Result<(), Error> {
    use std::io::Write;
    let temporary = path.with_extension("json.tmp");
    let context = || format!("cannot write {}", temporary.display());
    let mut file = std::fs::File::create(&temporary).map_err(io_error(context()))?;
    let mut json = serde_json::to_vec_pretty(floors).expect("a map of numbers serialises");
    json.push(b'\n');
    file.write_all(&json).map_err(io_error(context()))?;
    file.sync_all().map_err(io_error(context()))?;
    drop(file);
    std::fs::rename(&temporary, path)
        .map_err(io_error(format!("cannot replace {}", path.display())))?;
    if let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        // Makes the rename itself durable; not every platform allows it.
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn floors_are_reserved_in_blocks_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEQUENCES_FILE);
        let store = SequenceStore::open(&path).unwrap();
        assert_eq!(store.floor("USD_JPY"), 1);
        store.reserve("USD_JPY", 1).await.unwrap();
        assert_eq!(store.floor("USD_JPY"), 1 + BLOCK);
        // Early in the block: no write.
        std::fs::remove_file(&path).unwrap();
        store.reserve("USD_JPY", BLOCK / 4).await.unwrap();
        assert!(
            !path.exists(),
            "a sequence early in the block must not write"
        );
        store.reserve("USD_JPY", 1 + BLOCK).await.unwrap();
        assert_eq!(store.floor("USD_JPY"), 1 + 2 * BLOCK);

        store.set("EUR_USD", 42).await.unwrap();

        // A floor that cannot be written is not raised: the next sequence
        // tries again (and fails) instead of being published unreserved.
        let blocked =
            SequenceStore::open(&dir.path().join("missing-dir").join(SEQUENCES_FILE)).unwrap();
        assert!(blocked.reserve("USD_JPY", 1).await.is_err());
        assert_eq!(blocked.floor("USD_JPY"), 1);
        assert!(blocked.reserve("USD_JPY", 1).await.is_err());
        let reopened = SequenceStore::open(&path).unwrap();
        assert_eq!(reopened.floor("USD_JPY"), 1 + 2 * BLOCK);
        assert_eq!(reopened.floor("EUR_USD"), 42);
        assert_eq!(reopened.floor("GBP_USD"), 1);
    }

    #[tokio::test]
    async fn the_next_block_is_reserved_ahead_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let store = SequenceStore::open(&dir.path().join(SEQUENCES_FILE)).unwrap();
        store.reserve("USD_JPY", 1).await.unwrap();
        assert_eq!(store.floor("USD_JPY"), 1 + BLOCK);
        // Past half the block: returns at once, the floor rises soon after.
        store.reserve("USD_JPY", 1 + BLOCK / 2).await.unwrap();
        // The raise syncs on a blocking thread (slow on a busy disk): yield
        // until it has landed, within a generous deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while store.floor("USD_JPY") != 1 + 2 * BLOCK {
            assert!(
                std::time::Instant::now() < deadline,
                "the background reservation never landed"
            );
            tokio::task::yield_now().await;
        }
        let reopened = SequenceStore::open(&dir.path().join(SEQUENCES_FILE)).unwrap();
        assert_eq!(reopened.floor("USD_JPY"), 1 + 2 * BLOCK);
    }

    #[test]
    fn a_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEQUENCES_FILE);
        std::fs::write(&path, b"not json").unwrap();
        let err = SequenceStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("sequences.json"), "{err}");
        assert!(err.contains("remove it"), "{err}");
    }
}
