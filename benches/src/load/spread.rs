//! The cases of `loadtest compare` past what one process can hold (its
//! open-files limit, or `--max-per-process`), run as a deployment past one
//! process's limits would be: a cluster, and as many load generators.
//!
//! - one nats-server with JetStream, the cluster's engine;
//! - one publisher, `fxcast serve --transport nats` with the simulated feed
//!   (and the order executor), holding no subscriber;
//! - N serving nodes, `fxcast serve --transport nats --feed none
//!   --orders-upstream <publisher>`, each holding its share of the
//!   subscribers;
//! - N load generators, `fxcast loadtest ws|sse|grpc` of the same binary,
//!   one per serving node, each from loopback source addresses of its own.
//!   They ramp up at once, sharing `--ramp` (each opens its share of the
//!   connections in flight, so the cluster sees `--ramp` at a time as one
//!   server would), each says when every subscriber of its share is
//!   open, and all measure the same window once told to (a line on stdin).
//!   Each sends its latency histogram in its JSON report, and this process
//!   adds them up: the percentiles are exact over every delivery.
//!
//! Server CPU is the sum over every fxcast process and nats-server over the
//! window: each serving node's as its load generator measured it over its
//! own window, the publisher's and nats-server's read here over the same
//! span; KiB per connection is the serving nodes' RSS growth
//! over the subscribers they hold; load generator CPU is the sum of the
//! load generators'.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    process::{ChildStdin, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::{
    compare::{Compare, FxcastServer, Peer, fresh_sources},
    histogram::{self, Percentiles},
    nats::NatsServer,
    proc,
    rates::{self, Report, SETTLE, Sources, WAITING_FOR_GO},
    spawn,
};

/// How a case was spread; the table's notes say it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spread {
    /// Serving nodes (`fxcast serve --feed none`), each with its share of
    /// the subscribers; a publisher and nats-server besides.
    pub server_processes: usize,
    /// Load-generator processes, one per serving node.
    pub load_generators: usize,
    /// The most subscribers one process held.
    pub largest_share: usize,
    /// The most subscribers one process may hold here.
    pub per_process: usize,
    /// What sets [`Self::per_process`].
    pub limit: String,
}

impl Spread {
    /// The note under the table for `server` at `connections`.
    pub(super) fn markdown(&self, server: &str, connections: usize, md: &mut String) {
        let interface = server.trim_start_matches("fxcast-");
        let _ = writeln!(
            md,
            "- {server} x{connections} ran spread, as a cluster: {n} serving processes \
             (`fxcast serve --transport nats --feed none`, up to {share} subscribers each) fed by \
             one publisher (`fxcast serve --transport nats`, the simulated feed, no subscribers) \
             through one nats-server with JetStream, and {g} load-generator processes \
             (`fxcast loadtest {interface}`, one per serving process, sharing the ramp, measuring \
             the same window; their latency histograms added up), because one process holds at most {per} \
             subscribers here ({limit}). Server CPU is the sum over the {all} fxcast processes \
             and nats-server; KiB per connection is the serving processes' RSS growth over their \
             subscribers; load generator CPU is the sum over the {g} load generators.",
            n = self.server_processes,
            share = self.largest_share,
            g = self.load_generators,
            per = self.per_process,
            limit = self.limit,
            all = self.server_processes + 1,
        );
    }
}

/// The most subscribers one process may hold, and why.
#[derive(Debug, Clone)]
pub(super) struct Limit {
    pub(super) per_process: usize,
    pub(super) reason: String,
}

impl Limit {
    /// `--max-per-process` when given and lower than what the open-files
    /// limit allows, else the open-files limit.
    pub(super) fn of(max_per_process: Option<usize>) -> Self {
        let (open_files, hard) = rates::open_files_capacity();
        match max_per_process {
            Some(max) if max <= open_files => Self {
                per_process: max,
                reason: format!("--max-per-process {max}"),
            },
            _ => Self {
                per_process: open_files.max(1),
                reason: format!("open-files hard limit {hard} per process"),
            },
        }
    }
}

impl Limit {
    /// The serving processes (and load generators) `connections` need when
    /// one process cannot hold them all; `None` when one can.
    pub(super) fn processes(&self, connections: usize) -> Option<usize> {
        let per_process = self.per_process.max(1);
        (connections > per_process).then(|| connections.div_ceil(per_process))
    }
}

/// The most serving processes (and as many load generators) a case may be
/// spread over: each is a whole `fxcast` process, and this machine has two
/// cores.
const MAX_PROCESSES: usize = 32;

/// How long the load generators may take to open every subscriber.
const RAMP_WITHIN: Duration = Duration::from_secs(900);
/// How long a load generator may take to report once the window is over.
const REPORT_WITHIN: Duration = Duration::from_secs(120);

/// Runs `peer` at `connections` spread over `limit.processes(connections)`
/// serving nodes and as many load generators; `cpus` are the `taskset`
/// lists of the servers and of the load generators.
///
/// # Errors
/// When it would take more than [`MAX_PROCESSES`], when a process cannot
/// start, or a load generator fails or reports nothing.
pub(super) async fn run(
    compare: &Compare,
    peer: Peer,
    connections: usize,
    limit: &Limit,
    next_source: &mut usize,
    cpus: (Option<&str>, Option<&str>),
) -> anyhow::Result<(Report, Spread)> {
    let (server_cpus, generator_cpus) = cpus;
    let subcommand = peer
        .subcommand()
        .with_context(|| format!("{} cannot be spread", peer.label()))?;
    let processes = limit.processes(connections).unwrap_or(1);
    if processes > MAX_PROCESSES {
        bail!(
            "{connections} subscribers at {} per process would take {processes} serving processes \
             and as many load generators; at most {MAX_PROCESSES} are started",
            limit.per_process
        );
    }
    let shares: Vec<usize> = (0..processes)
        .map(|i| connections / processes + usize::from(i < connections % processes))
        .collect();
    let cluster = Cluster::start(compare, &shares, server_cpus).await?;
    let mut generators = Vec::with_capacity(processes);
    for (node, &share) in cluster.nodes.iter().zip(&shares) {
        let load = Share {
            subcommand,
            target: &node.target(peer),
            connections: share,
            ramp: compare.ramp.div_ceil(processes).max(1),
            server_pid: node.pid(),
            sources: fresh_sources(next_source, compare.per_source_address, share),
        };
        generators.push(LoadGenerator::start(
            compare,
            &load,
            &cluster.token,
            generator_cpus,
        )?);
    }
    for (i, generator) in generators.iter_mut().enumerate() {
        generator
            .opened()
            .await
            .with_context(|| format!("load generator {}", i + 1))?;
    }
    let engine = [cluster.nats.pid(), cluster.publisher.pid()];
    for generator in &mut generators {
        generator.go()?;
    }
    // The load generators' window: after they settle, for the duration.
    // Each measures its own node over its exact window; the publisher and
    // nats-server are measured here over the same span.
    tokio::time::sleep(SETTLE).await;
    let cpu_before = cpu_of(&engine);
    tokio::time::sleep(compare.duration).await;
    let engine_cpu = cpu_before.zip(cpu_of(&engine)).map(|(b, a)| a - b);
    let mut reports = Vec::with_capacity(processes);
    for (i, generator) in generators.iter_mut().enumerate() {
        let report = generator
            .report()
            .await
            .with_context(|| format!("load generator {}", i + 1))?;
        reports.push(report);
    }
    let report = merge(&reports, connections, engine_cpu)?;
    let spread = Spread {
        server_processes: processes,
        load_generators: processes,
        largest_share: shares.iter().copied().max().unwrap_or_default(),
        per_process: limit.per_process,
        limit: limit.reason.clone(),
    };
    Ok((report, spread))
}

/// The servers of a spread case, stopped when dropped: the serving nodes
/// first, then the publisher, then nats-server.
struct Cluster {
    nodes: Vec<FxcastServer>,
    publisher: FxcastServer,
    /// A subscribe token of the cluster's signing keys.
    token: String,
    _dir: tempfile::TempDir,
    nats: NatsServer,
}

impl Cluster {
    /// nats-server with JetStream, the publisher, then a serving node per
    /// share of `shares`, pinned to `cpus`.
    async fn start(
        compare: &Compare,
        shares: &[usize],
        cpus: Option<&str>,
    ) -> anyhow::Result<Self> {
        let nats = NatsServer::start_jetstream(shares.len() + 1, cpus)?;
        let dir = tempfile::tempdir().context("cannot create the cluster's directory")?;
        let keys = dir.path().join("signing-keys.json");
        let engine = [
            "--transport".to_owned(),
            "nats".to_owned(),
            "--nats-url".to_owned(),
            nats.url(),
            "--signing-keys".to_owned(),
            keys.display().to_string(),
        ];
        let api_key = FxcastServer::new_api_key();
        // First, alone: it writes the signing keys every node then reads.
        // Room for every node's forwarded orders beside its own clients.
        let publisher = FxcastServer::start_with(compare, shares.len(), cpus, &engine, &api_key)
            .context("the publisher")?;
        let mut node_args = engine.to_vec();
        node_args.extend([
            "--feed".to_owned(),
            "none".to_owned(),
            "--orders-upstream".to_owned(),
            format!("http://{}", publisher.grpc),
        ]);
        let mut nodes = Vec::with_capacity(shares.len());
        for (i, &share) in shares.iter().enumerate() {
            let node = FxcastServer::start_with(compare, share, cpus, &node_args, &api_key)
                .with_context(|| format!("serving node {}", i + 1))?;
            nodes.push(node);
        }
        let token = publisher.token().await?;
        Ok(Self {
            nodes,
            publisher,
            token,
            _dir: dir,
            nats,
        })
    }
}

/// CPU seconds used so far by every process of `pids` together; `None`
/// when one is unknown.
fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&pid| proc::cpu_seconds(pid)).sum()
}

/// One load generator's share of the subscribers.
struct Share<'a> {
    subcommand: &'static str,
    target: &'a str,
    connections: usize,
    /// Connections it opens at once: its part of `--ramp`.
    ramp: usize,
    server_pid: u32,
    sources: Sources,
}

/// An `fxcast loadtest ws|sse|grpc --wait-for-go` child; killed when
/// dropped.
struct LoadGenerator {
    child: spawn::Process,
    stdin: Option<ChildStdin>,
    opened: Option<mpsc::Receiver<Result<String, String>>>,
    stdout: Option<JoinHandle<String>>,
}

impl LoadGenerator {
    fn start(
        compare: &Compare,
        share: &Share<'_>,
        token: &str,
        cpus: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut command = spawn::pinned(cpus, &compare.fxcast);
        command
            .args(["loadtest", share.subcommand, "--target", share.target])
            .arg("--connections")
            .arg(share.connections.to_string())
            .arg("--symbols")
            .arg(compare.symbols.join(","))
            .arg("--duration")
            .arg(humantime::format_duration(compare.duration).to_string())
            .arg("--ramp")
            .arg(share.ramp.to_string())
            .arg("--server-pid")
            .arg(share.server_pid.to_string())
            .arg("--per-source-address")
            .arg(share.sources.per_address.to_string())
            .arg("--first-source-address")
            .arg(share.sources.first.to_string())
            .args(["--wait-for-go", "--histogram", "--json"])
            // In the environment, not on a command line `ps` shows.
            .env("FXCAST_TOKEN", token)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn::Process::from(
            command
                .spawn()
                .with_context(|| format!("cannot start {}", compare.fxcast.display()))?,
        );
        let stderr = child
            .child()
            .stderr
            .take()
            .context("the load generator's stderr")?;
        let mut stdout = child
            .child()
            .stdout
            .take()
            .context("the load generator's stdout")?;
        // Read on a thread of its own: a report larger than the pipe must
        // not block the child.
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        Ok(Self {
            stdin: child.child().stdin.take(),
            opened: Some(spawn::drain_until(stderr, WAITING_FOR_GO)),
            stdout: Some(stdout),
            child,
        })
    }

    /// Waits until every subscriber of its share has opened (or failed).
    async fn opened(&mut self) -> anyhow::Result<()> {
        let opened = self.opened.take().context("already waited for")?;
        let waited = tokio::task::spawn_blocking(move || opened.recv_timeout(RAMP_WITHIN))
            .await
            .context("waiting for the load generator")?;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(log)) => bail!("exited before its subscribers opened:\n{log}"),
            Err(_) => bail!("its subscribers did not open within {RAMP_WITHIN:?}"),
        }
    }

    /// Starts its measured window.
    fn go(&mut self) -> anyhow::Result<()> {
        let mut stdin = self.stdin.take().context("already told to go")?;
        stdin
            .write_all(b"go\n")
            .context("cannot tell the load generator to go")
    }

    /// Its report, once it has exited.
    async fn report(&mut self) -> anyhow::Result<Report> {
        let stdout = self.stdout.take().context("already reported")?;
        let text = tokio::time::timeout(
            REPORT_WITHIN,
            tokio::task::spawn_blocking(move || stdout.join()),
        )
        .await
        .with_context(|| format!("no report within {REPORT_WITHIN:?} of the window's end"))?
        .context("reading the load generator's report")?
        .map_err(|_| anyhow::anyhow!("the thread reading the report panicked"))?;
        let status = self
            .child
            .child()
            .wait()
            .context("waiting for the load generator")?;
        if !status.success() {
            bail!("exited with {status}");
        }
        serde_json::from_str(&text)
            .with_context(|| format!("the load generator's report is not a report: {text:.200}"))
    }
}

/// One report of the load generators' `reports`: deliveries, subscribers
/// and disconnects summed, latencies from their histograms added up,
/// memory over the serving nodes; server CPU the nodes' (each measured by
/// its load generator) and `engine_cpu` (the publisher's and nats-server's).
///
/// # Errors
/// When a report has no histogram, or a bad one.
fn merge(
    reports: &[Report],
    connections: usize,
    engine_cpu: Option<f64>,
) -> anyhow::Result<Report> {
    let mut latencies = histogram::new_histogram();
    for report in reports {
        let buckets = report
            .latency_histogram
            .as_deref()
            .context("a load generator sent no latency histogram")?;
        histogram::add_buckets(&mut latencies, buckets)?;
    }
    let nodes_cpu: Option<f64> = reports.iter().map(|r| r.server_cpu_s).sum();
    let cpu = nodes_cpu
        .zip(engine_cpu)
        .map(|(nodes, engine)| nodes + engine);
    let connected: usize = reports.iter().map(|r| r.connected).sum();
    let messages: u64 = reports.iter().map(|r| r.messages).sum();
    let rss_before: Option<u64> = reports.iter().map(|r| r.server_rss_before_kib).sum();
    let rss_connected: Option<u64> = reports.iter().map(|r| r.server_rss_connected_kib).sum();
    Ok(Report {
        interface: reports
            .first()
            .map_or_else(String::new, |r| r.interface.clone()),
        connections,
        connected,
        failed: reports.iter().map(|r| r.failed).sum(),
        duration_s: reports.iter().map(|r| r.duration_s).fold(0.0, f64::max),
        messages,
        // Each over its own window; the windows are the same one.
        messages_per_s: reports.iter().map(|r| r.messages_per_s).sum(),
        latency_us: Percentiles::of(&latencies),
        server_rss_before_kib: rss_before,
        server_rss_connected_kib: rss_connected,
        server_kib_per_connection: rates::kib_per_connection(rss_before, rss_connected, connected),
        server_cpu_s: cpu,
        server_cpu_s_per_million: rates::per_million(cpu, messages),
        load_generator_cpu_s: reports.iter().map(|r| r.load_generator_cpu_s).sum(),
        disconnects: reports.iter().map(|r| r.disconnects).sum(),
        first_failure: reports.iter().find_map(|r| r.first_failure.clone()),
        first_disconnect: reports.iter().find_map(|r| r.first_disconnect.clone()),
        latency_histogram: None,
    })
}
