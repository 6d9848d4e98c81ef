//! The codec of the generated *servers*: prost's, except that a request
//! that is not valid protobuf (garbage, a truncated message, invalid UTF-8
//! in a string field) is the client's fault, `INVALID_ARGUMENT`, not
//! tonic's `INTERNAL`. The generated clients keep prost's own codec, so a
//! malformed *response* stays `INTERNAL`.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// Encodes responses `T` and decodes requests `U` with prost.
#[derive(Debug, Clone, Copy)]
pub struct RequestCodec<T, U>(PhantomData<fn(T) -> U>);

impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes a request `U`; what prost cannot decode is `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy)]
pub struct RequestDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's messages name the field and never quote the input.
        U::decode(buf)
            .map(Some)
            .map_err(|err| Status::invalid_argument(format!("malformed request: {err}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
