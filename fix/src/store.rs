//! The session's sequence numbers on disk, so a restart resumes the
//! session instead of starting over (a counterparty logs out a session
//! whose numbers go backwards).
//!
//! One small file per session, `<SenderCompID>-<TargetCompID>.seqnums`
//! holding the next outgoing and the next expected incoming number, always
//! rewritten in place at the same fixed width. The outgoing number is
//! synced to disk *before* the message that uses it is written to the
//! socket: a number must never be used twice. The incoming number is
//! written through the page cache on every message (it survives a
//! `kill -9`) and synced with the next outgoing change; if a power loss
//! rolls it back, the counterparty's messages arrive again marked PossDup
//! and are handled idempotently.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

use crate::FixError;

/// Width of one number in the file.
const WIDTH: usize = 20;

/// The next outgoing (sender) and expected incoming (target) numbers.
#[derive(Debug)]
pub struct SeqStore {
    path: PathBuf,
    file: File,
    next_sender: u64,
    next_target: u64,
}

impl SeqStore {
    /// Opens (or creates, starting at 1 and 1) the store of the session
    /// `sender` -> `target` under `dir`.
    ///
    /// # Errors
    /// [`FixError::Store`] when the directory or file cannot be created,
    /// or the file is not a sequence-number file (never silently reset:
    /// that would restart the session at 1).
    pub fn open(dir: &Path, sender: &str, target: &str) -> Result<Self, FixError> {
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let path = dir.join(format!("{}-{}.seqnums", safe(sender), safe(target)));
        let error = |e: std::io::Error| FixError::Store {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(error)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(error)?;
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(error)?;
        let (next_sender, next_target) = if text.trim().is_empty() {
            (1, 1)
        } else {
            let numbers: Vec<u64> = text
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| FixError::Store {
                    path: path.clone(),
                    message: "not two sequence numbers".into(),
                })?;
            match numbers[..] {
                [s, t] if s >= 1 && t >= 1 => (s, t),
                _ => {
                    return Err(FixError::Store {
                        path: path.clone(),
                        message: "not two sequence numbers".into(),
                    });
                }
            }
        };
        let mut store = Self {
            path,
            file,
            next_sender,
            next_target,
        };
        store.write(true)?;
        Ok(store)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number the next outgoing message carries.
    pub fn next_sender(&self) -> u64 {
        self.next_sender
    }

    /// The number the next incoming message must carry.
    pub fn next_target(&self) -> u64 {
        self.next_target
    }

    /// Takes the next outgoing number, durable before it is returned.
    ///
    /// # Errors
    /// [`FixError::Store`] when it cannot be made durable (nothing may be
    /// sent then).
    pub fn take_sender(&mut self) -> Result<u64, FixError> {
        let seq = self.next_sender;
        self.next_sender += 1;
        self.write(true)?;
        Ok(seq)
    }

    /// Sets the next expected incoming number.
    ///
    /// # Errors
    /// [`FixError::Store`] when the file cannot be written.
    pub fn set_target(&mut self, next: u64) -> Result<(), FixError> {
        if next != self.next_target {
            self.next_target = next;
            self.write(false)?;
        }
        Ok(())
    }

    /// Both numbers back to 1 (the counterparty reset the session with
    /// a Logon carrying ResetSeqNumFlag), durable before it returns.
    ///
    /// # Errors
    /// [`FixError::Store`] when it cannot be made durable.
    pub fn reset(&mut self) -> Result<(), FixError> {
        self.next_sender = 1;
        self.next_target = 1;
        self.write(true)
    }

    fn write(&mut self, sync: bool) -> Result<(), FixError> {
        let line = format!(
            "{:>WIDTH$} {:>WIDTH$}\n",
            self.next_sender, self.next_target
        );
        let result = self
            .file
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.file.write_all(line.as_bytes()))
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        result.map_err(|e| FixError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SeqStore::open(dir.path(), "FXCAST", "LP").unwrap();
        assert_eq!((store.next_sender(), store.next_target()), (1, 1));
        assert_eq!(store.take_sender().unwrap(), 1);
        assert_eq!(store.take_sender().unwrap(), 2);
        store.set_target(41).unwrap();
        drop(store);
        let store = SeqStore::open(dir.path(), "FXCAST", "LP").unwrap();
        assert_eq!((store.next_sender(), store.next_target()), (3, 41));
        let mut store = store;
        store.reset().unwrap();
        drop(store);
        let store = SeqStore::open(dir.path(), "FXCAST", "LP").unwrap();
        assert_eq!((store.next_sender(), store.next_target()), (1, 1));
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("A-B.seqnums"), "garbage").unwrap();
        let err = SeqStore::open(dir.path(), "A", "B").unwrap_err();
        assert!(
            err.to_string().contains("not two sequence numbers"),
            "{err}"
        );
    }
}
