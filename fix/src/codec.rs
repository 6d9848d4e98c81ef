//! FIX tag=value encoding: fields `tag=value` separated by SOH (0x01),
//! framed by BeginString (8), BodyLength (9) and CheckSum (10).
//!
//! [`Message`] holds every field except the three framing ones, in wire
//! order (repeating groups are just repeated tags, read in order by the
//! message's consumer). [`encode`] adds the framing; [`Decoder`] finds
//! frames in a byte stream and checks them. A frame that fails a check is
//! returned as [`Decoded::Garbled`] and skipped: per the FIX session rules a
//! garbled message is ignored (logged, not rejected, the expected sequence
//! number unchanged), and the decoder resynchronises on the next
//! `8=FIX` it finds.

use std::fmt::{self, Write as _};

/// Field separator.
pub const SOH: u8 = 0x01;

/// Frames longer than this are garbage, not a message to wait for.
pub const MAX_BODY_LENGTH: usize = 1 << 20;

/// One FIX message without its framing fields (8, 9, 10).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Message {
    fields: Vec<(u32, String)>,
}

impl fmt::Debug for Message {
    /// Fields as `tag=value|...`, with Password (554) redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (tag, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_char('|')?;
            }
            if *tag == crate::tag::PASSWORD {
                write!(f, "{tag}=<redacted>")?;
            } else {
                write!(f, "{tag}={value}")?;
            }
        }
        Ok(())
    }
}

impl Message {
    /// A message of type `msg_type` (tag 35) without other fields.
    pub fn new(msg_type: &str) -> Self {
        Self {
            fields: vec![(crate::tag::MSG_TYPE, msg_type.to_owned())],
        }
    }

    /// Appends a field (builder style).
    #[must_use]
    pub fn with(mut self, tag: u32, value: impl fmt::Display) -> Self {
        self.push(tag, value);
        self
    }

    /// Appends a field.
    pub fn push(&mut self, tag: u32, value: impl fmt::Display) {
        self.fields.push((tag, value.to_string()));
    }

    /// The first value of `tag`.
    pub fn get(&self, tag: u32) -> Option<&str> {
        self.fields
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.as_str())
    }

    /// Every field, in wire order.
    pub fn fields(&self) -> &[(u32, String)] {
        &self.fields
    }

    /// MsgType (35); empty when missing.
    pub fn msg_type(&self) -> &str {
        self.get(crate::tag::MSG_TYPE).unwrap_or("")
    }

    /// MsgSeqNum (34), when present and a number.
    pub fn seq_num(&self) -> Option<u64> {
        self.get(crate::tag::MSG_SEQ_NUM)?.parse().ok()
    }

    /// Whether PossDupFlag (43) is `Y`: a resent message.
    pub fn poss_dup(&self) -> bool {
        self.get(crate::tag::POSS_DUP_FLAG) == Some("Y")
    }
}

/// Why a value cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FIX field {tag} cannot hold {reason}")]
pub struct EncodeError {
    /// The offending tag.
    pub tag: u32,
    /// What is wrong with its value.
    pub reason: &'static str,
}

/// The message on the wire: `8=<begin_string>`, `9=<BodyLength>`, the
/// fields in order, then `10=<CheckSum>`.
///
/// # Errors
/// [`EncodeError`] for an empty value or one containing SOH (it would end
/// the field early and let a value inject fields).
pub fn encode(begin_string: &str, message: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut body = Vec::with_capacity(64 + message.fields.len() * 12);
    for (tag, value) in &message.fields {
        if value.is_empty() {
            return Err(EncodeError {
                tag: *tag,
                reason: "an empty value",
            });
        }
        if value.as_bytes().contains(&SOH) {
            return Err(EncodeError {
                tag: *tag,
                reason: "a SOH character",
            });
        }
        body.extend_from_slice(tag.to_string().as_bytes());
        body.push(b'=');
        body.extend_from_slice(value.as_bytes());
        body.push(SOH);
    }
    let mut out = Vec::with_capacity(body.len() + 32);
    out.extend_from_slice(format!("8={begin_string}\x019={}\x01", body.len()).as_bytes());
    out.extend_from_slice(&body);
    let sum = checksum(&out);
    out.extend_from_slice(format!("10={sum:03}\x01").as_bytes());
    Ok(out)
}

/// The FIX checksum: the byte sum modulo 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

/// What the decoder found next in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A well-framed message with a correct checksum.
    Message(Message),
    /// Bytes that are not a valid message; they have been skipped.
    Garbled {
        /// What was wrong.
        reason: String,
        /// How many bytes were skipped.
        skipped: usize,
    },
}

/// Splits a byte stream into FIX messages.
#[derive(Debug)]
pub struct Decoder {
    prefix: Vec<u8>,
    buffer: Vec<u8>,
}

impl Decoder {
    /// A decoder of messages whose BeginString is `begin_string`
    /// (`FIX.4.4`).
    pub fn new(begin_string: &str) -> Self {
        Self {
            prefix: format!("8={begin_string}\x01").into_bytes(),
            buffer: Vec::new(),
        }
    }

    /// Adds bytes read from the connection.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next message or garbled stretch; `None` when more bytes are
    /// needed.
    pub fn next_frame(&mut self) -> Option<Decoded> {
        if self.buffer.is_empty() {
            return None;
        }
        // Anything before a BeginString is garbage.
        if !self.buffer.starts_with(&self.prefix) {
            if self.prefix.starts_with(&self.buffer) {
                return None; // a BeginString still arriving
            }
            let skip = self.resync_point(1);
            return Some(self.garbled("bytes before BeginString", skip));
        }
        let after_begin = self.prefix.len();
        let rest = &self.buffer[after_begin..];
        if rest.len() < 2 {
            return None;
        }
        if !rest.starts_with(b"9=") {
            let skip = self.resync_point(1);
            return Some(self.garbled("BodyLength (9) does not follow BeginString", skip));
        }
        let Some(end) = rest.iter().position(|b| *b == SOH) else {
            if rest.len() > 12 {
                let skip = self.resync_point(1);
                return Some(self.garbled("BodyLength (9) is not a number", skip));
            }
            return None;
        };
        let body_length = std::str::from_utf8(&rest[2..end])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|n| *n <= MAX_BODY_LENGTH);
        let Some(body_length) = body_length else {
            let skip = self.resync_point(1);
            return Some(self.garbled("BodyLength (9) is not a usable number", skip));
        };
        let body_start = after_begin + end + 1;
        let trailer_start = body_start + body_length;
        let frame_end = trailer_start + 7; // "10=NNN\x01"
        if self.buffer.len() < frame_end {
            return None;
        }
        let trailer = &self.buffer[trailer_start..frame_end];
        let declared = (trailer.starts_with(b"10=") && trailer[6] == SOH)
            .then(|| std::str::from_utf8(&trailer[3..6]).ok())
            .flatten()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u16>().ok());
        let Some(declared) = declared else {
            let skip = self.resync_point(1);
            return Some(self.garbled(
                "no CheckSum (10) where BodyLength (9) says the body ends",
                skip,
            ));
        };
        let actual = checksum(&self.buffer[..trailer_start]);
        if u16::from(actual) != declared {
            let reason = format!("CheckSum (10) is {declared:03}, the bytes sum to {actual:03}");
            return Some(self.garbled(&reason, frame_end));
        }
        let parsed = parse_fields(&self.buffer[body_start..trailer_start]);
        self.buffer.drain(..frame_end);
        Some(match parsed {
            Ok(fields) => Decoded::Message(Message { fields }),
            Err(reason) => Decoded::Garbled {
                reason,
                skipped: frame_end,
            },
        })
    }

    /// Where the next candidate BeginString starts, searching from `from`;
    /// the buffer's end when there is none (keeping a possible partial
    /// prefix at the end).
    fn resync_point(&self, from: usize) -> usize {
        let needle = b"8=FIX";
        let found = self.buffer[from.min(self.buffer.len())..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from);
        found.unwrap_or_else(|| {
            // Keep a tail that may be the start of the next BeginString.
            let keep = (1..needle.len())
                .rev()
                .find(|n| self.buffer.ends_with(&needle[..*n]))
                .unwrap_or(0);
            self.buffer.len() - keep
        })
    }

    fn garbled(&mut self, reason: &str, skip: usize) -> Decoded {
        let skip = skip.clamp(1, self.buffer.len());
        self.buffer.drain(..skip);
        Decoded::Garbled {
            reason: reason.to_owned(),
            skipped: skip,
        }
    }
}

fn parse_fields(body: &[u8]) -> Result<Vec<(u32, String)>, String> {
    let mut fields = Vec::new();
    for raw in body.split(|b| *b == SOH) {
        if raw.is_empty() {
            continue;
        }
        let Some(eq) = raw.iter().position(|b| *b == b'=') else {
            return Err("a field without '='".into());
        };
        let tag = std::str::from_utf8(&raw[..eq])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|t| *t > 0)
            .ok_or_else(|| "a field whose tag is not a number".to_owned())?;
        // A value's encoding is no framing problem: a Latin-1 Text (58)
        // must not make the whole message garbled (it would then be
        // dropped without advancing the expected MsgSeqNum).
        let value = String::from_utf8_lossy(&raw[eq + 1..]).into_owned();
        fields.push((tag, value));
    }
    if fields.first().map(|(t, _)| *t) != Some(crate::tag::MSG_TYPE) {
        return Err("MsgType (35) is not the first body field".into());
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `body` framed as FIX 4.4: BeginString, BodyLength, CheckSum.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut bytes = format!("8=FIX.4.4\x019={}\x01", body.len()).into_bytes();
        bytes.extend_from_slice(body);
        let sum = checksum(&bytes);
        bytes.extend_from_slice(format!("10={sum:03}\x01").as_bytes());
        bytes
    }

    fn wire(text: &str) -> Vec<u8> {
        text.replace('|', "\x01").into_bytes()
    }

    fn heartbeat() -> Vec<u8> {
        let m = Message::new("0")
            .with(49, "LP")
            .with(56, "FXCAST")
            .with(34, 7)
            .with(52, "20261207-16:00:00.000");
        encode("FIX.4.4", &m).unwrap()
    }

    #[test]
    fn encodes_body_length_and_checksum() {
        let m = Message::new("0").with(49, "A").with(56, "B").with(34, 1);
        let bytes = encode("FIX.4.4", &m).unwrap();
        let text = String::from_utf8(bytes.clone())
            .unwrap()
            .replace('\x01', "|");
        assert_eq!(&text[..20], "8=FIX.4.4|9=20|35=0|");
        // Checksum of everything before "10=".
        let cut = bytes.len() - 7;
        assert_eq!(
            text[cut..].to_owned(),
            format!("10={:03}|", checksum(&bytes[..cut]))
        );
        let mut d = Decoder::new("FIX.4.4");
        d.extend(&bytes);
        assert_eq!(d.next_frame(), Some(Decoded::Message(m)));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn decodes_a_known_quickfix_message() {
        // A logon as QuickFIX writes it (checksum computed by QuickFIX).
        let raw = wire(
            "8=FIX.4.4|9=63|35=A|34=1|49=LP|52=20261207-16:15:18.123|56=FXCAST|98=0|108=30|10=",
        );
        let sum = checksum(&raw[..raw.len() - 3]);
        let mut bytes = raw;
        bytes.extend_from_slice(format!("{sum:03}\x01").as_bytes());
        let mut d = Decoder::new("FIX.4.4");
        d.extend(&bytes);
        let Some(Decoded::Message(m)) = d.next_frame() else {
            panic!("not decoded")
        };
        assert_eq!(m.msg_type(), "A");
        assert_eq!(m.seq_num(), Some(1));
        assert_eq!(m.get(108), Some("30"));
    }

    #[test]
    fn waits_for_partial_frames_byte_by_byte() {
        let bytes = heartbeat();
        let mut d = Decoder::new("FIX.4.4");
        for (i, b) in bytes.iter().enumerate() {
            d.extend(&[*b]);
            let got = d.next_frame();
            if i + 1 < bytes.len() {
                assert_eq!(got, None, "at byte {i}");
            } else {
                assert!(matches!(got, Some(Decoded::Message(_))));
            }
        }
    }

    #[test]
    fn a_bad_checksum_is_garbled_and_the_next_message_still_decodes() {
        let mut bad = heartbeat();
        let n = bad.len();
        bad[n - 2] = if bad[n - 2] == b'0' { b'1' } else { b'0' };
        let mut d = Decoder::new("FIX.4.4");
        d.extend(&bad);
        d.extend(&heartbeat());
        let Some(Decoded::Garbled { reason, .. }) = d.next_frame() else {
            panic!("bad checksum accepted")
        };
        assert!(reason.contains("CheckSum"), "{reason}");
        assert!(matches!(d.next_frame(), Some(Decoded::Message(_))));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn a_wrong_body_length_is_garbled_and_resynchronised() {
        let good = heartbeat();
        let text = String::from_utf8(good.clone()).unwrap();
        let wrong = text.replacen("9=", "9=1", 1); // 10x the real length
        let mut d = Decoder::new("FIX.4.4");
        d.extend(wrong.as_bytes());
        d.extend(&good);
        d.extend(&good);
        let mut messages = 0;
        let mut garbled = 0;
        while let Some(frame) = d.next_frame() {
            match frame {
                Decoded::Message(_) => messages += 1,
                Decoded::Garbled { .. } => garbled += 1,
            }
        }
        assert!(garbled >= 1);
        assert!(messages >= 1, "resynchronised on a later message");
    }

    #[test]
    fn junk_before_a_message_is_skipped() {
        let mut d = Decoder::new("FIX.4.4");
        d.extend(b"hello\x01world");
        d.extend(&heartbeat());
        assert!(matches!(d.next_frame(), Some(Decoded::Garbled { .. })));
        assert!(matches!(d.next_frame(), Some(Decoded::Message(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic pseudo-random stream with FIX-ish fragments.
        let pieces: [&[u8]; 8] = [
            b"8=FIX.4.4\x01",
            b"9=",
            b"12\x01",
            b"35=0\x01",
            b"10=000\x01",
            b"\x01",
            b"=",
            b"999999999999\x01",
        ];
        let mut state = 12345u64;
        let mut d = Decoder::new("FIX.4.4");
        for _ in 0..20_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let piece = pieces[(state >> 33) as usize % pieces.len()];
            d.extend(piece);
            if (state >> 20).is_multiple_of(7) {
                d.extend(&[(state >> 40) as u8]);
            }
            while d.next_frame().is_some() {}
        }
        assert!(d.buffered() < 4096, "garbage does not pile up");
    }

    #[test]
    fn field_errors_are_garbled_not_panics() {
        for body in ["35=0|abc|", "x=1|35=0|", "49=A|35=0|", "35=0|=5|"] {
            let mut d = Decoder::new("FIX.4.4");
            d.extend(&framed(&wire(body)));
            assert!(
                matches!(d.next_frame(), Some(Decoded::Garbled { .. })),
                "{body:?}"
            );
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn a_latin1_value_is_decoded_lossily_not_garbled() {
        // Text (58) = "caf\xe9" in Latin-1: not UTF-8, but well framed.
        let mut body = wire("35=3|34=5|49=LP|56=FXCAST|58=caf");
        body.push(0xE9);
        body.push(SOH);
        let mut d = Decoder::new("FIX.4.4");
        d.extend(&framed(&body));
        let Some(Decoded::Message(m)) = d.next_frame() else {
            panic!("a non-UTF-8 value made the message garbled")
        };
        assert_eq!(m.seq_num(), Some(5));
        assert_eq!(m.get(58), Some("caf\u{fffd}"));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn values_cannot_inject_fields() {
        let m = Message::new("D").with(11, "a\x0154=1");
        assert!(encode("FIX.4.4", &m).is_err());
        assert!(encode("FIX.4.4", &Message::new("D").with(11, "")).is_err());
    }

    #[test]
    fn debug_redacts_the_password() {
        let m = Message::new("A").with(553, "user").with(554, "s3cret");
        let shown = format!("{m:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("553=user"));
    }
}
