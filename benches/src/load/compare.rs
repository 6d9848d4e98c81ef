//! `fxcast loadtest compare`: fxcast's WebSocket, SSE and gRPC streams and
//! nats-server's WebSocket listener under the same load, one table.
//!
//! Every case gets a fresh server process (so its RSS before connecting is a
//! clean baseline), started by this module on free loopback ports: `fxcast
//! serve` with the simulated feed ticking every symbol every
//! [`Compare::tick_interval`], or `nats-server` fed by a [`Publisher`] that
//! publishes, per symbol and interval, the very frame fxcast's WebSocket
//! sent (captured from a probe server at the start) with fresh times. The
//! subscribers (connections, symbols, ramp, measured window) are the same
//! [`rates`] load for every case, and latency is publish time to receipt on
//! this machine's clock, for fxcast and nats-server alike.
//!
//! With [`Compare::pin`] the servers run on core 0 and the load generator
//! on the others (`taskset`), so they do not steal each other's CPU.
//!
//! An fxcast case with more subscribers than one process may hold (its
//! open-files limit, or [`Compare::max_per_process`]) runs spread, as a
//! deployment past one process's limits would: several serving `fxcast
//! serve` processes fed by a publisher through nats-server, and as many
//! load-generator processes, merged into one row ([`spread`]). nats-server
//! cases are never spread.

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use super::{
    histogram::ms,
    nats::{NatsServer, Publisher, Template},
    rates::{self, Interface, RatesLoad, Report, Sources},
    spawn,
    spread::{self, Spread},
    subscribers::connect_ws,
};

/// A server and interface of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// fxcast's gateway WebSocket `/v1/stream`.
    FxcastWs,
    /// fxcast's gateway Server-Sent Events.
    FxcastSse,
    /// fxcast's gRPC `StreamRates`.
    FxcastGrpc,
    /// nats-server's WebSocket listener.
    NatsWs,
}

impl Peer {
    /// Every peer, in the table's order.
    pub const ALL: [Self; 4] = [
        Self::FxcastWs,
        Self::FxcastSse,
        Self::FxcastGrpc,
        Self::NatsWs,
    ];

    /// The name in the table and on the command line.
    pub fn label(self) -> &'static str {
        match self {
            Self::FxcastWs => "fxcast-ws",
            Self::FxcastSse => "fxcast-sse",
            Self::FxcastGrpc => "fxcast-grpc",
            Self::NatsWs => "nats-ws",
        }
    }

    /// The peer named `label`.
    ///
    /// # Errors
    /// When no peer has that name.
    pub fn parse(label: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.label() == label)
            .with_context(|| {
                format!("unknown server {label:?} (fxcast-ws, fxcast-sse, fxcast-grpc, nats-ws)")
            })
    }

    /// The `fxcast loadtest` subcommand of a spread case's load
    /// generators; `None` for nats-server, which is never spread.
    pub(super) fn subcommand(self) -> Option<&'static str> {
        match self {
            Self::FxcastWs => Some("ws"),
            Self::FxcastSse => Some("sse"),
            Self::FxcastGrpc => Some("grpc"),
            Self::NatsWs => None,
        }
    }

    fn interface(self) -> Interface {
        match self {
            Self::FxcastWs => Interface::Ws,
            Self::FxcastSse => Interface::Sse,
            Self::FxcastGrpc => Interface::Grpc,
            Self::NatsWs => Interface::Nats,
        }
    }
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct Compare {
    /// The `fxcast` binary to run `fxcast serve` from.
    pub fxcast: PathBuf,
    /// The servers, each at every count of `connections`.
    pub peers: Vec<Peer>,
    /// Subscriber counts every peer runs at.
    pub connections: Vec<usize>,
    /// Further counts fxcast's WebSocket alone runs at.
    pub ws_connections: Vec<usize>,
    /// Symbols each subscriber streams.
    pub symbols: Vec<String>,
    /// Every symbol ticks once per interval (fxcast's simulated feed and the
    /// nats-server publisher alike).
    pub tick_interval: Duration,
    /// Measured window of each case.
    pub duration: Duration,
    /// Connections opened at once while ramping up.
    pub ramp: usize,
    /// Subscribers per loopback source address.
    pub per_source_address: usize,
    /// Servers on core 0, the load generator on the others.
    pub pin: bool,
    /// Subscribers one process may hold (`None`: as many as its open-files
    /// limit allows); an fxcast case above it runs spread over several
    /// processes ([`spread`](super::spread)).
    pub max_per_process: Option<usize>,
}

impl Compare {
    /// Refuses a comparison that cannot run.
    ///
    /// # Errors
    /// When a count, the duration or the symbols are missing.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.peers.is_empty() || self.symbols.is_empty() {
            bail!("nothing to compare: give servers and symbols");
        }
        if self.duration.is_zero() || self.tick_interval.is_zero() {
            bail!("--duration and --tick-interval must be positive");
        }
        if self
            .connections
            .iter()
            .chain(&self.ws_connections)
            .any(|&n| n == 0)
        {
            bail!("connection counts must be positive");
        }
        if self.max_per_process == Some(0) {
            bail!("--max-per-process must be positive");
        }
        Ok(())
    }

    /// The cases in the order they run: every peer at every count, then
    /// fxcast's WebSocket at the further counts.
    fn cases(&self) -> Vec<(Peer, usize)> {
        let mut cases: Vec<(Peer, usize)> = self
            .connections
            .iter()
            .flat_map(|&n| self.peers.iter().map(move |&p| (p, n)))
            .collect();
        cases.extend(self.ws_connections.iter().map(|&n| (Peer::FxcastWs, n)));
        cases
    }
}

/// Cores of the servers and of the load generator when pinned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pinning {
    /// `taskset -c` list of the servers.
    pub server: String,
    /// `taskset -c` list of the load generator.
    pub load_generator: String,
}

/// One case's result, or why it did not run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// [`Peer::label`].
    pub server: String,
    /// Subscribers asked for.
    pub connections: usize,
    /// What the subscribers measured.
    pub report: Option<Report>,
    /// Why there is no report.
    pub error: Option<String>,
    /// How the case was spread over several processes, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<Spread>,
}

impl Row {
    /// The row's line of [`Table::markdown`].
    fn markdown(&self, md: &mut String) {
        let Some(r) = &self.report else {
            let error = self.error.as_deref().unwrap_or("unknown");
            let _ = writeln!(
                md,
                "| {} | {} | not run: {} | | | | | | | | |",
                self.server,
                self.connections,
                error.replace('|', "/")
            );
            return;
        };
        let l = r.latency_us;
        let cpu = r
            .server_cpu_s_per_million
            .map_or("–".to_owned(), |c| format!("{c:.2}"));
        let kib = r
            .server_kib_per_connection
            .map_or("–".to_owned(), |k| format!("{k:.1}"));
        let own = r
            .load_generator_cpu_s
            .filter(|_| r.duration_s > 0.0)
            .map_or("–".to_owned(), |c| {
                format!("{:.0} %", c / r.duration_s * 100.0)
            });
        let server = match &self.spread {
            Some(spread) => format!("{} ({} processes)", self.server, spread.server_processes),
            None => self.server.clone(),
        };
        let _ = writeln!(
            md,
            "| {server} | {} | {} | {:.0} | {} | {} | {} | {cpu} | {kib} | {} | {own} |",
            self.connections,
            r.connected,
            r.messages_per_s,
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            r.disconnects
        );
    }
}

/// The comparison's result; `--json` prints it, `bench-report` renders it
/// with [`Table::markdown`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    /// One row per case.
    pub rows: Vec<Row>,
    /// Symbols each subscriber streamed.
    pub symbols: Vec<String>,
    /// Ticks per symbol per second.
    pub ticks_per_s: f64,
    /// Measured window per case.
    pub duration_s: f64,
    /// Connections opened at once while ramping up.
    pub ramp: usize,
    /// Bytes of each rate message (fxcast's WebSocket frame; the same
    /// bytes published to nats-server).
    pub payload_bytes: Option<usize>,
    /// Cores when pinned.
    pub pinning: Option<Pinning>,
    /// Cores of the machine.
    pub cores: usize,
    /// /proc/loadavg when the comparison started and ended.
    pub load_average: (String, String),
}

impl Table {
    /// The table as Markdown, with the conditions it was measured in.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let pinning = self.pinning.as_ref().map_or_else(
            || "not pinned (server and load generator share the cores)".to_owned(),
            |p| {
                format!(
                    "servers pinned to CPU {}, load generator to CPU {} (`taskset`)",
                    p.server, p.load_generator
                )
            },
        );
        let payload = self
            .payload_bytes
            .map_or_else(String::new, |b| format!(", {b}-byte messages"));
        let _ = writeln!(
            md,
            "{} symbol(s) per subscriber at {} ticks/s each{payload}; ramp {} connections at a time; \
             {:.0} s measured per case, each against a fresh server; {pinning}; {} cores; \
             load average {} at the start, {} at the end.\n",
            self.symbols.len(),
            self.ticks_per_s,
            self.ramp,
            self.duration_s,
            self.cores,
            self.load_average.0,
            self.load_average.1,
        );
        md.push_str(
            "| server | connections | connected | deliveries/s | p50 | p99 | p99.9 | server CPU s / 1M deliveries | server KiB / connection | disconnects | load generator CPU |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for row in &self.rows {
            row.markdown(&mut md);
        }
        let _ = writeln!(
            md,
            "\nLoad generator CPU is this process's CPU time over the window (of every load-generator \
             process together in a spread case), as a share of one core: pinned to one core, near \
             100 % means the subscribers, not the server, set the pace."
        );
        for row in &self.rows {
            if let (Some(spread), Some(_)) = (&row.spread, &row.report) {
                spread.markdown(&row.server, row.connections, &mut md);
            }
        }
        for row in &self.rows {
            let Some(r) = &row.report else { continue };
            let notes = [
                (r.failed, "could not connect", &r.first_failure),
                (r.disconnects as usize, "disconnected", &r.first_disconnect),
            ];
            for (count, what, reason) in notes {
                if count > 0 {
                    let _ = writeln!(
                        md,
                        "- {} x{}: {count} {what}; the first: {}",
                        row.server,
                        row.connections,
                        reason.as_deref().unwrap_or("unknown")
                    );
                }
            }
        }
        md
    }
}

/// Runs every case of `compare` and returns the table.
///
/// # Errors
/// When the comparison cannot start at all (a case that fails is a row
/// with its error).
pub async fn run(compare: &Compare) -> anyhow::Result<Table> {
    compare.check()?;
    let load_before = load_average();
    // Raised once here so the servers inherit the limit too.
    let _ = rates::check_open_files(0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinning = (compare.pin && cores >= 2).then(|| Pinning::split(cores));
    if let Some(p) = &pinning {
        pin_self(&p.load_generator)?;
    }
    let server_cpus = pinning.as_ref().map(|p| p.server.as_str());
    let templates = if compare.peers.contains(&Peer::NatsWs) {
        Some(probe_templates(compare).await?)
    } else {
        None
    };
    let mut cases = Cases {
        compare,
        limit: spread::Limit::of(compare.max_per_process),
        server_cpus,
        generator_cpus: pinning.as_ref().map(|p| p.load_generator.as_str()),
        templates: templates.as_deref(),
        next_source: 1,
    };
    let mut rows = Vec::new();
    for (peer, connections) in compare.cases() {
        eprintln!("== {} x{connections}", peer.label());
        let started = Instant::now();
        let outcome = cases.run(peer, connections).await;
        eprintln!("   done in {:.1}s", started.elapsed().as_secs_f64());
        let (report, error, spread) = match outcome {
            Ok((mut report, spread)) => {
                // Only the spread cases' load generators send theirs.
                report.latency_histogram = None;
                (Some(report), None, spread)
            }
            Err(err) => {
                eprintln!("   not run: {err:#}");
                (None, Some(format!("{err:#}")), None)
            }
        };
        rows.push(Row {
            server: peer.label().to_owned(),
            connections,
            report,
            error,
            spread,
        });
    }
    Ok(Table {
        rows,
        symbols: compare.symbols.clone(),
        ticks_per_s: 1.0 / compare.tick_interval.as_secs_f64(),
        duration_s: compare.duration.as_secs_f64(),
        ramp: compare.ramp,
        payload_bytes: templates
            .as_ref()
            .and_then(|t| t.first())
            .map(|t| t.text.len()),
        pinning,
        cores,
        load_average: (load_before, load_average()),
    })
}

/// What every case of one comparison shares.
struct Cases<'a> {
    compare: &'a Compare,
    limit: spread::Limit,
    server_cpus: Option<&'a str>,
    generator_cpus: Option<&'a str>,
    templates: Option<&'a [Template]>,
    /// The next loopback source address (127.0.0.N) no case has used.
    next_source: usize,
}

impl Cases<'_> {
    /// One case: spread when one process cannot hold it, else against one
    /// fresh server.
    async fn run(
        &mut self,
        peer: Peer,
        connections: usize,
    ) -> anyhow::Result<(Report, Option<spread::Spread>)> {
        let compare = self.compare;
        let spread_over = peer
            .subcommand()
            .and_then(|_| self.limit.processes(connections));
        if let Some(processes) = spread_over {
            eprintln!(
                "   spread over {processes} serving processes and {processes} load generators ({})",
                self.limit.reason
            );
            let cpus = (self.server_cpus, self.generator_cpus);
            let (report, spread) = spread::run(
                compare,
                peer,
                connections,
                &self.limit,
                &mut self.next_source,
                cpus,
            )
            .await?;
            return Ok((report, Some(spread)));
        }
        let sources = fresh_sources(
            &mut self.next_source,
            compare.per_source_address,
            connections,
        );
        let report = if peer == Peer::NatsWs {
            let templates = self.templates.unwrap_or_default().to_vec();
            run_nats(compare, connections, sources, self.server_cpus, templates).await?
        } else {
            run_fxcast(compare, peer, connections, sources, self.server_cpus).await?
        };
        Ok((report, None))
    }
}

impl Pinning {
    /// The servers on CPU 0, the load generator on the others.
    fn split(cores: usize) -> Self {
        Self {
            server: "0".to_owned(),
            load_generator: if cores == 2 {
                "1".to_owned()
            } else {
                format!("1-{}", cores - 1)
            },
        }
    }
}

/// Source addresses for a case of `connections`, after those of the
/// previous cases: their closed connections linger in TIME_WAIT. Starts
/// again at 127.0.0.1 when the range would run past 127.0.0.254.
pub(super) fn fresh_sources(next: &mut usize, per_address: usize, connections: usize) -> Sources {
    let sources = Sources {
        first: u8::try_from(*next).unwrap_or(1),
        per_address,
    };
    let addresses = sources.addresses(connections);
    *next += addresses;
    if *next > 254 {
        *next = 1 + addresses;
    }
    if usize::from(sources.first) + addresses > 255 {
        Sources {
            first: 1,
            ..sources
        }
    } else {
        sources
    }
}

/// The first three fields of /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Pins every thread of this process to `cpus`; new threads inherit it.
fn pin_self(cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("cannot run taskset (Debian: util-linux)")?;
    if !status.success() {
        bail!("taskset could not pin the load generator to CPU {cpus}");
    }
    Ok(())
}

/// The subscriber load of one case against `target`.
fn load_of(
    compare: &Compare,
    target: String,
    connections: usize,
    sources: Sources,
    pid: u32,
) -> RatesLoad {
    RatesLoad {
        target,
        connections,
        symbols: compare.symbols.clone(),
        duration: compare.duration,
        ramp: compare.ramp,
        server_pid: Some(pid),
        sources,
        wait_for_go: false,
    }
}

/// One fxcast case: a fresh `fxcast serve`, a token, the load.
async fn run_fxcast(
    compare: &Compare,
    peer: Peer,
    connections: usize,
    sources: Sources,
    cpus: Option<&str>,
) -> anyhow::Result<Report> {
    rates::check_open_files(connections)?;
    let server = FxcastServer::start(compare, connections, cpus)?;
    let token = server.token().await?;
    let load = load_of(
        compare,
        server.target(peer),
        connections,
        sources,
        server.pid(),
    );
    load.check()?;
    rates::run(peer.interface(), &load, &token).await
}

/// The nats-server case: a fresh server, the publisher, the load.
async fn run_nats(
    compare: &Compare,
    connections: usize,
    sources: Sources,
    cpus: Option<&str>,
    templates: Vec<Template>,
) -> anyhow::Result<Report> {
    rates::check_open_files(connections)?;
    let server = NatsServer::start(connections, cpus)?;
    let publisher = Publisher::start(&server.url(), templates, compare.tick_interval).await?;
    let load = load_of(compare, server.ws_url(), connections, sources, server.pid());
    load.check()?;
    let report = rates::run(Interface::Nats, &load, "").await;
    let published = publisher.stop().await;
    let report = report?;
    published.context("the nats-server publisher failed")?;
    Ok(report)
}

/// How long `fxcast serve` may take to say it is listening.
const STARTUP: Duration = Duration::from_secs(30);

/// An `fxcast serve` for one case; killed when dropped.
pub(super) struct FxcastServer {
    child: spawn::Process,
    pub(super) grpc: String,
    pub(super) http: String,
    api_key: String,
    _data: tempfile::TempDir,
}

impl FxcastServer {
    /// `fxcast serve` on free loopback ports, with room for `connections`.
    fn start(compare: &Compare, connections: usize, cpus: Option<&str>) -> anyhow::Result<Self> {
        Self::start_with(compare, connections, cpus, &[], &Self::new_api_key())
    }

    /// An API key for one case (shared by the nodes of a spread case).
    pub(super) fn new_api_key() -> String {
        format!(
            "loadtest-compare-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        )
    }

    /// `fxcast serve` as [`Self::start`] with `args` added (a cluster
    /// node's transport and role) and `api_key`.
    pub(super) fn start_with(
        compare: &Compare,
        connections: usize,
        cpus: Option<&str>,
        args: &[String],
        api_key: &str,
    ) -> anyhow::Result<Self> {
        let data = tempfile::tempdir().context("cannot create a data directory")?;
        let api_key = api_key.to_owned();
        let mut command = spawn::pinned(cpus, &compare.fxcast);
        command
            .args([
                "serve",
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--symbols")
            .arg(compare.symbols.join(","))
            .arg("--tick-interval")
            .arg(humantime::format_duration(compare.tick_interval).to_string())
            .arg("--max-connections")
            .arg((connections + 64).to_string())
            .args(args)
            .env("FXCAST_API_KEY", &api_key)
            .env_remove("FXCAST_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", compare.fxcast.display()))?;
        let (child, log) = spawn::wait_until(child, "fxcast serve", "fxcast listening", STARTUP)?;
        let line = log.lines().last().unwrap_or_default();
        let field = |name: &str| -> anyhow::Result<String> {
            let key = format!("{name}=");
            let at = line
                .find(&key)
                .with_context(|| format!("no {key} in {line}"))?;
            Ok(line[at + key.len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned())
        };
        Ok(Self {
            grpc: field("grpc")?,
            http: field("http")?,
            child,
            api_key,
            _data: data,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where `peer`'s subscribers connect.
    pub(super) fn target(&self, peer: Peer) -> String {
        match peer {
            Peer::FxcastGrpc => format!("http://{}", self.grpc),
            _ => format!("http://{}", self.http),
        }
    }

    /// A subscribe token for every symbol, for an hour (`POST /v1/tokens`
    /// with the API key).
    pub(super) async fn token(&self) -> anyhow::Result<String> {
        let url = format!("http://{}/v1/tokens", self.http);
        let body = serde_json::json!({
            "subject": "loadtest",
            "scopes": ["rates:subscribe=*"],
            "ttl_seconds": 3600,
        });
        let request = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&self.api_key)
            .json(&body);
        rates::token_from(&url, request).await
    }
}

/// The rate frame of every symbol as fxcast's WebSocket sends it, from a
/// probe `fxcast serve` with the comparison's settings.
async fn probe_templates(compare: &Compare) -> anyhow::Result<Vec<Template>> {
    let server = FxcastServer::start(compare, 16, None)?;
    let token = server.token().await?;
    let url = format!("ws://{}/v1/stream?token={token}", server.http);
    let mut ws = connect_ws(&url, None).await?;
    let subscribe = serde_json::json!({"type": "subscribe", "symbols": compare.symbols});
    ws.send(Message::Text(subscribe.to_string().into())).await?;
    let mut templates: Vec<Template> = Vec::new();
    let deadline = STARTUP + compare.tick_interval * 4;
    tokio::time::timeout(deadline, async {
        while templates.len() < compare.symbols.len() {
            let Some(frame) = ws.next().await else {
                bail!("the probe server closed the WebSocket");
            };
            let Message::Text(text) = frame? else {
                continue;
            };
            let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if json["type"] != "rate" {
                continue;
            }
            let symbol = json["symbol"].as_str().unwrap_or_default().to_owned();
            if !templates.iter().any(|t| t.symbol == symbol) {
                templates.push(Template {
                    symbol,
                    text: text.as_str().to_owned(),
                });
            }
        }
        Ok(())
    })
    .await
    .context("no rate of every symbol from the probe fxcast server")??;
    // In the symbols' order, as fxcast's feed ticks them.
    templates.sort_by_key(|t| compare.symbols.iter().position(|s| *s == t.symbol));
    Ok(templates)
}
