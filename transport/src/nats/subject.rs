//! Topic names as NATS subjects and key-value keys.
//!
//! A topic (`rates.USD_JPY`, `orders.alice`) is printable ASCII without
//! spaces ([`validate_topic`](crate::validate_topic)). NATS subjects give
//! `*` and `>` a meaning (wildcards), and key-value keys allow only
//! `[-/_=.a-zA-Z0-9]`, so one reversible encoding serves both: letters,
//! digits, `-`, `_`, `/` and `.` stay as they are, every other byte
//! (including `=` itself) becomes `=` and two upper-case hex digits
//! (`a*b` -> `a=2Ab`, `x>` -> `x=3E`). Dots keep separating subject tokens,
//! so `rates.USD_JPY` is `fxcast.rates.USD_JPY` on the wire and subscribers
//! written against NATS directly can use wildcards over fxcast's topics.
//!
//! An empty token is refused rather than encoded: a topic that starts or
//! ends with `.` or holds `..` is not a valid NATS subject, and escaping the
//! dot would hide the topic's hierarchy from NATS.

use std::fmt::Write;

use crate::Error;

fn kept(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_/.".contains(&b)
}

/// `topic` encoded as subject tokens (without the prefix) and key.
///
/// # Errors
/// [`Error::InvalidTopic`] for a topic with an empty token.
pub(super) fn encode(topic: &str) -> Result<String, Error> {
    if topic.split('.').any(str::is_empty) {
        return Err(Error::InvalidTopic {
            topic: topic.to_owned(),
            reason: "NATS subjects cannot start or end with '.' or hold '..'",
        });
    }
    let mut out = String::with_capacity(topic.len());
    for b in topic.bytes() {
        if kept(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "={b:02X}");
        }
    }
    Ok(out)
}

/// The topic `encoded` came from, if it is an encoding.
#[cfg(test)]
fn decode(encoded: &str) -> Option<String> {
    crate::net::unescape(encoded, b'=', false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_topics_are_unchanged() {
        for topic in ["rates.USD_JPY", "orders.alice", "a-b/c.d_e"] {
            assert_eq!(encode(topic).unwrap(), topic);
        }
    }

    #[test]
    fn wildcards_and_other_characters_are_escaped_reversibly() {
        for (topic, encoded) in [
            ("a*b", "a=2Ab"),
            ("x.>", "x.=3E"),
            ("k=v", "k=3Dv"),
            ("p:q@r", "p=3Aq=40r"),
        ] {
            assert_eq!(encode(topic).unwrap(), encoded);
            assert_eq!(decode(encoded).as_deref(), Some(topic));
        }
        let all: String = (0x21u8..0x7f).map(char::from).collect();
        let encoded = encode(&all).unwrap();
        assert!(
            encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        );
        assert_eq!(decode(&encoded), Some(all));
    }

    #[test]
    fn empty_tokens_are_refused() {
        for topic in [".a", "a.", "a..b", "."] {
            assert!(matches!(encode(topic), Err(Error::InvalidTopic { .. })));
        }
    }
}
