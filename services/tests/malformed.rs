//! Requests that are not valid protobuf, sent as raw gRPC frames through a
//! tonic client whose codec passes bytes as they are: the client's fault,
//! `INVALID_ARGUMENT`, on every service.

use bytes::{Buf, BufMut};
use fxcast_proto::v1::{ListSymbolsResponse, Order, PlaceOrderRequest};
use fxcast_testkit::{ALL_SCOPES, Stack};
use prost::Message;
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
};

/// Sends `Vec<u8>` as the message bytes and hands back the reply's bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Calls `path` with `message` as the request's bytes.
async fn call(server: &Stack, path: &'static str, message: Vec<u8>) -> Result<Vec<u8>, Status> {
    let channel = server
        .authed_channel(&server.token("tester", ALL_SCOPES))
        .await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(message),
        PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

const PLACE_ORDER: &str = "/fxcast.v1.OrderService/PlaceOrder";

#[tokio::test]
async fn undecodable_requests_are_invalid_argument_on_every_service() {
    let server = Stack::quiet(&["USD_JPY"]).await;
    server.publish("USD_JPY", "151.100", "151.110").await;

    // Field 1 (client_order_id), length 2, bytes that are not UTF-8.
    let not_utf8 = vec![0x0a, 0x02, 0xff, 0xfe];
    // Field 1 says 10 bytes follow; 3 do.
    let truncated = vec![0x0a, 0x0a, b'a', b'b', b'c'];
    // Wire type 7 does not exist.
    let garbage = vec![0x0f, 0xff, 0xff, 0xff];
    let cases = [
        (
            PLACE_ORDER,
            not_utf8.clone(),
            "invalid string value: data is not UTF-8 encoded",
        ),
        (PLACE_ORDER, truncated.clone(), "buffer underflow"),
        (PLACE_ORDER, garbage.clone(), "invalid wire type"),
        (
            "/fxcast.v1.RateService/GetLatestRate",
            not_utf8,
            "invalid string value",
        ),
        (
            "/fxcast.v1.RateService/StreamRates",
            truncated,
            "buffer underflow",
        ),
        (
            "/fxcast.v1.TokenService/IssueToken",
            garbage,
            "invalid wire type",
        ),
    ];
    for (path, message, why) in cases {
        let status = call(&server, path, message).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status
                .message()
                .starts_with("malformed request: failed to decode Protobuf message: ")
                && status.message().contains(why),
            "{path}: {}",
            status.message()
        );
    }

    // The same client with well-formed bytes is served.
    let symbols = call(&server, "/fxcast.v1.RateService/ListSymbols", Vec::new())
        .await
        .unwrap();
    let symbols = ListSymbolsResponse::decode(symbols.as_slice()).unwrap();
    assert_eq!(symbols.symbols[0].symbol, "USD_JPY");
    let order = PlaceOrderRequest {
        client_order_id: "raw-1".into(),
        symbol: "USD_JPY".into(),
        side: fxcast_proto::v1::Side::Buy as i32,
        quantity: "1000".into(),
        price: "151.110".into(),
        ..Default::default()
    };
    let placed = call(&server, PLACE_ORDER, order.encode_to_vec())
        .await
        .unwrap();
    assert_eq!(
        Order::decode(placed.as_slice()).unwrap().client_order_id,
        "raw-1"
    );
}
