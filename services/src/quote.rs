//! Quoting client input in error messages, bounded: a message never grows
//! with what the client sent (a 1 MB quantity must not come back in a 1 MB
//! `grpc-message`). Every interface (gRPC here, REST in the gateway) quotes
//! through [`quoted`]; messages written by libraries (serde, axum) are
//! bounded afterwards with [`bound_quoted_spans`].

use std::{borrow::Cow, fmt};

/// At most this many bytes of an input are quoted.
pub const QUOTE_LIMIT: usize = 64;

/// `input` as it appears in an error message: quoted and escaped like
/// `{:?}`, and when longer than [`QUOTE_LIMIT`] bytes, its first bytes (up
/// to a character boundary) then `...` and the length:
/// `"1111…1111"... (1048576 bytes)`.
pub fn quoted(input: &str) -> Quoted<'_> {
    Quoted(input)
}

/// See [`quoted`].
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let input = self.0;
        if input.len() <= QUOTE_LIMIT {
            return write!(f, "{input:?}");
        }
        write!(f, "{:?}... ({} bytes)", prefix(input), input.len())
    }
}

/// The longest prefix of `text` of at most [`QUOTE_LIMIT`] bytes that ends
/// on a character boundary.
fn prefix(text: &str) -> &str {
    let mut end = QUOTE_LIMIT.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Bounds the quoted spans of a message someone else wrote (serde's
/// ``unknown field `…` ``, `invalid type: string "…"`): a `"…"` or `` `…` ``
/// span longer than [`QUOTE_LIMIT`] bytes keeps its first bytes, then `...`
/// and the span's length. Everything outside the spans is kept.
pub fn bound_quoted_spans(message: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut rest = 0;
    while let Some(open) = message[rest..].find(['"', '`']).map(|i| rest + i) {
        let delimiter = message.as_bytes()[open];
        let start = open + 1;
        let end = span_end(message, start, delimiter);
        let span = &message[start..end];
        if span.len() > QUOTE_LIMIT {
            let shown = char::from(delimiter);
            // A cut escape (`\` then the cut) would escape the closing quote.
            let kept = prefix(span).trim_end_matches('\\');
            out.push_str(&message[copied..open]);
            out.push_str(&format!("{shown}{kept}{shown}... ({} bytes)", span.len()));
            copied = (end + 1).min(message.len());
        }
        rest = (end + 1).min(message.len());
        if rest >= message.len() {
            break;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(message);
    }
    out.push_str(&message[copied..]);
    Cow::Owned(out)
}

/// Where the span opened before `start` by `delimiter` closes: its closing
/// delimiter (a `"` escaped with `\` does not close), or the end of the text.
fn span_end(message: &str, start: usize, delimiter: u8) -> usize {
    let bytes = message.as_bytes();
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if delimiter == b'"' => i += 2,
            b if b == delimiter => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole_and_long_input_is_cut_with_its_length() {
        assert_eq!(quoted("1e3").to_string(), "\"1e3\"");
        assert_eq!(
            quoted(&"7".repeat(64)).to_string(),
            format!("\"{}\"", "7".repeat(64))
        );
        let long = "7".repeat(1 << 20);
        assert_eq!(
            quoted(&long).to_string(),
            format!("\"{}\"... (1048576 bytes)", "7".repeat(64))
        );
        // Never splits a character: 'é' is two bytes.
        let accents = "é".repeat(40);
        assert_eq!(
            quoted(&accents).to_string(),
            format!("\"{}\"... (80 bytes)", "é".repeat(32))
        );
        let odd = format!("a{}", "é".repeat(40));
        assert_eq!(
            quoted(&odd).to_string(),
            format!("\"a{}\"... (81 bytes)", "é".repeat(31))
        );
    }

    #[test]
    fn long_spans_of_other_messages_are_bounded_and_the_rest_kept() {
        let field = "x".repeat(5000);
        let serde = format!(
            "Failed to deserialize: unknown field `{field}`, expected one of `symbol`, `side` at line 1 column 5012"
        );
        assert_eq!(
            bound_quoted_spans(&serde),
            format!(
                "Failed to deserialize: unknown field `{}`... (5000 bytes), expected one of `symbol`, `side` at line 1 column 5012",
                "x".repeat(64)
            )
        );
        let escaped = format!(
            "invalid type: string \"a\\\"{}\", expected u32",
            "b".repeat(100)
        );
        assert_eq!(
            bound_quoted_spans(&escaped),
            format!(
                "invalid type: string \"a\\\"{}\"... (103 bytes), expected u32",
                "b".repeat(61)
            )
        );
        let unterminated = format!("value `{}", "z".repeat(70));
        assert_eq!(
            bound_quoted_spans(&unterminated),
            format!("value `{}`... (70 bytes)", "z".repeat(64))
        );
        let cut_escape = format!("`{}` and \"{}\\\"zzz\"", "v".repeat(3), "w".repeat(63));
        assert_eq!(
            bound_quoted_spans(&cut_escape),
            format!("`vvv` and \"{}\"... (68 bytes)", "w".repeat(63))
        );
        let short = "unknown variant `up`, expected `buy` or `sell`";
        assert!(matches!(bound_quoted_spans(short), Cow::Borrowed(s) if s == short));
    }
}
