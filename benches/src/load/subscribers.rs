//! One rate subscriber per interface: opens its stream, says whether it
//! could, then records every rate's delivery latency until stopped.
//!
//! WebSocket, SSE and NATS subscribers connect from the source address they
//! are given (see [`super::rates::Sources`]), so one load generator can hold
//! more connections than one address has ephemeral ports.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use fxcast_proto::v1::{
    StreamRatesRequest, StreamRatesResponse, rate_service_client::RateServiceClient,
    stream_rates_response::Event,
};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use super::{
    Dialer, nats,
    rates::Interface,
    recorder::{Recorder, Shared},
    status_error,
};

/// Where a subscriber connects and what it streams.
#[derive(Debug, Clone)]
pub(super) struct Subscription {
    pub(super) interface: Interface,
    pub(super) target: String,
    pub(super) token: String,
    pub(super) symbols: Vec<String>,
    /// Local address to connect from (`None`: the system's choice).
    pub(super) source: Option<IpAddr>,
    /// The HTTP client of SSE subscribers, bound to `source`: shared,
    /// because building one (its TLS roots) costs tens of milliseconds.
    pub(super) http: Option<reqwest::Client>,
}

/// An HTTP client connecting from `source`.
pub(super) fn http_client(source: Option<IpAddr>) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(source)
        .pool_max_idle_per_host(0)
        .build()?)
}

/// A client WebSocket over TCP, with or without TLS.
pub(super) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `url` from `source` (any port of it) when given.
pub(super) async fn connect_ws(url: &str, source: Option<IpAddr>) -> anyhow::Result<WsStream> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    let host = uri
        .host()
        .with_context(|| format!("no host in {url:?}"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let secure = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let server = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    let socket = if server.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("cannot bind a client socket to {source}"))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    // tungstenite's default 128 KiB read buffer is zero-filled on every
    // read: with thousands of connections that memset, not the WebSocket
    // work, would dominate the load generator (and so the latencies).
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) =
        tokio_tungstenite::client_async_tls_with_config(url, stream, Some(config), None).await?;
    Ok(ws)
}

/// How long a subscriber may take to open its stream: a server that never
/// answers fails the subscriber instead of stalling the ramp.
const OPEN_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens `subscription`, reports on `ready` whether it could, and records
/// into `shared` until `stop`; a stream that broke first counts as a
/// disconnect, and the first reason of each kind is kept.
pub(super) async fn run(
    subscription: Subscription,
    shared: &Shared,
    stop: &CancellationToken,
    ready: mpsc::Sender<bool>,
) {
    let opened = match tokio::time::timeout(OPEN_WITHIN, Feed::open(&subscription)).await {
        Ok(opened) => opened,
        Err(_) => Err(anyhow::anyhow!("not open within {OPEN_WITHIN:?}")),
    };
    let _ = ready.send(opened.is_ok()).await;
    let mut feed = match opened {
        Ok(feed) => feed,
        Err(err) => return shared.failed(&err),
    };
    let mut recorder = shared.recorder();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            next = feed.next(&mut recorder) => if let Err(err) = next {
                if !stop.is_cancelled() {
                    shared.disconnected(&err);
                }
                return;
            },
        }
    }
}

/// One subscriber's open stream of rates.
enum Feed {
    Ws(Box<WsStream>),
    Nats(Box<nats::WsSubscriber>),
    Sse {
        response: reqwest::Response,
        buffer: String,
    },
    Grpc(Streaming<StreamRatesResponse>),
}

impl Feed {
    async fn open(s: &Subscription) -> anyhow::Result<Self> {
        match s.interface {
            Interface::Ws => Self::open_ws(s).await,
            Interface::Sse => Self::open_sse(s).await,
            Interface::Grpc => Self::open_grpc(s).await,
            Interface::Nats => Ok(Self::Nats(Box::new(
                nats::WsSubscriber::open(&s.target, s.source, &s.symbols).await?,
            ))),
        }
    }

    /// WebSocket `/v1/stream`, subscribed to the symbols.
    async fn open_ws(s: &Subscription) -> anyhow::Result<Self> {
        let url = format!(
            "{}/v1/stream?token={}",
            s.target.trim_end_matches('/').replacen("http", "ws", 1),
            s.token
        );
        let mut ws = connect_ws(&url, s.source).await?;
        let subscribe = serde_json::json!({"type": "subscribe", "symbols": s.symbols});
        ws.send(Message::Text(subscribe.to_string().into())).await?;
        Ok(Self::Ws(Box::new(ws)))
    }

    /// Server-Sent Events `/v1/rates/stream` of the symbols.
    async fn open_sse(s: &Subscription) -> anyhow::Result<Self> {
        let url = format!(
            "{}/v1/rates/stream?symbols={}&token={}",
            s.target.trim_end_matches('/'),
            s.symbols.join(","),
            s.token
        );
        let client = reqwest::Client::builder().local_address(s.source).build()?;
        // The token is in the URL, as a browser's EventSource sends it: an
        // error must not print it.
        let response = client
            .get(&url)
            .send()
            .await
            .map_err(reqwest::Error::without_url)?;
        if !response.status().is_success() {
            anyhow::bail!("SSE refused: {}", response.status());
        }
        Ok(Self::Sse {
            response,
            buffer: String::new(),
        })
    }

    /// gRPC `StreamRates` of the symbols, on a connection of its own.
    async fn open_grpc(s: &Subscription) -> anyhow::Result<Self> {
        let channel = Dialer::new(&s.target, &s.token)?.connect().await?;
        let request = StreamRatesRequest {
            symbols: s.symbols.clone(),
            ..Default::default()
        };
        let stream = RateServiceClient::new(channel)
            .stream_rates(request)
            .await
            .map_err(|s| status_error(&s))?
            .into_inner();
        Ok(Self::Grpc(stream))
    }

    /// Waits for the next message and records the rates in it; an error
    /// when the stream broke or the server ended it.
    async fn next(&mut self, recorder: &mut Recorder<'_>) -> anyhow::Result<()> {
        match self {
            Self::Ws(ws) => match ws.next().await {
                Some(Ok(Message::Text(text))) => recorder.record_json(&text),
                // The reason the server gave (a slow consumer, a limit).
                Some(Ok(Message::Close(Some(frame)))) => {
                    anyhow::bail!("closed by the server: {} {}", frame.code, frame.reason)
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => anyhow::bail!("closed by the server"),
            },
            Self::Nats(subscriber) => subscriber.next(recorder).await?,
            Self::Sse { response, buffer } => {
                let Some(bytes) = response
                    .chunk()
                    .await
                    .map_err(reqwest::Error::without_url)?
                else {
                    anyhow::bail!("closed by the server");
                };
                buffer.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    recorder.record_json(&event);
                }
            }
            Self::Grpc(stream) => match stream.message().await {
                Ok(Some(response)) => {
                    if let Some(Event::Rate(rate)) = response.event
                        && let Some(ts) = rate.publish_time
                    {
                        let publish = (ts.seconds.max(0) as u64) * 1_000_000
                            + (ts.nanos.max(0) as u64) / 1000;
                        recorder.record(publish);
                    }
                }
                Ok(None) => anyhow::bail!("stream ended by the server"),
                Err(status) => return Err(status_error(&status)),
            },
        }
        Ok(())
    }
}
