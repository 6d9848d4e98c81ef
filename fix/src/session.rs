//! The FIX 4.4 session rules, without I/O: what to send, deliver or do in
//! answer to each incoming message and to the passing of time.
//!
//! The driver ([`crate::FixSession`]) owns the socket and feeds this state
//! machine; keeping the rules free of I/O lets the unit tests play a
//! counterparty message by message.
//!
//! Rules implemented (FIX 4.4 session layer, initiator side):
//! - Logon (A) first, with HeartBtInt, Username/Password; nothing else is
//!   accepted before the counterparty's Logon.
//! - CompIDs: a message not from TargetCompID to SenderCompID is rejected
//!   (Reject 3, SessionRejectReason 9) and the session logged out.
//! - MsgSeqNum equal to the expected one: processed. Lower without
//!   PossDupFlag: Logout "MsgSeqNum too low" and disconnect; lower with
//!   PossDupFlag: a duplicate, ignored. Higher: ResendRequest (2) for the
//!   gap, the message held until the gap is filled; asked again when the
//!   expected number does not move for HeartBtInt.
//! - Logon with ResetSeqNumFlag=Y and MsgSeqNum 1 from the counterparty:
//!   both numbers restart at 1 (durably), answered with our Logon 141=Y.
//! - ResendRequest from the counterparty: answered with one
//!   SequenceReset-GapFill (4, 123=Y) over the whole range, for admin and
//!   application messages alike. fxcast never replays an application
//!   message: a NewOrderSingle resent late would deal at a stale price (its
//!   outcome is settled with OrderStatusRequest instead), and market data
//!   requests are renewed at every logon.
//! - SequenceReset: GapFill mode moves the expected number forward; Reset
//!   mode sets it regardless of MsgSeqNum (never backwards).
//! - Heartbeat (0) after HeartBtInt of silence on our side; TestRequest (1)
//!   after HeartBtInt + 20% of silence on theirs, disconnect when that goes
//!   unanswered for another HeartBtInt; TestRequests answered with a
//!   Heartbeat carrying the TestReqID.
//! - Reject (3) surfaces as [`SessionEvent::Reject`]; Logout (5) answered
//!   and the connection closed.

use std::time::{Duration, Instant, SystemTime};

use crate::{
    FixError, SessionConfig,
    codec::{Message, encode},
    store::SeqStore,
    tag,
    time::utc_timestamp,
};

/// What the session reports to its users.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// The counterparty accepted our Logon: application messages can flow.
    LoggedOn,
    /// The session ended (logout, lost connection, protocol violation); it
    /// reconnects by itself.
    LoggedOut {
        /// Why.
        reason: String,
    },
    /// An application message (including BusinessMessageReject `j`), in
    /// sequence. `poss_dup()` tells a resent one.
    Message(std::sync::Arc<Message>),
    /// The counterparty rejected one of our messages at session level.
    Reject(SessionReject),
}

/// A session-level Reject (3) of one of our messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReject {
    /// MsgSeqNum of our rejected message (45).
    pub ref_seq_num: Option<u64>,
    /// Its MsgType (372).
    pub ref_msg_type: Option<String>,
    /// The offending tag (371).
    pub ref_tag: Option<String>,
    /// SessionRejectReason (373).
    pub reason: Option<String>,
    /// Text (58).
    pub text: Option<String>,
}

impl std::fmt::Display for SessionReject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session-level Reject")?;
        if let Some(seq) = self.ref_seq_num {
            write!(f, " of message {seq}")?;
        }
        if let Some(t) = &self.ref_msg_type {
            write!(f, " (MsgType {t})")?;
        }
        if let Some(r) = &self.reason {
            write!(f, ", SessionRejectReason {r}")?;
        }
        if let Some(t) = &self.ref_tag {
            write!(f, ", tag {t}")?;
        }
        if let Some(t) = &self.text {
            write!(f, ": {t}")?;
        }
        Ok(())
    }
}

/// What the driver must do.
#[derive(Debug)]
pub(crate) enum Action {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Tell the users.
    Event(SessionEvent),
    /// Close the connection.
    Disconnect(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Our Logon is out, theirs has not arrived.
    AwaitingLogon,
    /// Logged on.
    Active,
    /// Our Logout is out.
    LoggingOut,
}

/// Held out-of-sequence messages at most: a counterparty that keeps
/// skipping gets asked again rather than buffered without bound.
const MAX_HELD: usize = 10_000;

/// The session rules over one connection.
#[derive(Debug)]
pub(crate) struct SessionCore {
    config: SessionConfig,
    store: SeqStore,
    phase: Phase,
    phase_since: Instant,
    /// Out-of-sequence messages waiting for the gap before them.
    held: std::collections::BTreeMap<u64, Message>,
    /// A ResendRequest we sent is outstanding until the expected number
    /// passes this.
    resend_until: Option<u64>,
    /// While a ResendRequest is outstanding: the expected number when it
    /// last moved (or the request went out), and since when; a request
    /// that moves nothing for HeartBtInt is sent again.
    resend_progress: Option<(u64, Instant)>,
    last_sent: Instant,
    last_received: Instant,
    test_request: Option<(String, Instant)>,
    test_requests_sent: u64,
}

impl SessionCore {
    /// A session over a fresh connection, numbers from `store`.
    pub(crate) fn new(config: SessionConfig, store: SeqStore, now: Instant) -> Self {
        Self {
            config,
            store,
            phase: Phase::AwaitingLogon,
            phase_since: now,
            held: Default::default(),
            resend_until: None,
            resend_progress: None,
            last_sent: now,
            last_received: now,
            test_request: None,
            test_requests_sent: 0,
        }
    }

    /// Gives the store back when the connection ends.
    pub(crate) fn into_store(self) -> SeqStore {
        self.store
    }

    pub(crate) fn is_active(&self) -> bool {
        self.phase == Phase::Active
    }

    /// Our Logon.
    pub(crate) fn logon(&mut self, now: Instant) -> Result<Vec<u8>, FixError> {
        let logon = self.logon_message();
        self.phase = Phase::AwaitingLogon;
        self.phase_since = now;
        self.send(logon, now)
    }

    fn logon_message(&self) -> Message {
        let mut logon = Message::new("A")
            .with(tag::ENCRYPT_METHOD, 0)
            .with(tag::HEART_BT_INT, self.config.heartbeat.as_secs().max(1));
        if let Some(user) = &self.config.username {
            logon.push(tag::USERNAME, user);
        }
        if let Some(password) = &self.config.password {
            logon.push(tag::PASSWORD, password.expose());
        }
        logon
    }

    /// The counterparty's Logon with ResetSeqNumFlag (141) = Y and
    /// MsgSeqNum 1: both numbers restart at 1 (durably), and our Logon
    /// with 141=Y (MsgSeqNum 1) answers it.
    fn reset_by_logon(
        &mut self,
        message: Message,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), FixError> {
        tracing::warn!(
            store = %self.store.path().display(),
            from_sender = self.store.next_sender(),
            from_target = self.store.next_target(),
            "the counterparty reset the session (Logon with ResetSeqNumFlag=Y): both sequence numbers restart at 1"
        );
        self.store.reset()?;
        self.held.clear();
        self.resend_until = None;
        self.resend_progress = None;
        let answer = self.logon_message().with(tag::RESET_SEQ_NUM_FLAG, "Y");
        actions.push(Action::Send(self.send(answer, now)?));
        self.store.set_target(2)?;
        self.dispatch(message, now, actions)
    }

    /// Our Logout.
    pub(crate) fn logout(&mut self, text: &str, now: Instant) -> Result<Vec<u8>, FixError> {
        self.phase = Phase::LoggingOut;
        self.phase_since = now;
        self.send(Message::new("5").with(tag::TEXT, text), now)
    }

    /// An application message with the next sequence number, and that
    /// number.
    pub(crate) fn send_app(
        &mut self,
        body: Message,
        now: Instant,
    ) -> Result<(u64, Vec<u8>), FixError> {
        if self.phase != Phase::Active {
            return Err(FixError::NotLoggedOn);
        }
        let seq = self.store.next_sender();
        let bytes = self.send(body, now)?;
        Ok((seq, bytes))
    }

    /// Frames `body` (MsgType first, then the body fields) with the
    /// standard header and the next sequence number, durable first.
    fn send(&mut self, body: Message, now: Instant) -> Result<Vec<u8>, FixError> {
        let seq = self.store.next_sender();
        let bytes = self.frame(body, seq, None)?;
        self.store.take_sender()?;
        self.last_sent = now;
        Ok(bytes)
    }

    /// `body` with the header: MsgType, SenderCompID, TargetCompID,
    /// MsgSeqNum, [PossDupFlag,] SendingTime, [OrigSendingTime,] then the
    /// body fields.
    fn frame(&self, body: Message, seq: u64, poss_dup: Option<&str>) -> Result<Vec<u8>, FixError> {
        let mut fields = body.fields().iter();
        let msg_type = fields.next().map(|(_, v)| v.as_str()).unwrap_or("");
        let mut message = Message::new(msg_type)
            .with(tag::SENDER_COMP_ID, &self.config.sender_comp_id)
            .with(tag::TARGET_COMP_ID, &self.config.target_comp_id)
            .with(tag::MSG_SEQ_NUM, seq);
        if poss_dup.is_some() {
            message.push(tag::POSS_DUP_FLAG, "Y");
        }
        message.push(tag::SENDING_TIME, utc_timestamp(SystemTime::now()));
        if let Some(original) = poss_dup {
            message.push(tag::ORIG_SENDING_TIME, original);
        }
        for (t, v) in fields {
            message.push(*t, v);
        }
        encode(crate::BEGIN_STRING, &message).map_err(FixError::Encode)
    }

    /// Handles one incoming message.
    pub(crate) fn on_message(&mut self, message: Message, now: Instant) -> Vec<Action> {
        self.last_received = now;
        let mut actions = Vec::new();
        if let Err(err) = self.handle(message, now, &mut actions) {
            actions.push(Action::Disconnect(err.to_string()));
        }
        actions
    }

    fn handle(
        &mut self,
        message: Message,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), FixError> {
        let seq = message.seq_num();
        let sender = message.get(tag::SENDER_COMP_ID);
        let target = message.get(tag::TARGET_COMP_ID);
        if sender != Some(self.config.target_comp_id.as_str())
            || target != Some(self.config.sender_comp_id.as_str())
        {
            let text = format!(
                "CompID problem: expected SenderCompID {} and TargetCompID {}, got {} and {}",
                self.config.target_comp_id,
                self.config.sender_comp_id,
                sender.unwrap_or("none"),
                target.unwrap_or("none")
            );
            let mut reject = Message::new("3")
                .with(tag::REF_SEQ_NUM, seq.unwrap_or(0))
                .with(tag::SESSION_REJECT_REASON, 9)
                .with(tag::TEXT, &text);
            if !message.msg_type().is_empty() {
                reject.push(tag::REF_MSG_TYPE, message.msg_type());
            }
            actions.push(Action::Send(self.send(reject, now)?));
            actions.push(Action::Send(self.logout(&text, now)?));
            actions.push(Action::Disconnect(text));
            return Ok(());
        }
        let Some(seq) = seq else {
            let text = "MsgSeqNum (34) missing or not a number".to_owned();
            actions.push(Action::Send(self.logout(&text, now)?));
            actions.push(Action::Disconnect(text));
            return Ok(());
        };
        let msg_type = message.msg_type().to_owned();
        if self.phase == Phase::AwaitingLogon && msg_type != "A" {
            let text = match msg_type.as_str() {
                "5" => format!(
                    "logon refused: {}",
                    message.get(tag::TEXT).unwrap_or("Logout without a reason")
                ),
                other => format!("expected Logon, received MsgType {other}"),
            };
            actions.push(Action::Disconnect(text));
            return Ok(());
        }
        // SequenceReset-Reset ignores MsgSeqNum.
        if msg_type == "4" && message.get(tag::GAP_FILL_FLAG) != Some("Y") {
            return self.sequence_reset(&message, now, actions);
        }
        if msg_type == "A" && message.get(tag::RESET_SEQ_NUM_FLAG) == Some("Y") {
            if seq == 1 {
                return self.reset_by_logon(message, now, actions);
            }
            tracing::warn!(
                seq,
                "a Logon with ResetSeqNumFlag=Y not numbered 1: handled as a plain Logon"
            );
        }
        let expected = self.store.next_target();
        if seq < expected {
            if message.poss_dup() {
                tracing::debug!(seq, expected, msg_type, "duplicate ignored");
                return Ok(());
            }
            let text = format!("MsgSeqNum too low, expecting {expected} but received {seq}");
            actions.push(Action::Send(self.logout(&text, now)?));
            actions.push(Action::Disconnect(text));
            return Ok(());
        }
        if seq > expected {
            return self.gap(message, seq, expected, now, actions);
        }
        self.store.set_target(expected + 1)?;
        self.dispatch(message, now, actions)?;
        self.release_held(now, actions)
    }

    /// A message beyond the expected number: ask for the gap.
    fn gap(
        &mut self,
        message: Message,
        seq: u64,
        expected: u64,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), FixError> {
        let msg_type = message.msg_type();
        tracing::info!(
            seq,
            expected,
            msg_type,
            "MsgSeqNum too high: asking for a resend"
        );
        match msg_type {
            // Handled at once; their own numbers are covered by the resend.
            "A" => self.dispatch(message, now, actions)?,
            "5" => return self.dispatch(message, now, actions),
            "2" => self.dispatch(message, now, actions)?,
            _ => {
                if self.held.len() >= MAX_HELD {
                    self.held.clear();
                    self.resend_until = None;
                    self.resend_progress = None;
                }
                self.held.insert(seq, message);
            }
        }
        if self.resend_until.is_none_or(|until| until < expected) {
            actions.push(Action::Send(self.resend_request(expected, seq, now)?));
        }
        Ok(())
    }

    /// A ResendRequest from `expected` on (EndSeqNo 0), outstanding until
    /// the expected number passes `until`.
    fn resend_request(
        &mut self,
        expected: u64,
        until: u64,
        now: Instant,
    ) -> Result<Vec<u8>, FixError> {
        let request = Message::new("2")
            .with(tag::BEGIN_SEQ_NO, expected)
            .with(tag::END_SEQ_NO, 0);
        let bytes = self.send(request, now)?;
        self.resend_until = Some(until);
        self.resend_progress = Some((expected, now));
        Ok(bytes)
    }

    /// Processes held messages that are now in sequence.
    fn release_held(&mut self, now: Instant, actions: &mut Vec<Action>) -> Result<(), FixError> {
        loop {
            let expected = self.store.next_target();
            // Held messages the gap fill skipped over are dropped.
            while let Some(entry) = self.held.first_entry() {
                if *entry.key() >= expected {
                    break;
                }
                entry.remove();
            }
            let Some(message) = self.held.remove(&expected) else {
                break;
            };
            self.store.set_target(expected + 1)?;
            self.dispatch(message, now, actions)?;
        }
        if self
            .resend_until
            .is_some_and(|until| self.store.next_target() > until)
        {
            self.resend_until = None;
            self.resend_progress = None;
        }
        Ok(())
    }

    fn sequence_reset(
        &mut self,
        message: &Message,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), FixError> {
        let expected = self.store.next_target();
        let Some(new) = message
            .get(tag::NEW_SEQ_NO)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return self.reject(message, 1, "NewSeqNo (36) missing", now, actions);
        };
        if new < expected {
            let text = format!(
                "SequenceReset would move the expected MsgSeqNum back from {expected} to {new}"
            );
            return self.reject(message, 5, &text, now, actions);
        }
        tracing::info!(from = expected, to = new, "counterparty reset the sequence");
        self.store.set_target(new)?;
        self.release_held(now, actions)
    }

    fn reject(
        &mut self,
        message: &Message,
        reason: u32,
        text: &str,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), FixError> {
        tracing::warn!(reason, text, "rejecting a message of the counterparty");
        let reject = Message::new("3")
            .with(tag::REF_SEQ_NUM, message.seq_num().unwrap_or(0))
            .with(tag::REF_MSG_TYPE, message.msg_type())
            .with(tag::SESSION_REJECT_REASON, reason)
            .with(tag::TEXT, text);
        actions.push(Action::Send(self.send(reject, now)?));
        Ok(())
    }

    /// One in-sequence message (or one handled regardless of its number).
    fn dispatch(
        &mut self,
        message: Message,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), FixError> {
        match message.msg_type() {
            "A" => {
                if self.phase == Phase::AwaitingLogon {
                    self.phase = Phase::Active;
                    self.phase_since = now;
                    if let Some(theirs) = message.get(tag::HEART_BT_INT)
                        && theirs != self.config.heartbeat.as_secs().max(1).to_string()
                    {
                        tracing::warn!(theirs, "the counterparty answered with another HeartBtInt");
                    }
                    actions.push(Action::Event(SessionEvent::LoggedOn));
                }
            }
            "0" => {
                if let Some((id, _)) = &self.test_request
                    && message.get(tag::TEST_REQ_ID) == Some(id.as_str())
                {
                    self.test_request = None;
                }
            }
            "1" => {
                let mut heartbeat = Message::new("0");
                if let Some(id) = message.get(tag::TEST_REQ_ID) {
                    heartbeat.push(tag::TEST_REQ_ID, id);
                }
                actions.push(Action::Send(self.send(heartbeat, now)?));
            }
            "2" => self.answer_resend(&message, now, actions)?,
            "3" => {
                let reject = SessionReject {
                    ref_seq_num: message.get(tag::REF_SEQ_NUM).and_then(|s| s.parse().ok()),
                    ref_msg_type: message.get(tag::REF_MSG_TYPE).map(str::to_owned),
                    ref_tag: message.get(tag::REF_TAG_ID).map(str::to_owned),
                    reason: message.get(tag::SESSION_REJECT_REASON).map(str::to_owned),
                    text: message.get(tag::TEXT).map(str::to_owned),
                };
                tracing::warn!(%reject, "the counterparty rejected a message");
                actions.push(Action::Event(SessionEvent::Reject(reject)));
            }
            "4" => {
                // GapFill in sequence: jump to NewSeqNo.
                match message
                    .get(tag::NEW_SEQ_NO)
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    Some(new) if new >= self.store.next_target() => {
                        self.store.set_target(new)?;
                    }
                    Some(new) => {
                        let text = format!(
                            "GapFill NewSeqNo {new} is below the expected MsgSeqNum {}",
                            self.store.next_target()
                        );
                        self.reject(&message, 5, &text, now, actions)?;
                    }
                    None => self.reject(&message, 1, "NewSeqNo (36) missing", now, actions)?,
                }
            }
            "5" => {
                let text = message.get(tag::TEXT).unwrap_or("no reason given");
                let reason = if self.phase == Phase::LoggingOut {
                    "logged out".to_owned()
                } else {
                    actions.push(Action::Send(self.logout("logout acknowledged", now)?));
                    format!("the counterparty logged out: {text}")
                };
                actions.push(Action::Disconnect(reason));
            }
            _ => actions.push(Action::Event(SessionEvent::Message(std::sync::Arc::new(
                message,
            )))),
        }
        Ok(())
    }

    /// Answers a ResendRequest with one GapFill over the range: fxcast
    /// replays no message (see the module documentation).
    fn answer_resend(
        &mut self,
        message: &Message,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Result<(), FixError> {
        let Some(begin) = message
            .get(tag::BEGIN_SEQ_NO)
            .and_then(|s| s.parse::<u64>().ok())
        else {
            return self.reject(message, 1, "BeginSeqNo (7) missing", now, actions);
        };
        let next = self.store.next_sender();
        if begin >= next {
            tracing::info!(
                begin,
                next,
                "ResendRequest for messages not sent yet; nothing to fill"
            );
            return Ok(());
        }
        tracing::info!(
            from = begin,
            to = next,
            "answering a ResendRequest with a GapFill"
        );
        let fill = Message::new("4")
            .with(tag::GAP_FILL_FLAG, "Y")
            .with(tag::NEW_SEQ_NO, next);
        let original = utc_timestamp(SystemTime::now());
        actions.push(Action::Send(self.frame(
            fill,
            begin.max(1),
            Some(&original),
        )?));
        self.last_sent = now;
        Ok(())
    }

    /// Timers: heartbeats, test requests, logon and logout timeouts.
    pub(crate) fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let heartbeat = self.config.heartbeat;
        match self.phase {
            Phase::AwaitingLogon => {
                if now.duration_since(self.phase_since) >= self.config.logon_timeout {
                    actions.push(Action::Disconnect(format!(
                        "no Logon answer within {}s",
                        self.config.logon_timeout.as_secs_f32()
                    )));
                }
                return actions;
            }
            Phase::LoggingOut => {
                if now.duration_since(self.phase_since) >= Duration::from_secs(2) {
                    actions.push(Action::Disconnect("Logout not answered".into()));
                }
                return actions;
            }
            Phase::Active => {}
        }
        if let Some((_, sent)) = &self.test_request {
            if now.duration_since(*sent) >= heartbeat {
                actions.push(Action::Disconnect(format!(
                    "TestRequest unanswered for {}s",
                    heartbeat.as_secs_f32()
                )));
                return actions;
            }
        } else if now.duration_since(self.last_received) >= heartbeat + heartbeat / 5 {
            self.test_requests_sent += 1;
            let id = format!("TEST-{}", self.test_requests_sent);
            match self.send(Message::new("1").with(tag::TEST_REQ_ID, &id), now) {
                Ok(bytes) => actions.push(Action::Send(bytes)),
                Err(err) => actions.push(Action::Disconnect(err.to_string())),
            }
            self.test_request = Some((id, now));
        }
        if let (Some(until), Some((at, since))) = (self.resend_until, self.resend_progress) {
            let expected = self.store.next_target();
            if expected != at {
                self.resend_progress = Some((expected, now));
            } else if now.duration_since(since) >= heartbeat {
                // The counterparty ignored (or lost) our ResendRequest:
                // without asking again the held messages would wait forever.
                tracing::warn!(
                    expected,
                    until,
                    "ResendRequest unanswered for HeartBtInt: asking again"
                );
                self.resend_until = None;
                let until = until.max(self.held.last_key_value().map_or(0, |(k, _)| *k));
                match self.resend_request(expected, until, now) {
                    Ok(bytes) => actions.push(Action::Send(bytes)),
                    Err(err) => actions.push(Action::Disconnect(err.to_string())),
                }
            }
        }
        if now.duration_since(self.last_sent) >= heartbeat {
            match self.send(Message::new("0"), now) {
                Ok(bytes) => actions.push(Action::Send(bytes)),
                Err(err) => actions.push(Action::Disconnect(err.to_string())),
            }
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Secret,
        codec::{Decoded, Decoder},
    };

    struct Harness {
        core: SessionCore,
        now: Instant,
        their_seq: u64,
        _dir: tempfile::TempDir,
    }

    fn config(dir: &std::path::Path) -> SessionConfig {
        SessionConfig {
            username: Some("user".into()),
            password: Some(Secret::new("secret")),
            heartbeat: Duration::from_secs(10),
            ..SessionConfig::new("127.0.0.1", 1, "FXCAST", "LP", dir.to_owned())
        }
    }

    fn decode(bytes: &[u8]) -> Message {
        let mut d = Decoder::new("FIX.4.4");
        d.extend(bytes);
        match d.next_frame() {
            Some(Decoded::Message(m)) => m,
            other => panic!("not a message: {other:?}"),
        }
    }

    impl Harness {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store = SeqStore::open(dir.path(), "FXCAST", "LP").unwrap();
            let now = Instant::now();
            let core = SessionCore::new(config(dir.path()), store, now);
            Self {
                core,
                now,
                their_seq: 1,
                _dir: dir,
            }
        }

        fn lp_message(&mut self, msg_type: &str) -> Message {
            let m = Message::new(msg_type)
                .with(49, "LP")
                .with(56, "FXCAST")
                .with(34, self.their_seq)
                .with(52, "20261207-16:00:00.000");
            self.their_seq += 1;
            m
        }

        fn receive(&mut self, m: Message) -> Vec<Action> {
            self.core.on_message(m, self.now)
        }

        fn logged_on() -> Self {
            let mut h = Self::new();
            let logon = decode(&h.core.logon(h.now).unwrap());
            assert_eq!(logon.get(553), Some("user"));
            assert_eq!(logon.get(554), Some("secret"));
            assert_eq!(logon.get(108), Some("10"));
            let a = h.lp_message("A").with(98, 0).with(108, 10);
            let actions = h.receive(a);
            assert!(matches!(
                actions.as_slice(),
                [Action::Event(SessionEvent::LoggedOn)]
            ));
            h
        }
    }

    fn sent(actions: &[Action]) -> Vec<Message> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(bytes) => Some(decode(bytes)),
                _ => None,
            })
            .collect()
    }

    fn disconnected(actions: &[Action]) -> Option<&str> {
        actions.iter().find_map(|a| match a {
            Action::Disconnect(why) => Some(why.as_str()),
            _ => None,
        })
    }

    #[test]
    fn logon_then_application_messages_in_sequence() {
        let mut h = Harness::logged_on();
        let (seq, bytes) = h
            .core
            .send_app(Message::new("D").with(11, "k"), h.now)
            .unwrap();
        assert_eq!(seq, 2, "the Logon took 1");
        let d = decode(&bytes);
        assert_eq!(
            (d.get(49), d.get(56), d.get(34)),
            (Some("FXCAST"), Some("LP"), Some("2"))
        );
        let er = h.lp_message("8").with(11, "k");
        let actions = h.receive(er);
        assert!(matches!(
            actions.as_slice(),
            [Action::Event(SessionEvent::Message(m))] if m.get(11) == Some("k")
        ));
        assert_eq!(h.core.store.next_target(), 3);
    }

    #[test]
    fn nothing_but_logon_is_accepted_before_logon() {
        let mut h = Harness::new();
        h.core.logon(h.now).unwrap();
        let md = h.lp_message("W");
        let actions = h.receive(md);
        assert!(disconnected(&actions).unwrap().contains("expected Logon"));
        let mut h = Harness::new();
        h.core.logon(h.now).unwrap();
        let out = h.lp_message("5").with(58, "bad password");
        let actions = h.receive(out);
        assert!(disconnected(&actions).unwrap().contains("bad password"));
        assert!(
            h.core.send_app(Message::new("D"), h.now).is_err(),
            "no app messages before logon"
        );
    }

    #[test]
    fn wrong_comp_id_is_rejected_and_logged_out() {
        let mut h = Harness::logged_on();
        let m = Message::new("8")
            .with(49, "SOMEONE")
            .with(56, "FXCAST")
            .with(34, 2);
        let actions = h.receive(m);
        let out = sent(&actions);
        assert_eq!(out[0].msg_type(), "3");
        assert_eq!(out[0].get(373), Some("9"));
        assert_eq!(out[1].msg_type(), "5");
        assert!(disconnected(&actions).unwrap().contains("CompID"));
        assert_eq!(h.core.store.next_target(), 2, "not consumed");
    }

    #[test]
    fn seq_too_low_without_poss_dup_logs_out_with_poss_dup_is_ignored() {
        let mut h = Harness::logged_on();
        h.their_seq = 1;
        let dup = h.lp_message("8").with(43, "Y");
        let actions = h.receive(dup);
        assert!(actions.is_empty(), "{actions:?}");
        h.their_seq = 1;
        let low = h.lp_message("8");
        let actions = h.receive(low);
        let out = sent(&actions);
        assert_eq!(out[0].msg_type(), "5");
        assert!(out[0].get(58).unwrap().contains("MsgSeqNum too low"));
        assert!(disconnected(&actions).is_some());
    }

    #[test]
    fn seq_too_high_asks_for_a_resend_and_holds_the_message_until_the_gap_is_filled() {
        let mut h = Harness::logged_on();
        h.their_seq = 5; // 2, 3, 4 missing
        let ahead = h.lp_message("8").with(11, "late");
        let actions = h.receive(ahead);
        let out = sent(&actions);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].msg_type(), "2");
        assert_eq!((out[0].get(7), out[0].get(16)), (Some("2"), Some("0")));
        assert!(!actions.iter().any(|a| matches!(a, Action::Event(_))));
        // A second message beyond the gap does not ask again.
        let ahead2 = h.lp_message("8").with(11, "later");
        assert!(sent(&h.receive(ahead2)).is_empty());
        // The resend: 2 resent application message, then a gap fill to 5.
        h.their_seq = 2;
        let resent = h.lp_message("8").with(43, "Y").with(11, "resent");
        let actions = h.receive(resent);
        assert!(matches!(
            actions.as_slice(),
            [Action::Event(SessionEvent::Message(m))] if m.poss_dup()
        ));
        let fill = h.lp_message("4").with(43, "Y").with(123, "Y").with(36, 5);
        let actions = h.receive(fill);
        let ids: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Event(SessionEvent::Message(m)) => m.get(11).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(ids, ["late", "later"]);
        assert_eq!(h.core.store.next_target(), 7);
        assert!(h.core.resend_until.is_none());
    }

    #[test]
    fn an_unanswered_resend_request_is_sent_again_after_heart_bt_int() {
        let mut h = Harness::logged_on();
        h.their_seq = 5; // 2, 3, 4 missing
        let ahead = h.lp_message("8").with(11, "late");
        assert_eq!(sent(&h.receive(ahead))[0].msg_type(), "2");
        let resends = |actions: &[Action]| {
            sent(actions)
                .into_iter()
                .filter(|m| m.msg_type() == "2")
                .map(|m| (m.get(7).map(str::to_owned), m.get(16).map(str::to_owned)))
                .collect::<Vec<_>>()
        };
        let again = vec![(Some("2".to_owned()), Some("0".to_owned()))];
        assert!(resends(&h.core.on_tick(h.now + Duration::from_secs(5))).is_empty());
        assert_eq!(
            resends(&h.core.on_tick(h.now + Duration::from_secs(10))),
            again
        );
        // Progress (2 arrives) restarts the wait.
        h.now += Duration::from_secs(11);
        h.their_seq = 2;
        let resent = h.lp_message("8").with(43, "Y");
        h.receive(resent);
        assert!(resends(&h.core.on_tick(h.now + Duration::from_secs(1))).is_empty());
        assert!(resends(&h.core.on_tick(h.now + Duration::from_secs(10))).is_empty());
        assert_eq!(
            resends(&h.core.on_tick(h.now + Duration::from_secs(11))),
            vec![(Some("3".to_owned()), Some("0".to_owned()))]
        );
        // The gap filled: nothing outstanding any more.
        let fill = h.lp_message("4").with(43, "Y").with(123, "Y").with(36, 5);
        h.receive(fill);
        assert!(h.core.resend_until.is_none());
        assert!(resends(&h.core.on_tick(h.now + Duration::from_secs(60))).is_empty());
    }

    #[test]
    fn a_logon_with_reset_seq_num_flag_restarts_both_numbers_at_one() {
        // Answering our Logon: both stores at 1, our Logon 141=Y answers.
        let mut h = Harness::new();
        h.core.store.set_target(9).unwrap();
        for _ in 0..6 {
            h.core.store.take_sender().unwrap();
        }
        h.core.logon(h.now).unwrap();
        h.their_seq = 1;
        let a = h.lp_message("A").with(98, 0).with(108, 10).with(141, "Y");
        let actions = h.receive(a);
        let out = sent(&actions);
        assert_eq!(out.len(), 1, "{actions:?}");
        assert_eq!(
            (out[0].msg_type(), out[0].get(34), out[0].get(141)),
            ("A", Some("1"), Some("Y"))
        );
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Event(SessionEvent::LoggedOn)))
        );
        assert!(disconnected(&actions).is_none());
        assert_eq!(
            (h.core.store.next_sender(), h.core.store.next_target()),
            (2, 2)
        );
        // The session goes on from there.
        let er = h.lp_message("8").with(11, "k");
        assert!(matches!(
            h.receive(er).as_slice(),
            [Action::Event(SessionEvent::Message(_))]
        ));
        // Mid-session, the same.
        h.their_seq = 1;
        let a = h.lp_message("A").with(98, 0).with(108, 10).with(141, "Y");
        let out = sent(&h.receive(a));
        assert_eq!((out[0].get(34), out[0].get(141)), (Some("1"), Some("Y")));
        assert_eq!(
            (h.core.store.next_sender(), h.core.store.next_target()),
            (2, 2)
        );
        // A reset Logon not numbered 1 resets nothing: too low here.
        let er = h.lp_message("8").with(11, "k2");
        h.receive(er);
        h.their_seq = 2;
        let a = h.lp_message("A").with(108, 10).with(141, "Y");
        assert!(disconnected(&h.receive(a)).unwrap().contains("too low"));
        assert_eq!(h.core.store.next_sender(), 3, "only the Logout was sent");
    }

    #[test]
    fn resend_requests_are_answered_with_one_gap_fill() {
        let mut h = Harness::logged_on();
        for _ in 0..3 {
            h.core
                .send_app(Message::new("D").with(11, "x"), h.now)
                .unwrap();
        }
        // Our next is 5; they ask from 2.
        let request = h.lp_message("2").with(7, 2).with(16, 0);
        let actions = h.receive(request);
        let out = sent(&actions);
        assert_eq!(out.len(), 1);
        let fill = &out[0];
        assert_eq!(fill.msg_type(), "4");
        assert_eq!(
            (fill.get(34), fill.get(36), fill.get(123), fill.get(43)),
            (Some("2"), Some("5"), Some("Y"), Some("Y"))
        );
        assert!(fill.get(122).is_some(), "PossDup needs OrigSendingTime");
        assert_eq!(h.core.store.next_sender(), 5, "a gap fill takes no number");
    }

    #[test]
    fn sequence_reset_moves_forward_never_back() {
        let mut h = Harness::logged_on();
        let reset = h.lp_message("4").with(36, 20);
        assert!(sent(&h.receive(reset)).is_empty());
        assert_eq!(h.core.store.next_target(), 20);
        let back = h.lp_message("4").with(36, 3);
        let out = sent(&h.receive(back));
        assert_eq!(out[0].msg_type(), "3");
        assert_eq!(h.core.store.next_target(), 20);
    }

    #[test]
    fn test_requests_heartbeats_and_silence() {
        let mut h = Harness::logged_on();
        let tr = h.lp_message("1").with(112, "abc");
        let out = sent(&h.receive(tr));
        assert_eq!((out[0].msg_type(), out[0].get(112)), ("0", Some("abc")));
        // 10 s of silence on our side: a heartbeat.
        let out = sent(&h.core.on_tick(h.now + Duration::from_secs(10)));
        assert_eq!(out[0].msg_type(), "0");
        // 12 s of silence on theirs: a TestRequest, then a disconnect.
        let out = sent(&h.core.on_tick(h.now + Duration::from_secs(12)));
        assert!(out.iter().any(|m| m.msg_type() == "1"));
        let actions = h.core.on_tick(h.now + Duration::from_secs(23));
        assert!(disconnected(&actions).unwrap().contains("TestRequest"));
    }

    #[test]
    fn an_answered_test_request_keeps_the_session() {
        let mut h = Harness::logged_on();
        let out = sent(&h.core.on_tick(h.now + Duration::from_secs(12)));
        let id = out
            .iter()
            .find(|m| m.msg_type() == "1")
            .and_then(|m| m.get(112))
            .unwrap()
            .to_owned();
        h.now += Duration::from_secs(13);
        let hb = h.lp_message("0").with(112, &id);
        h.receive(hb);
        let actions = h.core.on_tick(h.now + Duration::from_secs(5));
        assert!(disconnected(&actions).is_none(), "{actions:?}");
    }

    #[test]
    fn rejects_and_logouts_surface() {
        let mut h = Harness::logged_on();
        let reject = h
            .lp_message("3")
            .with(45, 2)
            .with(372, "D")
            .with(373, 1)
            .with(58, "Required tag missing");
        let actions = h.receive(reject);
        let Some(Action::Event(SessionEvent::Reject(r))) = actions.first() else {
            panic!("{actions:?}")
        };
        assert_eq!(r.ref_seq_num, Some(2));
        assert!(r.to_string().contains("Required tag missing"));
        let logout = h.lp_message("5").with(58, "maintenance");
        let actions = h.receive(logout);
        assert_eq!(sent(&actions)[0].msg_type(), "5");
        assert!(disconnected(&actions).unwrap().contains("maintenance"));
    }

    #[test]
    fn a_missing_seq_num_never_panics() {
        let mut h = Harness::logged_on();
        let m = Message::new("8").with(49, "LP").with(56, "FXCAST");
        assert!(disconnected(&h.receive(m)).is_some());
        let mut h = Harness::logged_on();
        let m = Message::new("4")
            .with(49, "LP")
            .with(56, "FXCAST")
            .with(34, 2)
            .with(123, "Y");
        let out = sent(&h.receive(m));
        assert_eq!(
            out[0].msg_type(),
            "3",
            "GapFill without NewSeqNo is rejected"
        );
    }
}
