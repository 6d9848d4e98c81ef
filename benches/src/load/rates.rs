//! Rate subscriber load: N subscribers (WebSocket or SSE through the
//! gateway, or gRPC `StreamRates`) against a running server, reporting
//! delivery latency (the rate's `publish_time` to receipt in this process;
//! both on this machine's clock), messages per second and the server's
//! memory per connection.
//!
//! Subscribers connect [`RatesLoad::ramp`] at a time; once all are open the
//! server gets a second to settle, then the measured window starts.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    histogram::Percentiles,
    proc,
    recorder::Shared,
    subscribers::{self, Subscription},
};

/// How the subscribers receive rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    /// WebSocket `/v1/stream` through the gateway.
    Ws,
    /// Server-Sent Events `/v1/rates/stream` through the gateway.
    Sse,
    /// gRPC `StreamRates`.
    Grpc,
}

/// What to load a server with.
#[derive(Debug, Clone)]
pub struct RatesLoad {
    /// Gateway base URL (ws, sse) or gRPC address (grpc).
    pub target: String,
    /// Subscribers to open.
    pub connections: usize,
    /// Symbols each subscriber streams.
    pub symbols: Vec<String>,
    /// How long to measure once every subscriber is connected.
    pub duration: Duration,
    /// Connections opened at once while ramping up.
    pub ramp: usize,
    /// Server process id, for RSS (`None`: found by name).
    pub server_pid: Option<u32>,
}

impl RatesLoad {
    /// Refuses a load that cannot run.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.connections == 0 || self.duration.is_zero() {
            bail!("--connections and --duration must be positive");
        }
        Ok(())
    }
}

/// An anonymous browser token from the gateway at `base` (`POST /v1/tokens`).
pub async fn browser_token(base: &str) -> anyhow::Result<String> {
    let url = format!("{}/v1/tokens", base.trim_end_matches('/'));
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

/// Subscribers that could and could not connect.
#[derive(Debug, Default)]
struct Ramp {
    connected: usize,
    failed: usize,
}

/// Opens every subscriber, `load.ramp` at a time, into `tasks`.
async fn ramp_up(
    interface: Interface,
    load: &RatesLoad,
    token: &str,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Ramp {
    let subscription = Subscription {
        interface,
        target: load.target.clone(),
        token: token.to_owned(),
        symbols: load.symbols.clone(),
    };
    let step = load.ramp.max(1);
    let mut ramp = Ramp::default();
    for chunk_start in (0..load.connections).step_by(step) {
        let chunk = step.min(load.connections - chunk_start);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(chunk);
        for _ in 0..chunk {
            let subscription = subscription.clone();
            let (shared, stop, ready) = (Arc::clone(shared), stop.clone(), ready_tx.clone());
            tasks.spawn(async move {
                let result = subscribers::run(subscription, &shared, &stop, ready).await;
                if result.is_err() && !stop.is_cancelled() {
                    shared.disconnects.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        drop(ready_tx);
        // Each subscriber reports once; it keeps its sender, so count.
        for _ in 0..chunk {
            match ready_rx.recv().await {
                Some(true) => ramp.connected += 1,
                Some(false) | None => ramp.failed += 1,
            }
        }
    }
    ramp
}

/// Runs `load` over `interface` with `token` and reports what the
/// subscribers received.
pub async fn run(interface: Interface, load: &RatesLoad, token: &str) -> anyhow::Result<Report> {
    load.check()?;
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cannot raise the open-files limit: {err}");
    }
    let server_pid = proc::server(load.server_pid);
    let rss_before = proc::rss(server_pid);
    let shared = Arc::new(Shared::new());
    let stop = CancellationToken::new();
    eprintln!(
        "opening {} {interface:?} subscribers to {} ({})",
        load.connections,
        load.target,
        load.symbols.join(",")
    );
    let mut tasks = JoinSet::new();
    let ramp_started = Instant::now();
    let ramp = ramp_up(interface, load, token, &shared, &stop, &mut tasks).await;
    eprintln!(
        "{} connected, {} failed, in {:.1}s",
        ramp.connected,
        ramp.failed,
        ramp_started.elapsed().as_secs_f64()
    );
    // Let the server settle, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = proc::rss(server_pid);
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(load.duration).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let memory = (rss_before, rss_connected);
    Ok(Report::new(
        interface, load, &ramp, elapsed, &shared, memory,
    ))
}

/// What a subscriber load measured; serialises as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
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

impl Report {
    fn new(
        interface: Interface,
        load: &RatesLoad,
        ramp: &Ramp,
        elapsed: Duration,
        shared: &Shared,
        (rss_before, rss_connected): (Option<u64>, Option<u64>),
    ) -> Self {
        let messages = shared.messages.load(Ordering::Relaxed);
        let per_connection = match (rss_before, rss_connected) {
            (Some(before), Some(after)) if ramp.connected > 0 => {
                Some((after.saturating_sub(before)) as f64 / ramp.connected as f64)
            }
            _ => None,
        };
        Self {
            interface: format!("{interface:?}").to_lowercase(),
            connections: load.connections,
            connected: ramp.connected,
            failed: ramp.failed,
            duration_s: elapsed.as_secs_f64(),
            messages,
            messages_per_s: messages as f64 / elapsed.as_secs_f64(),
            latency_us: Percentiles::of(&shared.histogram()),
            server_rss_before_kib: rss_before,
            server_rss_connected_kib: rss_connected,
            server_kib_per_connection: per_connection,
            disconnects: shared.disconnects.load(Ordering::Relaxed),
        }
    }

    /// Prints the report as text.
    pub fn print(&self) {
        let l = &self.latency_us;
        println!(
            "{} x{} ({} connected, {} failed): {} messages in {:.1}s = {:.0}/s",
            self.interface,
            self.connections,
            self.connected,
            self.failed,
            self.messages,
            self.duration_s,
            self.messages_per_s
        );
        println!(
            "latency publish->receipt: p50 {}us  p90 {}us  p99 {}us  p99.9 {}us  max {}us",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        match (
            self.server_rss_before_kib,
            self.server_rss_connected_kib,
            self.server_kib_per_connection,
        ) {
            (Some(b), Some(a), Some(per)) => {
                println!(
                    "server RSS: {b} KiB before, {a} KiB connected = {per:.1} KiB per connection"
                )
            }
            _ => println!("server RSS: unknown (pass --server-pid)"),
        }
        println!("disconnects during the run: {}", self.disconnects);
    }
}
