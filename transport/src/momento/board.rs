//! The rates board: the latest payloads of many topics in few messages.
//!
//! Momento bills every publish and every delivery as an operation (per
//! 1 KiB of message), and its default tier allows 10 topic operations per
//! second. With one topic per symbol, operations grow with the symbols: N
//! symbols at R publishes per second cost N·R publishes and N·R deliveries
//! per subscriber. The board keeps, per topic, the newest payload not yet
//! sent, and once per pacing interval publishes what changed as one message
//! (several when it exceeds the message limit) to a single board topic:
//! R·⌈bytes/1 KiB⌉ operations, whatever N.
//!
//! A message is `2`, then records of a length-prefixed topic (u16) and a
//! length-prefixed payload (u16), in topic order. A send that fails puts
//! its records back unless newer ones arrived meanwhile, and the pacer
//! retries it with backoff.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::{Bytes, BytesMut};

use super::{
    pacing::SendFn,
    shards::{BOARD_VERSION, put_record, record_len},
};
use crate::Error;

/// The payloads waiting for the board's next message. A cheap `Clone`
/// handle.
#[derive(Clone, Default)]
pub(super) struct Board {
    // Topic order, so messages list symbols alike every time; a std mutex,
    // never held across an `.await`.
    pending: Arc<Mutex<BTreeMap<String, Bytes>>>,
    conflated: Arc<AtomicU64>,
}

impl Board {
    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds `payload` as the newest of `topic`; whether it replaced one
    /// not yet sent (conflated).
    pub(super) fn hold(&self, topic: &str, payload: Bytes) -> bool {
        let replaced = self.pending().insert(topic.to_owned(), payload).is_some();
        if replaced {
            self.conflated.fetch_add(1, Ordering::Relaxed);
        }
        replaced
    }

    /// Payloads replaced by newer ones of their topic before being sent.
    pub(super) fn conflated(&self) -> u64 {
        self.conflated.load(Ordering::Relaxed)
    }

    /// What is waiting, as messages of at most `limit` bytes, emptying it.
    fn take(&self, limit: usize) -> Vec<(Bytes, Vec<String>)> {
        let records = std::mem::take(&mut *self.pending());
        let mut messages = Vec::new();
        let mut message = BytesMut::from(&[BOARD_VERSION][..]);
        let mut topics = Vec::new();
        for (topic, payload) in records {
            if message.len() > 1 && message.len() + record_len(&topic, &payload) > limit {
                messages.push((
                    std::mem::replace(&mut message, BytesMut::from(&[BOARD_VERSION][..])).freeze(),
                    std::mem::take(&mut topics),
                ));
            }
            put_record(&mut message, &topic, &payload);
            topics.push(topic);
        }
        if message.len() > 1 {
            messages.push((message.freeze(), topics));
        }
        messages
    }

    /// Puts back what a failed message carried, unless newer payloads of
    /// those topics arrived meanwhile.
    fn restore(&self, message: &Bytes, topics: &[String]) {
        let records = super::shards::records(message);
        let mut pending = self.pending();
        for (topic, payload) in records.into_iter().flatten() {
            if topics.iter().any(|t| t == topic) && !pending.contains_key(topic) {
                pending.insert(topic.to_owned(), payload);
            }
        }
    }

    /// The pacer's send for the board: publishes what is waiting with
    /// `publish` (the board topic and one message).
    pub(super) fn send_fn(&self, limit: usize, publish: SendFn) -> SendFn {
        let board = self.clone();
        Arc::new(move |board_topic: String, _wake: Bytes| {
            let (board, publish) = (board.clone(), Arc::clone(&publish));
            Box::pin(async move {
                let mut messages = board.take(limit).into_iter();
                while let Some((message, topics)) = messages.next() {
                    if let Err(err) = publish(board_topic.clone(), message.clone()).await {
                        board.restore(&message, &topics);
                        for (message, topics) in messages {
                            board.restore(&message, &topics);
                        }
                        return Err::<(), Error>(err);
                    }
                }
                Ok(())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_waits_is_split_at_the_limit_and_restored_unless_newer() {
        let board = Board::default();
        for i in 0..10 {
            board.hold(&format!("rates.S{i}"), Bytes::from(vec![b'x'; 100]));
        }
        assert!(board.hold("rates.S0", Bytes::from(vec![b'y'; 100])));
        let messages = board.take(500);
        // 1 + 4 records of 4 + 8 + 100 bytes = 449: four per message.
        let counts: Vec<usize> = messages.iter().map(|(_, topics)| topics.len()).collect();
        assert_eq!(counts, [4, 4, 2]);
        assert!(messages.iter().all(|(message, _)| message.len() <= 500));
        assert!(board.take(500).is_empty());
        board.hold("rates.S0", Bytes::from_static(b"newer"));
        board.restore(&messages[0].0, &messages[0].1);
        let again = board.take(4096);
        let records = super::super::shards::records(&again[0].0).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[0], ("rates.S0", Bytes::from_static(b"newer")));
    }
}
