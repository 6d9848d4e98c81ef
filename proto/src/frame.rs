//! `StreamRatesResponse` as the *server* sends it: bytes encoded once.
//!
//! A tick goes to every `StreamRates` stream of the process. With prost's
//! own message type each stream would clone the `Rate` (its strings) and
//! encode it again; the WebSocket path serialises each tick once for every
//! connection, and this gives gRPC the same: the generated servers use
//! [`StreamRatesFrame`] in place of `StreamRatesResponse` (an
//! `extern_path` in build.rs), and a frame holds the message's encoding,
//! made once per tick and shared (`Bytes`) by every stream. Encoding a
//! frame is one copy into tonic's buffer.
//!
//! Clients keep the generated `StreamRatesResponse`: the bytes on the wire
//! are the same.

use bytes::{BufMut, Bytes, BytesMut};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint},
};

use crate::v1::StreamRatesResponse;

/// The field number of `rate` in `StreamRatesResponse`'s `event` oneof.
const RATE_FIELD: u32 = 1;

/// An encoded `fxcast.v1.StreamRatesResponse`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct StreamRatesFrame(Bytes);

impl StreamRatesFrame {
    /// The frame of a rate event, from the rate's own encoding (a tick's
    /// payload, as published).
    pub fn rate(encoded_rate: &[u8]) -> Self {
        let len = encoded_rate.len();
        let mut buf = BytesMut::with_capacity(1 + encoded_len_varint(len as u64) + len);
        encode_key(RATE_FIELD, WireType::LengthDelimited, &mut buf);
        encode_varint(len as u64, &mut buf);
        buf.put_slice(encoded_rate);
        Self(buf.freeze())
    }

    /// The frame of any event (gaps: rare, encoded when they happen).
    pub fn event(response: &StreamRatesResponse) -> Self {
        Self(response.encode_to_vec().into())
    }

    /// The encoded message.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl std::fmt::Debug for StreamRatesFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StreamRatesFrame")
            .field(&self.0.len())
            .finish()
    }
}

impl Message for StreamRatesFrame {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    /// Servers never decode a response; decoding keeps nothing.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Gap, Rate, stream_rates_response::Event};

    #[test]
    fn a_rate_frame_is_the_encoding_of_the_response_clients_decode() {
        let rate = Rate {
            symbol: "USD_JPY".into(),
            bid: "151.234".into(),
            ask: "151.242".into(),
            sequence: 300,
            rate_id: "USD_JPY-0badcafe-300".into(),
            stale: true,
            ..Rate::default()
        };
        let frame = StreamRatesFrame::rate(&rate.encode_to_vec());
        let response = StreamRatesResponse {
            event: Some(Event::Rate(rate)),
        };
        assert_eq!(frame.bytes()[..], response.encode_to_vec()[..]);
        assert_eq!(frame.encoded_len(), frame.encode_to_vec().len());
        assert_eq!(
            StreamRatesResponse::decode(frame.encode_to_vec().as_slice()).unwrap(),
            response
        );
    }

    #[test]
    fn an_event_frame_round_trips() {
        let response = StreamRatesResponse {
            event: Some(Event::Gap(Gap {
                symbol: "EUR_USD".into(),
                first_missing: 4,
                last_missing: 9,
                reason: 2,
                message: "lost".into(),
            })),
        };
        let frame = StreamRatesFrame::event(&response);
        assert_eq!(
            StreamRatesResponse::decode(frame.encode_to_vec().as_slice()).unwrap(),
            response
        );
        // An empty rate (every field default) still names the event.
        let empty = StreamRatesFrame::rate(&[]);
        assert_eq!(
            StreamRatesResponse::decode(empty.bytes().clone())
                .unwrap()
                .event,
            Some(Event::Rate(Rate::default()))
        );
    }
}
