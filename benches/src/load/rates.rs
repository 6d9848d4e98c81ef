//! Rate subscriber load: N subscribers (WebSocket or SSE through the
//! gateway, or gRPC `StreamRates`) against a running server, reporting
//! delivery latency (the rate's `publish_time` to receipt in this process;
//! both on this machine's clock), messages per second and the server's
//! memory per connection.
//!
//! Subscribers connect [`RatesLoad::ramp`] at a time; once all are open the
//! server gets a second to settle, then the measured window starts. The
//! server's CPU time (user + system, from /proc) is read at both ends of the
//! window, so the report gives CPU seconds per million deliveries.
//!
//! Against a loopback target, WebSocket, SSE and NATS subscribers connect
//! from several loopback source addresses ([`Sources`]): one address has
//! only ~28,000 ephemeral ports.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{
    histogram::{self, Percentiles},
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
    /// nats-server's WebSocket listener (the NATS text protocol), the peer
    /// of the comparison; the subjects are `rates.<SYMBOL>`.
    Nats,
}

/// The loopback source addresses subscribers connect from: subscriber `i`
/// from `127.0.0.<first + i / per_address>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    /// Last octet of the first address (1: 127.0.0.1).
    pub first: u8,
    /// Connections per source address (below the ~28,000 ephemeral ports).
    pub per_address: usize,
}

impl Default for Sources {
    fn default() -> Self {
        Self {
            first: 1,
            per_address: 20_000,
        }
    }
}

impl Sources {
    /// How many addresses `connections` subscribers take.
    pub fn addresses(&self, connections: usize) -> usize {
        connections.div_ceil(self.per_address.max(1))
    }

    /// The source address of subscriber `index`; `None` past 127.0.0.254.
    fn of(&self, index: usize) -> Option<IpAddr> {
        let octet = usize::from(self.first) + index / self.per_address.max(1);
        let octet = u8::try_from(octet).ok().filter(|&o| o < 255)?;
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet)))
    }
}

/// Whether `target` (a URL or host:port) names an IPv4 loopback host or
/// `localhost`: only then do subscribers pick their source addresses.
fn is_loopback(target: &str) -> bool {
    let rest = target.split("://").nth(1).unwrap_or(target);
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    host == "localhost" || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
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
    /// Server process id, for RSS and CPU time (`None`: found by name).
    pub server_pid: Option<u32>,
    /// Source addresses of the subscribers (loopback targets only).
    pub sources: Sources,
    /// Between the ramp and the measured window, say so on stderr
    /// ([`WAITING_FOR_GO`]) and wait for a line on stdin: several
    /// load-generator processes then measure the same window (the spread
    /// cases of `loadtest compare`).
    pub wait_for_go: bool,
}

/// How long the server gets to settle between the ramp (or the go) and the
/// measured window.
pub const SETTLE: Duration = Duration::from_secs(1);

/// What a load run with [`RatesLoad::wait_for_go`] writes on stderr once
/// every subscriber has opened (or failed to).
pub const WAITING_FOR_GO: &str = "every subscriber opened; waiting for a line on stdin";

impl RatesLoad {
    /// Refuses a load that cannot run.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.connections == 0 || self.duration.is_zero() {
            bail!("--connections and --duration must be positive");
        }
        if self.sources.per_address == 0 {
            bail!("--per-source-address must be positive");
        }
        let last = usize::from(self.sources.first) + self.sources.addresses(self.connections);
        if is_loopback(&self.target) && last > 255 {
            bail!(
                "{} connections at {} per source address need addresses past 127.0.0.254",
                self.connections,
                self.sources.per_address
            );
        }
        Ok(())
    }
}

/// An anonymous browser token from the gateway at `base` (`POST /v1/tokens`).
pub async fn browser_token(base: &str) -> anyhow::Result<String> {
    let url = format!("{}/v1/tokens", base.trim_end_matches('/'));
    token_from(&url, reqwest::Client::new().post(&url)).await
}

/// The token a `POST /v1/tokens` to `url` (`request`) answers with; a
/// refusal is an error with the server's message.
pub(crate) async fn token_from(
    url: &str,
    request: reqwest::RequestBuilder,
) -> anyhow::Result<String> {
    let response = request
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
    let mut subscription = Subscription {
        interface,
        target: load.target.clone(),
        token: token.to_owned(),
        symbols: load.symbols.clone(),
        source: None,
        http: None,
    };
    let mut http_clients: std::collections::HashMap<Option<IpAddr>, reqwest::Client> =
        std::collections::HashMap::new();
    // gRPC connections go through tonic's own connector: system's choice.
    let pick_source = is_loopback(&load.target) && interface != Interface::Grpc;
    let step = load.ramp.max(1);
    let mut ramp = Ramp::default();
    for chunk_start in (0..load.connections).step_by(step) {
        let chunk = step.min(load.connections - chunk_start);
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(chunk);
        for index in chunk_start..chunk_start + chunk {
            if pick_source {
                subscription.source = load.sources.of(index);
            }
            if interface == Interface::Sse {
                subscription.http = match http_clients.entry(subscription.source) {
                    std::collections::hash_map::Entry::Occupied(client) => {
                        Some(client.get().clone())
                    }
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        subscribers::http_client(subscription.source)
                            .ok()
                            .map(|client| entry.insert(client).clone())
                    }
                };
            }
            let subscription = subscription.clone();
            let (shared, stop, ready) = (Arc::clone(shared), stop.clone(), ready_tx.clone());
            tasks.spawn(async move {
                subscribers::run(subscription, &shared, &stop, ready).await;
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
    check_open_files(load.connections)?;
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
    if let Some(reason) = &*shared
        .first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
    {
        eprintln!("first failure: {reason}");
    }
    if load.wait_for_go {
        eprintln!("{WAITING_FOR_GO}");
        let read = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
            .await
            .context("waiting for go on stdin")?
            .context("waiting for go on stdin")?;
        // A closed stdin means the parent is gone: nobody will read a report.
        anyhow::ensure!(read > 0, "stdin closed before go: the parent is gone");
    }
    // Let the server settle, then measure.
    tokio::time::sleep(SETTLE).await;
    let rss_connected = proc::rss(server_pid);
    let cpu_before = proc::cpu(server_pid);
    let me = Some(std::process::id());
    let own_cpu_before = proc::cpu(me);
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(load.duration).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = cpu_before.zip(proc::cpu(server_pid)).map(|(b, a)| a - b);
    let own_cpu = own_cpu_before.zip(proc::cpu(me)).map(|(b, a)| a - b);
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let server = Server {
        rss_before,
        rss_connected,
        cpu,
        own_cpu,
    };
    Ok(Report::new(
        interface, load, &ramp, elapsed, &shared, &server,
    ))
}

/// File descriptors the load generator keeps besides its connections.
const SPARE_FILES: u64 = 256;

/// Subscribers one process can hold under its open-files limit (raised to
/// the hard limit first): the soft limit less [`SPARE_FILES`]; and the hard
/// limit, to say why.
pub fn open_files_capacity() -> (usize, u64) {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((0, 0));
    let capacity = usize::try_from(soft.saturating_sub(SPARE_FILES)).unwrap_or(usize::MAX);
    (capacity, hard)
}

/// Raises the open-files limit to its hard limit and refuses a load that
/// cannot fit under it, saying what to change.
///
/// # Errors
/// When `connections` need more descriptors than the hard limit allows.
pub fn check_open_files(connections: usize) -> anyhow::Result<()> {
    let needed = connections as u64 + SPARE_FILES;
    let raised = rlimit::increase_nofile_limit(u64::MAX);
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((0, 0));
    if soft >= needed {
        return Ok(());
    }
    let cause = match raised {
        Err(err) => format!(" ({err})"),
        Ok(_) => String::new(),
    };
    bail!(
        "{connections} connections need at least {needed} open files in the load generator \
         (and as many in the server), but the limit is {soft} (hard limit {hard}){cause}: \
         raise the hard limit of the shell that runs fxcast, e.g. as root `ulimit -Hn {needed}` \
         (the kernel allows up to /proc/sys/fs/nr_open), `docker run --ulimit nofile={needed}:{needed}`, \
         `LimitNOFILE={needed}` in a systemd unit, or `nofile` in /etc/security/limits.conf"
    )
}

/// What was read from the server's /proc around the run.
#[derive(Debug, Clone, Copy, Default)]
struct Server {
    rss_before: Option<u64>,
    rss_connected: Option<u64>,
    cpu: Option<f64>,
    /// The load generator's own CPU time in the window.
    own_cpu: Option<f64>,
}

/// What a subscriber load measured; serialises as `--json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `ws`, `sse`, `grpc` or `nats`.
    pub interface: String,
    /// Subscribers asked for.
    pub connections: usize,
    /// Subscribers that opened their stream.
    pub connected: usize,
    /// Subscribers that could not.
    pub failed: usize,
    /// Length of the measured window.
    pub duration_s: f64,
    /// Rates received in the window (deliveries).
    pub messages: u64,
    /// Deliveries per second.
    pub messages_per_s: f64,
    /// Publish to receipt.
    pub latency_us: Percentiles,
    /// Server RSS before any subscriber connected.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS with every subscriber connected.
    pub server_rss_connected_kib: Option<u64>,
    /// The difference over the connected subscribers.
    pub server_kib_per_connection: Option<f64>,
    /// Server CPU time (user + system) during the window.
    #[serde(default)]
    pub server_cpu_s: Option<f64>,
    /// Server CPU seconds per million deliveries in the window.
    #[serde(default)]
    pub server_cpu_s_per_million: Option<f64>,
    /// Load generator (this process) CPU time during the window: near the
    /// window's length on one core, the subscribers, not the server, set the pace.
    #[serde(default)]
    pub load_generator_cpu_s: Option<f64>,
    /// Subscribers whose stream broke before the end.
    pub disconnects: u64,
    /// Why the first subscriber that could not connect failed.
    #[serde(default)]
    pub first_failure: Option<String>,
    /// Why the first stream that broke did.
    #[serde(default)]
    pub first_disconnect: Option<String>,
    /// Every recorded latency as `[value, count]` pairs of the HDR
    /// histogram ([`histogram::buckets`]), so reports of several
    /// load-generator processes merge into exact percentiles; left out
    /// unless asked for (`loadtest ws --histogram`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_histogram: Option<Vec<[u64; 2]>>,
}

impl Report {
    fn new(
        interface: Interface,
        load: &RatesLoad,
        ramp: &Ramp,
        elapsed: Duration,
        shared: &Shared,
        server: &Server,
    ) -> Self {
        let Server {
            rss_before,
            rss_connected,
            cpu,
            own_cpu,
        } = *server;
        let first = |slot: &std::sync::Mutex<Option<String>>| {
            slot.lock().unwrap_or_else(|e| e.into_inner()).clone()
        };
        let messages = shared.messages.load(Ordering::Relaxed);
        let histogram = shared.histogram();
        Self {
            interface: format!("{interface:?}").to_lowercase(),
            connections: load.connections,
            connected: ramp.connected,
            failed: ramp.failed,
            duration_s: elapsed.as_secs_f64(),
            messages,
            messages_per_s: messages as f64 / elapsed.as_secs_f64(),
            latency_us: Percentiles::of(&histogram),
            server_rss_before_kib: rss_before,
            server_rss_connected_kib: rss_connected,
            server_kib_per_connection: kib_per_connection(
                rss_before,
                rss_connected,
                ramp.connected,
            ),
            server_cpu_s: cpu,
            server_cpu_s_per_million: per_million(cpu, messages),
            load_generator_cpu_s: own_cpu,
            disconnects: shared.disconnects.load(Ordering::Relaxed),
            first_failure: first(&shared.first_failure),
            first_disconnect: first(&shared.first_disconnect),
            latency_histogram: Some(histogram::buckets(&histogram)),
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
        if let (Some(cpu), Some(per)) = (self.server_cpu_s, self.server_cpu_s_per_million) {
            println!("server CPU: {cpu:.2}s in the window = {per:.2}s per million deliveries");
        }
        if let Some(cpu) = self.load_generator_cpu_s {
            println!("load generator CPU: {cpu:.2}s in the window");
        }
        println!("disconnects during the run: {}", self.disconnects);
        for (what, reason) in [
            ("first failure", &self.first_failure),
            ("first disconnect", &self.first_disconnect),
        ] {
            if let Some(reason) = reason {
                println!("{what}: {reason}");
            }
        }
    }
}

/// The server's RSS growth from `before` to `after` (KiB) over the
/// `connected` subscribers it holds.
pub(super) fn kib_per_connection(
    before: Option<u64>,
    after: Option<u64>,
    connected: usize,
) -> Option<f64> {
    let (before, after) = before.zip(after).filter(|_| connected > 0)?;
    Some(after.saturating_sub(before) as f64 / connected as f64)
}

/// CPU seconds per million of `messages` deliveries.
pub(super) fn per_million(cpu: Option<f64>, messages: u64) -> Option<f64> {
    cpu.filter(|_| messages > 0)
        .map(|cpu| cpu / messages as f64 * 1e6)
}
