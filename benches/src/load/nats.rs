//! The peer of the comparison: `nats-server` with its WebSocket listener,
//! fed the same rate messages fxcast's WebSocket sends, at the same rate.
//!
//! - [`NatsServer`]: a `nats-server` started for one run on loopback ports
//!   it picks itself (read back from its log) from a generated
//!   configuration (WebSocket listener without TLS,
//!   `max_connections` and `max_payload` fit for the run), optionally pinned
//!   to cores with `taskset`; killed when dropped.
//! - [`Publisher`]: publishes one message per symbol every tick interval
//!   with async-nats, as fxcast's simulated feed ticks every symbol every
//!   interval. Each message is a frame captured from fxcast's WebSocket with
//!   its `source_time` and `publish_time` set to the moment of publishing
//!   (same length, so the same size), so receipt minus `publish_time` is
//!   measured on one clock exactly as for fxcast.
//! - [`WsSubscriber`]: one subscriber speaking the NATS text protocol over
//!   WebSocket: reads `INFO`, sends `CONNECT`, `SUB` per symbol and `PING`,
//!   is ready at the `PONG`, answers the server's `PING`s and parses `MSG`.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{
    recorder::Recorder,
    spawn::{Process, pinned, program, wait_until},
    subscribers::{WsStream, connect_ws},
};

/// How long nats-server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The subject fxcast's rates of `symbol` are published to on the peer, as
/// fxcast's own transports name the topic.
pub fn subject(symbol: &str) -> String {
    format!("rates.{symbol}")
}

/// The nats-server binary: `$NATS_SERVER`, else `nats-server` on `PATH`,
/// else the Debian package's `/usr/sbin/nats-server`.
pub fn binary() -> PathBuf {
    program("NATS_SERVER", "nats-server", "/usr/sbin")
}

/// The client and WebSocket ports nats-server chose (`port: -1` binds
/// port 0), from what it logged before it was ready:
/// `Listening for client connections on 127.0.0.1:44351` and
/// `Listening for websocket clients on ws://127.0.0.1:39167`. The server
/// binds its own ports, so no other process can take them between a probe
/// and the bind.
fn ports(log: &str) -> anyhow::Result<(u16, u16)> {
    let port = |prefix: &str| -> anyhow::Result<u16> {
        log.lines()
            .find_map(|line| line.split_once(prefix).map(|(_, rest)| rest))
            .and_then(|address| address.trim().rsplit(':').next())
            .and_then(|port| port.parse().ok())
            .with_context(|| format!("nats-server did not log \"{prefix} <address>\":\n{log}"))
    };
    Ok((
        port("Listening for client connections on")?,
        port("Listening for websocket clients on")?,
    ))
}

/// A nats-server for one run; killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Process,
    port: u16,
    ws_port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts nats-server on loopback ports it picks itself, with a
    /// WebSocket listener, room for `connections` clients (and the
    /// publisher), pinned to `cpus` (a `taskset -c` list) when given.
    ///
    /// # Errors
    /// When the binary cannot run or the server is not ready in time.
    pub fn start(connections: usize, cpus: Option<&str>) -> anyhow::Result<Self> {
        Self::start_with(connections, cpus, false)
    }

    /// Starts nats-server with JetStream (stored in its own temporary
    /// directory) for `clients`: the engine of an fxcast cluster
    /// (`fxcast serve --transport nats` keeps its streams and buckets there).
    ///
    /// # Errors
    /// When the binary cannot run or the server is not ready in time.
    pub fn start_jetstream(clients: usize, cpus: Option<&str>) -> anyhow::Result<Self> {
        Self::start_with(clients, cpus, true)
    }

    fn start_with(connections: usize, cpus: Option<&str>, jetstream: bool) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("cannot create a directory for nats-server")?;
        let config = dir.path().join("nats.conf");
        let extra = if jetstream {
            format!(
                "jetstream {{\n  store_dir: {:?}\n}}\n",
                dir.path().join("jetstream").display().to_string()
            )
        } else {
            // The messages are a few hundred bytes; 64 KiB leaves room
            // without the default 1 MiB.
            "max_payload: 65536\n".to_owned()
        };
        std::fs::write(
            &config,
            format!(
                "host: \"127.0.0.1\"\n\
                 port: -1\n\
                 max_connections: {}\n\
                 {extra}\
                 websocket {{\n  host: \"127.0.0.1\"\n  port: -1\n  no_tls: true\n}}\n",
                connections + 64
            ),
        )?;
        let binary = binary();
        let mut command = pinned(cpus, &binary);
        command
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start {} (install nats-server: apt-get install nats-server, or set NATS_SERVER)",
                binary.display()
            )
        })?;
        let (child, log) = wait_until(child, "nats-server", "Server is ready", READY_WITHIN)?;
        let (port, ws_port) = ports(&log)?;
        Ok(Self {
            child,
            port,
            ws_port,
            _dir: dir,
        })
    }

    /// `nats://127.0.0.1:<port>`, for the publisher.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:<websocket port>`, for the subscribers.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws_port)
    }

    /// The server's process id (for its CPU time and memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The message of one symbol as fxcast's WebSocket sends it, to publish
/// again with fresh times.
#[derive(Debug, Clone)]
pub struct Template {
    /// The symbol (the subject is [`subject`] of it).
    pub symbol: String,
    /// The WebSocket frame's text.
    pub text: String,
}

/// Sets the `source_time` and `publish_time` of a rate message to `now`;
/// RFC 3339 with microseconds has a fixed width, so the size is unchanged.
pub fn with_times(text: &str, now: SystemTime) -> String {
    let time = humantime::format_rfc3339_micros(now).to_string();
    let mut out = text.to_owned();
    for key in ["\"source_time\":\"", "\"publish_time\":\""] {
        if let Some(at) = out.find(key) {
            let start = at + key.len();
            if let Some(len) = out[start..].find('"') {
                out.replace_range(start..start + len, &time);
            }
        }
    }
    out
}

/// Publishes the templates, one message per symbol every `interval`, until
/// stopped.
#[derive(Debug)]
pub struct Publisher {
    task: JoinHandle<anyhow::Result<u64>>,
    stop: CancellationToken,
}

impl Publisher {
    /// Connects to `url` and starts publishing.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub async fn start(
        url: &str,
        templates: Vec<Template>,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let client = async_nats::connect(url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            // As fxcast's simulated feed: a late tick delays the next ones.
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let subjects: Vec<String> = templates.iter().map(|t| subject(&t.symbol)).collect();
            let mut published = 0u64;
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    _ = ticks.tick() => {}
                }
                for (template, subject) in templates.iter().zip(&subjects) {
                    let payload = with_times(&template.text, SystemTime::now());
                    client
                        .publish(subject.clone(), payload.into())
                        .await
                        .context("publish to nats-server")?;
                    published += 1;
                }
            }
            Ok(published)
        });
        Ok(Self { task, stop })
    }

    /// Stops publishing; how many messages were published.
    ///
    /// # Errors
    /// When publishing failed.
    pub async fn stop(self) -> anyhow::Result<u64> {
        self.stop.cancel();
        self.task.await.context("the publisher panicked")?
    }
}

/// One subscriber over nats-server's WebSocket listener.
pub(super) struct WsSubscriber {
    ws: WsStream,
    /// Protocol bytes received and not parsed yet (a message may span
    /// frames, a frame may hold several messages).
    buffer: Vec<u8>,
}

/// What the parser found in the received bytes.
#[derive(Debug, PartialEq, Eq)]
enum Op<'a> {
    Msg(&'a [u8]),
    Ping,
    Pong,
    Info,
    Ok,
    Err(String),
}

/// Parses the first complete protocol message of `buffer`: it and the bytes
/// it took, `None` when incomplete.
fn parse(buffer: &[u8]) -> anyhow::Result<Option<(Op<'_>, usize)>> {
    let Some(eol) = buffer.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &buffer[..eol];
    let after = eol + 2;
    let op = line.split(|b| *b == b' ').next().unwrap_or_default();
    let parsed = match op.to_ascii_uppercase().as_slice() {
        b"MSG" => {
            // MSG <subject> <sid> [reply-to] <#bytes>
            let len: usize = std::str::from_utf8(line)?
                .split_whitespace()
                .last()
                .and_then(|n| n.parse().ok())
                .context("MSG without a length")?;
            if buffer.len() < after + len + 2 {
                return Ok(None);
            }
            (Op::Msg(&buffer[after..after + len]), after + len + 2)
        }
        b"PING" => (Op::Ping, after),
        b"PONG" => (Op::Pong, after),
        b"INFO" => (Op::Info, after),
        b"+OK" => (Op::Ok, after),
        b"-ERR" => (Op::Err(String::from_utf8_lossy(line).into_owned()), after),
        _ => bail!(
            "unexpected from nats-server: {}",
            String::from_utf8_lossy(line)
        ),
    };
    Ok(Some(parsed))
}

impl WsSubscriber {
    /// Connects to `url` (from `source` when given), subscribes to every
    /// symbol's subject, and returns once the server has answered a `PING`
    /// sent after the subscriptions (so they are in place).
    pub(super) async fn open(
        url: &str,
        source: Option<IpAddr>,
        symbols: &[String],
    ) -> anyhow::Result<Self> {
        let ws = connect_ws(url, source).await?;
        let mut subscriber = Self {
            ws,
            buffer: Vec::new(),
        };
        let mut hello = String::from(
            "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false,\
             \"no_responders\":false,\"lang\":\"rust\",\"version\":\"fxcast-loadtest\",\"name\":\"fxcast-loadtest\"}\r\n",
        );
        for (sid, symbol) in symbols.iter().enumerate() {
            hello.push_str(&format!("SUB {} {}\r\n", subject(symbol), sid + 1));
        }
        hello.push_str("PING\r\n");
        let mut sent = false;
        loop {
            let frame = subscriber.read().await?;
            subscriber.buffer.extend_from_slice(&frame);
            let mut reply = String::new();
            let mut ready = false;
            let mut consumed = 0;
            while let Some((op, used)) = parse(&subscriber.buffer[consumed..])? {
                consumed += used;
                match op {
                    Op::Info if !sent => {
                        reply.push_str(&hello);
                        sent = true;
                    }
                    Op::Ping => reply.push_str("PONG\r\n"),
                    Op::Pong => ready = true,
                    Op::Err(err) => bail!("nats-server refused: {err}"),
                    Op::Msg(_) | Op::Info | Op::Ok => {}
                }
            }
            subscriber.buffer.drain(..consumed);
            if !reply.is_empty() {
                subscriber.send(reply).await?;
            }
            if ready {
                return Ok(subscriber);
            }
        }
    }

    /// The payload of the next binary or text frame.
    async fn read(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(bytes))) => return Ok(bytes.into()),
                Some(Ok(Message::Text(text))) => return Ok(text.as_bytes().to_vec()),
                Some(Ok(Message::Close(frame))) => bail!("closed by nats-server: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => bail!("closed by nats-server"),
            }
        }
    }

    async fn send(&mut self, text: String) -> anyhow::Result<()> {
        self.ws
            .send(Message::Binary(text.into_bytes().into()))
            .await?;
        Ok(())
    }

    /// Waits for the next frame and records the rates in it, answering the
    /// server's `PING`s; an error when the connection broke.
    pub(super) async fn next(&mut self, recorder: &mut Recorder<'_>) -> anyhow::Result<()> {
        let frame = self.read().await?;
        self.buffer.extend_from_slice(&frame);
        let mut pings = 0;
        let mut consumed = 0;
        while let Some((op, used)) = parse(&self.buffer[consumed..])? {
            consumed += used;
            match op {
                Op::Msg(payload) => recorder.record_json(&String::from_utf8_lossy(payload)),
                Op::Ping => pings += 1,
                Op::Err(err) => bail!("nats-server: {err}"),
                Op::Pong | Op::Info | Op::Ok => {}
            }
        }
        self.buffer.drain(..consumed);
        if pings > 0 {
            self.send("PONG\r\n".repeat(pings)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_nats_server_chose_are_read_from_its_log() {
        let log = "[1] 2026/12/07 23:25:11.033185 [INF] Listening for websocket clients on ws://127.0.0.1:39167\n\
                   [1] 2026/12/07 23:25:11.033236 [INF] Listening for client connections on 127.0.0.1:44351\n\
                   [1] 2026/12/07 23:25:11.033242 [INF] Server is ready";
        assert_eq!(ports(log).unwrap(), (44351, 39167));
        let error = ports("[1] [INF] Server is ready").unwrap_err().to_string();
        assert!(
            error.contains("Listening for client connections on"),
            "{error}"
        );
    }

    #[test]
    fn messages_split_and_joined_across_frames_parse() {
        let wire =
            b"INFO {\"x\":1}\r\nMSG rates.USD_JPY 1 5\r\nhello\r\nPING\r\nMSG a 2 r 0\r\n\r\n";
        let mut ops = Vec::new();
        let mut at = 0;
        while let Some((op, used)) = parse(&wire[at..]).unwrap() {
            ops.push(format!("{op:?}"));
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(
            ops,
            ["Info", "Msg([104, 101, 108, 108, 111])", "Ping", "Msg([])"]
        );
        // A message whose payload has not fully arrived waits for more.
        assert_eq!(parse(b"MSG rates.X 1 5\r\nhel").unwrap(), None);
        assert_eq!(parse(b"MSG rates.X 1 5\r\nhello").unwrap(), None);
        assert!(parse(b"BOGUS\r\n").is_err());
    }

    #[test]
    fn fresh_times_keep_the_size() {
        let text = r#"{"type":"rate","symbol":"USD_JPY","source_time":"2026-12-07T16:29:57.123456Z","publish_time":"2026-12-07T16:29:57.123999Z"}"#;
        let now = SystemTime::UNIX_EPOCH + Duration::from_micros(1_800_000_000_000_001);
        let fresh = with_times(text, now);
        assert_eq!(fresh.len(), text.len());
        assert!(
            fresh.ends_with(r#""publish_time":"2027-01-15T08:00:00.000001Z"}"#),
            "{fresh}"
        );
    }
}
