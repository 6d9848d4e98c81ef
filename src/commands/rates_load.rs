//! `fxcast loadtest ws|sse|grpc`: N rate subscribers against a running
//! server, reporting delivery latency (the rate's `publish_time` to receipt
//! in this process; both on this machine's clock), messages per second and
//! the server's memory per connection.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Interface {
    /// WebSocket `/v1/stream` through the gateway
    Ws,
    /// Server-Sent Events `/v1/rates/stream` through the gateway
    Sse,
    /// gRPC `StreamRates`
    Grpc,
}

#[derive(Debug, Args)]
pub(crate) struct RatesLoad {
    /// Gateway base URL (ws, sse) or gRPC address (grpc)
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    target: String,
    /// Subscribers to open
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Comma-separated symbols each subscriber streams
    #[arg(long, default_value = "USD_JPY,EUR_USD")]
    symbols: String,
    /// How long to measure once every subscriber is connected
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Connections opened at once while ramping up
    #[arg(long, default_value_t = 200)]
    ramp: usize,
    /// Server process id, for RSS (found by name when omitted)
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bearer token; by default an anonymous browser token (ws, sse) or one
    /// issued with the API key from --data-dir (grpc)
    #[arg(long, env = "FXCAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of a local server (API key for grpc)
    #[arg(long, env = "FXCAST_DATA_DIR", default_value = "./fxcast-data")]
    data_dir: PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    interface: String,
    connections: usize,
    connected: usize,
    failed: usize,
    duration_s: f64,
    messages: u64,
    messages_per_s: f64,
    latency_us: Percentiles,
    server_rss_before_kib: Option<u64>,
    server_rss_connected_kib: Option<u64>,
    server_kib_per_connection: Option<f64>,
    disconnects: u64,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Microseconds since the epoch of an RFC 3339 time.
fn parse_time_us(text: &str) -> Option<u64> {
    let time = humantime::parse_rfc3339(text).ok()?;
    Some(time.duration_since(UNIX_EPOCH).ok()?.as_micros() as u64)
}

/// Resident memory of a process, from /proc (Linux).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The pid of a running `fxcast serve` or `fxcast gateway` other than us.
pub(crate) fn find_server() -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_fxcast = args.first().is_some_and(|a| a.ends_with(b"fxcast"));
            let serving = args
                .get(1)
                .is_some_and(|a| *a == b"serve" || *a == b"gateway");
            (is_fxcast && serving).then_some(pid)
        })
}

/// Histogram shards: subscribers record into one of these (a few at a time,
/// see [`Recorder`]), so 10,000 connections neither hold 10,000 histograms
/// (hundreds of KiB each) nor contend on one lock.
const SHARDS: usize = 64;
/// Latencies a subscriber buffers before taking its shard's lock.
const PENDING: usize = 64;

struct Shared {
    shards: Vec<Mutex<Histogram<u64>>>,
    next_shard: std::sync::atomic::AtomicUsize,
    messages: AtomicU64,
    disconnects: AtomicU64,
    measuring: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
            next_shard: std::sync::atomic::AtomicUsize::new(0),
            messages: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            measuring: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A recorder for one subscriber.
    fn recorder(&self) -> Recorder<'_> {
        Recorder {
            shared: self,
            shard: self.next_shard.fetch_add(1, Ordering::Relaxed) % SHARDS,
            pending: Vec::with_capacity(PENDING),
        }
    }

    /// Every shard merged.
    fn histogram(&self) -> Histogram<u64> {
        let mut total = new_histogram();
        for shard in &self.shards {
            let _ = total.add(&*shard.lock().unwrap_or_else(|e| e.into_inner()));
        }
        total
    }
}

/// One subscriber's latencies on their way to its shard.
struct Recorder<'a> {
    shared: &'a Shared,
    shard: usize,
    pending: Vec<u64>,
}

impl Recorder<'_> {
    /// Records a message published at `publish_us` (while measuring).
    fn record(&mut self, publish_us: u64) {
        if !self.shared.measuring.load(Ordering::Relaxed) {
            return;
        }
        self.pending
            .push(now_us().saturating_sub(publish_us).max(1));
        if self.pending.len() >= PENDING {
            self.flush();
        }
    }

    /// Records the rate in a JSON message (WebSocket frame or SSE event),
    /// found by a cheap scan for its publish time instead of a full parse.
    fn record_json(&mut self, text: &str) {
        const KEY: &str = "\"publish_time\":\"";
        if let Some(at) = text.find(KEY)
            && let Some(publish) = text[at + KEY.len()..]
                .split('"')
                .next()
                .and_then(parse_time_us)
        {
            self.record(publish);
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let count = self.pending.len() as u64;
        let mut histogram = self.shared.shards[self.shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for latency in self.pending.drain(..) {
            let _ = histogram.record(latency);
        }
        drop(histogram);
        self.shared.messages.fetch_add(count, Ordering::Relaxed);
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

async fn browser_token(base: &str) -> anyhow::Result<String> {
    let url = format!("{base}/v1/tokens");
    let response = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .context("token response is not JSON")?;
    if !status.is_success() {
        bail!("POST {url}: {status}: {}", body["error"]["message"]);
    }
    body["token"]
        .as_str()
        .map(str::to_owned)
        .context("token response has no token")
}

pub(crate) async fn run(interface: Interface, args: RatesLoad) -> anyhow::Result<()> {
    if args.connections == 0 || args.duration.is_zero() {
        bail!("--connections and --duration must be positive");
    }
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cannot raise the open-files limit: {err}");
    }
    let symbols = super::split_list(&args.symbols);
    let token = match (&args.token, interface) {
        (Some(token), _) => token.clone(),
        (None, Interface::Ws | Interface::Sse) => {
            browser_token(args.target.trim_end_matches('/')).await?
        }
        (None, Interface::Grpc) => {
            let credentials = super::Credentials {
                token: None,
                data_dir: args.data_dir.clone(),
            };
            super::client_token(&args.target, &credentials, &["rates:subscribe=*"]).await?
        }
    };
    let server_pid = args.server_pid.or_else(find_server);
    let rss_before = server_pid.and_then(rss_kib);
    let shared = Arc::new(Shared::new());
    let stop = tokio_util::sync::CancellationToken::new();

    eprintln!(
        "opening {} {interface:?} subscribers to {} ({})",
        args.connections,
        args.target,
        symbols.join(",")
    );
    let mut tasks = JoinSet::new();
    let mut connected = 0usize;
    let mut failed = 0usize;
    let ramp_started = Instant::now();
    for chunk_start in (0..args.connections).step_by(args.ramp.max(1)) {
        let chunk = args.ramp.max(1).min(args.connections - chunk_start);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(chunk);
        for _ in 0..chunk {
            let (target, token, symbols) = (args.target.clone(), token.clone(), symbols.clone());
            let (shared, stop, ready) = (Arc::clone(&shared), stop.clone(), ready_tx.clone());
            tasks.spawn(async move {
                let result = match interface {
                    Interface::Ws => {
                        ws_subscriber(&target, &token, &symbols, &shared, &stop, ready).await
                    }
                    Interface::Sse => {
                        sse_subscriber(&target, &token, &symbols, &shared, &stop, ready).await
                    }
                    Interface::Grpc => {
                        grpc_subscriber(&target, &token, &symbols, &shared, &stop, ready).await
                    }
                };
                if result.is_err() && !stop.is_cancelled() {
                    shared.disconnects.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        drop(ready_tx);
        // Each subscriber reports once; it keeps its sender, so count.
        for _ in 0..chunk {
            match ready_rx.recv().await {
                Some(true) => connected += 1,
                Some(false) | None => failed += 1,
            }
        }
    }
    eprintln!(
        "{connected} connected, {failed} failed, in {:.1}s",
        ramp_started.elapsed().as_secs_f64()
    );
    // Let the server settle, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = server_pid.and_then(rss_kib);
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    let histogram = shared.histogram();
    let messages = shared.messages.load(Ordering::Relaxed);
    let per_connection = match (rss_before, rss_connected) {
        (Some(before), Some(after)) if connected > 0 => {
            Some((after.saturating_sub(before)) as f64 / connected as f64)
        }
        _ => None,
    };
    let report = Report {
        interface: format!("{interface:?}").to_lowercase(),
        connections: args.connections,
        connected,
        failed,
        duration_s: elapsed.as_secs_f64(),
        messages,
        messages_per_s: messages as f64 / elapsed.as_secs_f64(),
        latency_us: Percentiles {
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        },
        server_rss_before_kib: rss_before,
        server_rss_connected_kib: rss_connected,
        server_kib_per_connection: per_connection,
        disconnects: shared.disconnects.load(Ordering::Relaxed),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let l = &report.latency_us;
        println!(
            "{} x{} ({} connected, {} failed): {} messages in {:.1}s = {:.0}/s",
            report.interface,
            report.connections,
            connected,
            failed,
            messages,
            report.duration_s,
            report.messages_per_s
        );
        println!(
            "latency publish->receipt: p50 {}us  p90 {}us  p99 {}us  p99.9 {}us  max {}us",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        match (rss_before, rss_connected, per_connection) {
            (Some(b), Some(a), Some(per)) => {
                println!(
                    "server RSS: {b} KiB before, {a} KiB connected = {per:.1} KiB per connection"
                )
            }
            _ => println!("server RSS: unknown (pass --server-pid)"),
        }
        println!("disconnects during the run: {}", report.disconnects);
    }
    Ok(())
}

async fn ws_subscriber(
    target: &str,
    token: &str,
    symbols: &[String],
    shared: &Shared,
    stop: &tokio_util::sync::CancellationToken,
    ready: tokio::sync::mpsc::Sender<bool>,
) -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::Message;
    let url = format!(
        "{}/v1/stream?token={token}",
        target.trim_end_matches('/').replacen("http", "ws", 1)
    );
    // tungstenite's default 128 KiB read buffer is zero-filled on every
    // read: with thousands of connections that memset, not the WebSocket
    // work, would dominate the load generator (and so the latencies).
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        match tokio_tungstenite::connect_async_with_config(&url, Some(config), true).await {
            Ok(ok) => ok,
            Err(err) => {
                let _ = ready.send(false).await;
                return Err(err.into());
            }
        };
    ws.send(Message::Text(
        serde_json::json!({"type": "subscribe", "symbols": symbols})
            .to_string()
            .into(),
    ))
    .await?;
    let _ = ready.send(true).await;
    let mut recorder = shared.recorder();
    let result = loop {
        let message = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            message = ws.next() => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => {
                recorder.record_json(&text);
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => break Err(err.into()),
            None => break Err(anyhow::anyhow!("closed by the server")),
        }
    };
    drop(recorder);
    result
}

async fn sse_subscriber(
    target: &str,
    token: &str,
    symbols: &[String],
    shared: &Shared,
    stop: &tokio_util::sync::CancellationToken,
    ready: tokio::sync::mpsc::Sender<bool>,
) -> anyhow::Result<()> {
    let url = format!(
        "{}/v1/rates/stream?symbols={}&token={token}",
        target.trim_end_matches('/'),
        symbols.join(",")
    );
    let response = match reqwest::Client::new().get(&url).send().await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            let _ = ready.send(false).await;
            bail!("SSE refused: {}", r.status());
        }
        Err(err) => {
            let _ = ready.send(false).await;
            return Err(err.into());
        }
    };
    let _ = ready.send(true).await;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut recorder = shared.recorder();
    let result = loop {
        let chunk = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            chunk = body.next() => chunk,
        };
        match chunk {
            Some(Ok(bytes)) => {
                buffer.push_str(&String::from_utf8_lossy(&bytes));
                while let Some(end) = buffer.find("\n\n") {
                    let event: String = buffer.drain(..end + 2).collect();
                    recorder.record_json(&event);
                }
            }
            Some(Err(err)) => break Err(err.into()),
            None => break Err(anyhow::anyhow!("closed by the server")),
        }
    };
    drop(recorder);
    result
}

async fn grpc_subscriber(
    target: &str,
    token: &str,
    symbols: &[String],
    shared: &Shared,
    stop: &tokio_util::sync::CancellationToken,
    ready: tokio::sync::mpsc::Sender<bool>,
) -> anyhow::Result<()> {
    use fxcast_proto::v1::{
        StreamRatesRequest, rate_service_client::RateServiceClient, stream_rates_response::Event,
    };
    let opened = async {
        let mut client = RateServiceClient::new(super::connect(target, token).await?);
        let request = StreamRatesRequest {
            symbols: symbols.to_vec(),
            ..Default::default()
        };
        anyhow::Ok(
            client
                .stream_rates(request)
                .await
                .map_err(|s| super::status_error(&s))?
                .into_inner(),
        )
    }
    .await;
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(err) => {
            let _ = ready.send(false).await;
            return Err(err);
        }
    };
    let _ = ready.send(true).await;
    let mut recorder = shared.recorder();
    let result = loop {
        let message = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            message = stream.message() => message,
        };
        match message {
            Ok(Some(response)) => {
                if let Some(Event::Rate(rate)) = response.event
                    && let Some(ts) = rate.publish_time
                {
                    let publish =
                        (ts.seconds.max(0) as u64) * 1_000_000 + (ts.nanos.max(0) as u64) / 1000;
                    recorder.record(publish);
                }
            }
            Ok(None) => break Err(anyhow::anyhow!("stream ended by the server")),
            Err(status) => break Err(super::status_error(&status)),
        }
    };
    drop(recorder);
    result
}
