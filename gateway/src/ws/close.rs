//! The close code an inbound WebSocket error calls for (RFC 6455 section
//! 7.4.1).
//!
//! tungstenite detects a client's protocol errors (reserved bits, reserved
//! opcodes, unmasked or fragmented control frames, control frames over 125
//! bytes, broken fragmentation, invalid UTF-8, malformed close frames) but
//! only returns them from the stream, which then ends; it sends no close
//! frame itself. This decides which one the connection sends before it
//! closes, so the client learns why instead of seeing the TCP connection
//! drop.

use tokio_tungstenite::tungstenite::{self, error::ProtocolError};

/// What an inbound error leaves the connection to do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inbound {
    /// The connection itself failed (reset, closed mid-frame, I/O error):
    /// there is nobody left to tell.
    Gone,
    /// A message or frame over the size limit: 1009.
    TooBig,
    /// The client broke the protocol: 1002, or 1007 for text or a close
    /// reason that is not UTF-8; with the reason.
    Violation(u16, String),
}

/// Longest close reason: a control frame's 125 bytes less the code.
const MAX_REASON: usize = 123;

impl Inbound {
    pub(super) fn of(err: &axum::Error) -> Self {
        let Some(err) = std::error::Error::source(err)
            .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        else {
            return Self::Gone;
        };
        match err {
            tungstenite::Error::Capacity(_) => Self::TooBig,
            tungstenite::Error::Utf8(_) => Self::Violation(
                1007,
                "invalid UTF-8 in a text message or close reason".into(),
            ),
            // The client closed the TCP connection without a close frame.
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Self::Gone,
            tungstenite::Error::Protocol(violation) => {
                Self::Violation(1002, reason(format!("protocol error: {violation}")))
            }
            _ => Self::Gone,
        }
    }
}

/// `text` cut to fit a close frame, at a character boundary.
fn reason(mut text: String) -> String {
    if text.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(err: tungstenite::Error) -> Inbound {
        Inbound::of(&axum::Error::new(err))
    }

    #[test]
    fn each_error_gets_the_code_rfc_6455_prescribes() {
        assert_eq!(
            of(tungstenite::Error::Protocol(
                ProtocolError::NonZeroReservedBits
            )),
            Inbound::Violation(1002, "protocol error: Reserved bits are non-zero".into())
        );
        assert!(matches!(
            of(tungstenite::Error::Utf8("bad".into())),
            Inbound::Violation(1007, _)
        ));
        assert_eq!(
            of(tungstenite::Error::Capacity(
                tungstenite::error::CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1
                }
            )),
            Inbound::TooBig
        );
        for gone in [
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
            tungstenite::Error::ConnectionClosed,
            tungstenite::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
        ] {
            assert_eq!(of(gone), Inbound::Gone);
        }
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        let long = "é".repeat(100);
        let cut = reason(long);
        assert!(cut.len() <= MAX_REASON && cut.len() >= MAX_REASON - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(reason("short".into()), "short");
    }
}
