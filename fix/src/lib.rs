//! FIX 4.4 for fxcast: the tag=value codec and an initiator session to a
//! liquidity provider, shared by the FIX feed and the FIX LP adapter.
//!
//! Why our own: the Rust FIX crates were evaluated first. `fefix` (0.7,
//! last released 2022) has a codec but no usable session layer; `hotfix`
//! (0.13) is an actively developed buy-side engine, but it warns of
//! frequent breaking changes, brings its own reconnect policy and stores,
//! and a code-generated dictionary that is a heavy build here. The session
//! rules fxcast needs are small and are tested below against a
//! counterparty script and, in the workspace tests, against QuickFIX.
//!
//! # Layout
//! - `codec`: [`Message`], [`encode`], [`Decoder`] (framing, BodyLength,
//!   CheckSum, garbled input).
//! - `store`: [`SeqStore`], sequence numbers on disk.
//! - `session`: the session rules as a state machine without I/O.
//! - `client`: [`FixSession`], the connection driver: connect, logon,
//!   read/write, reconnect with [`fxcast_transport::Backoff`].
//! - `symbols`: [`SymbolMap`], fxcast symbols <-> the LP's.
//! - [`tag`]: the tags used.

#![forbid(unsafe_code)]

mod client;
mod codec;
mod session;
mod store;
mod symbols;
pub mod tag;
mod time;

use std::{path::PathBuf, time::Duration};

pub use client::{FixSession, SessionStatus};
pub use codec::{Decoded, Decoder, EncodeError, MAX_BODY_LENGTH, Message, SOH, checksum, encode};
pub use fxcast_transport::{BackoffPolicy, Secret};
pub use session::{SessionEvent, SessionReject};
pub use store::SeqStore;
pub use symbols::SymbolMap;
pub use time::utc_timestamp;

/// The only BeginString spoken.
pub const BEGIN_STRING: &str = "FIX.4.4";

/// Settings of one initiator session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The acceptor's host.
    pub host: String,
    /// The acceptor's port.
    pub port: u16,
    /// Our CompID (49 on what we send).
    pub sender_comp_id: String,
    /// The LP's CompID (56 on what we send).
    pub target_comp_id: String,
    /// HeartBtInt (whole seconds on the wire).
    pub heartbeat: Duration,
    /// Username (553) on the Logon.
    pub username: Option<String>,
    /// Password (554) on the Logon.
    pub password: Option<Secret>,
    /// Where the sequence numbers are kept.
    pub store_dir: PathBuf,
    /// Delays between connection attempts.
    pub reconnect: BackoffPolicy,
    /// Longest wait for TCP connect and for the Logon answer.
    pub logon_timeout: Duration,
}

impl SessionConfig {
    /// A session `sender` -> `target` at `host:port` with the defaults:
    /// 30 s heartbeat, no credentials, reconnects from 250 ms doubling up to
    /// 30 s, 10 s logon timeout.
    pub fn new(host: &str, port: u16, sender: &str, target: &str, store_dir: PathBuf) -> Self {
        Self {
            host: host.to_owned(),
            port,
            sender_comp_id: sender.to_owned(),
            target_comp_id: target.to_owned(),
            heartbeat: Duration::from_secs(30),
            username: None,
            password: None,
            store_dir,
            reconnect: BackoffPolicy::new(Duration::from_millis(250), Duration::from_secs(30)),
            logon_timeout: Duration::from_secs(10),
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`FixError::Config`] naming what is missing or unusable.
    pub fn validate(&self) -> Result<(), FixError> {
        let missing = |what: &str| Err(FixError::Config(format!("FIX needs {what}")));
        if self.host.is_empty() {
            return missing("a host (--fix-host)");
        }
        if self.port == 0 {
            return missing("a port (--fix-port)");
        }
        if self.sender_comp_id.is_empty() {
            return missing("a SenderCompID (--fix-sender-comp-id)");
        }
        if self.target_comp_id.is_empty() {
            return missing("a TargetCompID (--fix-target-comp-id)");
        }
        if self.heartbeat < Duration::from_secs(1) {
            return Err(FixError::Config(
                "--fix-heartbeat must be at least 1s (HeartBtInt is in whole seconds)".into(),
            ));
        }
        for (name, value) in [
            ("SenderCompID", Some(&self.sender_comp_id)),
            ("TargetCompID", Some(&self.target_comp_id)),
            ("Username", self.username.as_ref()),
        ] {
            if value.is_some_and(|v| v.bytes().any(|b| b == codec::SOH || b == b'=')) {
                return Err(FixError::Config(format!(
                    "the FIX {name} cannot contain SOH or '='"
                )));
            }
        }
        Ok(())
    }
}

/// Errors of the FIX session.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FixError {
    /// Unusable settings.
    #[error("FIX configuration: {0}")]
    Config(String),
    /// The sequence-number file cannot be used.
    #[error("FIX sequence store {path}: {message}")]
    Store {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A message cannot be encoded.
    #[error("FIX encoding: {0}")]
    Encode(EncodeError),
    /// The session is not logged on: nothing was sent.
    #[error("the FIX session is not logged on")]
    NotLoggedOn,
    /// The session stopped.
    #[error("the FIX session has stopped")]
    Stopped,
    /// Writing to the connection failed: the message may or may not have
    /// reached the counterparty.
    #[error("FIX connection lost while sending: {0}")]
    Io(String),
}
