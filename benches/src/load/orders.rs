//! PlaceOrder load: keeps [`OrdersLoad::concurrency`] PlaceOrder calls in
//! flight (each a new order, alternating buy and sell at the current ask/bid
//! with its `rate_id`), for the warm-up and then the measured duration, and
//! reports what completed in the measured window. Every order goes through
//! the server's whole pipeline, including the durable journal.
//!
//! Closed loop by default: each worker sends its next order when the last
//! one is answered, which measures throughput at that concurrency. With a
//! [`Schedule::rate`] of R it is open loop: order i is due at
//! `start + i/R` and its latency counts from that intended time, so a
//! server that falls behind shows the queueing delay instead of hiding it
//! (no coordinated omission); the concurrency then caps the orders in
//! flight.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use fxcast_proto::{
    Authed,
    v1::{
        GetLatestRateRequest, Order, OrderStatus, PlaceOrderRequest, Rate, Side,
        StreamRatesRequest, order_service_client::OrderServiceClient,
        rate_service_client::RateServiceClient, stream_rates_response,
    },
};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::{
    Dialer,
    histogram::{Percentiles, ms, new_histogram},
    proc, status_error,
};

/// How often the load generator refreshes the price it deals at.
const PRICE_REFRESH: Duration = Duration::from_millis(20);

/// What to load a server with.
#[derive(Debug, Clone)]
pub struct OrdersLoad {
    /// gRPC address of the server under test.
    pub target: String,
    /// Orders in flight at once.
    pub concurrency: usize,
    /// HTTP/2 connections the orders are spread over.
    pub connections: usize,
    /// When orders are sent and which are measured.
    pub schedule: Schedule,
    /// Symbol to trade.
    pub symbol: String,
    /// Quantity of every order (a decimal string).
    pub quantity: String,
    /// Server process whose memory and CPU time to report (`None`: a local
    /// `fxcast serve`).
    pub server_pid: Option<u32>,
}

/// When an orders load sends and measures.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Load applied before measuring (not counted).
    pub warmup: Duration,
    /// How long to measure.
    pub duration: Duration,
    /// Open loop: orders per second on a fixed schedule (`None`: closed loop).
    pub rate: Option<u32>,
}

impl OrdersLoad {
    /// Refuses a load that cannot run.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.concurrency == 0 || self.connections == 0 || self.schedule.duration.is_zero() {
            bail!("--concurrency, --connections and --duration must be positive");
        }
        Ok(())
    }
}

/// What one worker (or all of them) saw in the measured window.
struct Tally {
    latencies_us: Histogram<u64>,
    outcomes: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latencies_us: new_histogram(),
            outcomes: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }
}

impl Tally {
    fn record(&mut self, latency: Duration, result: Result<Order, tonic::Status>) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies_us.saturating_record(micros.max(1));
        match result {
            Ok(order) => *self.outcomes.entry(outcome(&order)).or_default() += 1,
            Err(status) => {
                let error = format!("{:?}: {}", status.code(), status.message());
                *self.errors.entry(error).or_default() += 1;
            }
        }
    }

    fn merge(&mut self, other: Self) -> anyhow::Result<()> {
        self.latencies_us
            .add(&other.latencies_us)
            .context("merging latency histograms")?;
        for (k, v) in other.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        Ok(())
    }
}

/// `FILLED`, or the reject reason (`PRICE_MOVED`, ...).
fn outcome(order: &Order) -> String {
    match order.status() {
        OrderStatus::Rejected => order
            .reject_reason()
            .as_str_name()
            .trim_start_matches("REJECT_REASON_")
            .to_owned(),
        status => status
            .as_str_name()
            .trim_start_matches("ORDER_STATUS_")
            .to_owned(),
    }
}

/// The current rate of `symbol`, or the first one published when the
/// server has none yet (a server that has just started).
async fn first_rate(channel: &Authed, symbol: &str) -> anyhow::Result<Rate> {
    let mut stream = RateServiceClient::new(channel.clone())
        .stream_rates(StreamRatesRequest {
            symbols: vec![symbol.to_owned()],
            ..Default::default()
        })
        .await
        .map_err(|s| status_error(&s).context("cannot stream the current rate"))?
        .into_inner();
    let wait = Duration::from_secs(30);
    loop {
        let message = tokio::time::timeout(wait, stream.message())
            .await
            .map_err(|_| anyhow::anyhow!("no rate of {symbol} was published within {wait:?}"))?
            .map_err(|s| status_error(&s).context("the rate stream failed"))?
            .ok_or_else(|| anyhow::anyhow!("the server ended the rate stream"))?;
        if let Some(stream_rates_response::Event::Rate(rate)) = message.event {
            return Ok(rate);
        }
    }
}

/// The latest rate of `symbol`, refreshed every [`PRICE_REFRESH`] by a
/// background task until it is dropped.
struct LivePrice {
    rate: Arc<RwLock<Rate>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl LivePrice {
    async fn start(channel: &Authed, symbol: &str) -> anyhow::Result<Self> {
        let rate = Arc::new(RwLock::new(first_rate(channel, symbol).await?));
        let mut client = RateServiceClient::new(channel.clone());
        let request = GetLatestRateRequest {
            symbol: symbol.to_owned(),
        };
        let refresher = tokio::spawn({
            let rate = Arc::clone(&rate);
            async move {
                loop {
                    tokio::time::sleep(PRICE_REFRESH).await;
                    if let Ok(fresh) = client.get_latest_rate(request.clone()).await {
                        *rate.write().unwrap_or_else(|e| e.into_inner()) = fresh.into_inner();
                    }
                }
            }
        });
        Ok(Self { rate, refresher })
    }

    /// The price to deal at on `side` and the `rate_id` it came from.
    fn quote(&self, side: Side) -> (String, String) {
        let rate = self.rate.read().unwrap_or_else(|e| e.into_inner());
        let price = if side == Side::Buy {
            rate.ask.clone()
        } else {
            rate.bid.clone()
        };
        (price, rate.rate_id.clone())
    }
}

impl Drop for LivePrice {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

/// When orders are sent and which are counted.
#[derive(Debug)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
    /// Open loop: the next order's number, shared by the workers, and the
    /// interval between orders; order i is due at start + i × interval.
    schedule: Option<(AtomicU64, Duration)>,
}

impl Window {
    fn new(schedule: Schedule) -> Self {
        let start = Instant::now();
        let measure_from = start + schedule.warmup;
        Self {
            start,
            measure_from,
            end: measure_from + schedule.duration,
            schedule: schedule
                .rate
                .map(|rate| (AtomicU64::new(0), Duration::from_secs(1) / rate.max(1))),
        }
    }

    /// When the next order should leave: now (closed loop), or its slot in
    /// the schedule (open loop), waiting for it if early. `None` once the
    /// load is over: closed loop when the window has ended, open loop when
    /// every order scheduled before the end has been sent, however late.
    async fn next_send(&self) -> Option<Instant> {
        let Some((next, interval)) = &self.schedule else {
            return (Instant::now() < self.end).then(Instant::now);
        };
        let slot = next.fetch_add(1, Ordering::Relaxed);
        let due = self.start + *interval * u32::try_from(slot).unwrap_or(u32::MAX);
        if due >= self.end {
            return None;
        }
        tokio::time::sleep_until(due.into()).await;
        Some(due)
    }

    /// Whether `instant` falls in the measured window.
    fn measuring(&self, instant: Instant) -> bool {
        instant >= self.measure_from && instant <= self.end
    }

    /// Whether an order sent at `intended` and answered at `done` counts.
    /// Closed loop: what completed in the window. Open loop: what was due in
    /// the window, however long it took (dropping the slow ones would hide
    /// exactly what the open loop measures).
    fn counts(&self, intended: Instant, done: Instant) -> bool {
        if self.schedule.is_some() {
            intended >= self.measure_from && intended < self.end
        } else {
            self.measuring(done)
        }
    }
}

/// One of the concurrent senders.
struct Worker {
    number: usize,
    client: OrderServiceClient<Authed>,
    price: Arc<LivePrice>,
    window: Arc<Window>,
    symbol: String,
    quantity: String,
    /// Unique per run, so every order of every run is new.
    run: u128,
    /// Orders answered within the measured window (the denominator of the
    /// server's CPU per order), shared by the workers.
    completed: Arc<AtomicU64>,
}

impl Worker {
    async fn run(mut self) -> Tally {
        let mut tally = Tally::default();
        let mut n = 0u64;
        while let Some(intended) = self.window.next_send().await {
            n += 1;
            let request = self.order(n);
            let result = self.client.place_order(request).await;
            let done = Instant::now();
            if self.window.measuring(done) {
                self.completed.fetch_add(1, Ordering::Relaxed);
            }
            if self.window.counts(intended, done) {
                let result = result.map(tonic::Response::into_inner);
                tally.record(done.duration_since(intended), result);
            }
        }
        tally
    }

    /// The worker's `n`th order: buys and sells alternate.
    fn order(&self, n: u64) -> PlaceOrderRequest {
        let side = if (n + self.number as u64).is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell
        };
        let (price, rate_id) = self.price.quote(side);
        PlaceOrderRequest {
            client_order_id: format!("lt-{:x}-{}-{n}", self.run, self.number),
            symbol: self.symbol.clone(),
            side: side as i32,
            quantity: self.quantity.clone(),
            price,
            rate_id,
            tolerance: String::new(),
        }
    }
}

/// Runs `load` with `token` (scopes `orders:place` and
/// `rates:subscribe=<symbol>`) and reports what completed.
pub async fn run(load: &OrdersLoad, token: &str) -> anyhow::Result<OrdersReport> {
    load.check()?;
    let dialer = Dialer::new(&load.target, token)?;
    let mut channels = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        channels.push(dialer.connect().await?);
    }
    let price = Arc::new(LivePrice::start(&channels[0], &load.symbol).await?);
    eprintln!(
        "fxcast loadtest orders: {} {} x {}, {} in flight over {} connections, {:?} after {:?} warm-up",
        load.target,
        load.symbol,
        load.quantity,
        load.concurrency,
        load.connections,
        load.schedule.duration,
        load.schedule.warmup
    );
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let server_pid = proc::server(load.server_pid);
    let rss_before = proc::rss(server_pid);
    let window = Arc::new(Window::new(load.schedule));
    let completed = Arc::new(AtomicU64::new(0));
    let cpu = tokio::spawn(server_cpu(Arc::clone(&window), server_pid));
    let mut workers = JoinSet::new();
    for number in 0..load.concurrency {
        let worker = Worker {
            number,
            client: OrderServiceClient::new(channels[number % channels.len()].clone()),
            price: Arc::clone(&price),
            window: Arc::clone(&window),
            symbol: load.symbol.clone(),
            quantity: load.quantity.clone(),
            run,
            completed: Arc::clone(&completed),
        };
        workers.spawn(worker.run());
    }
    let mut total = Tally::default();
    while let Some(tally) = workers.join_next().await {
        total.merge(tally.context("a load worker failed")?)?;
    }
    drop(price);
    let cpu = cpu.await.context("the CPU sampler failed")?;
    let server = ServerUse {
        rss_before_kib: rss_before,
        rss_after_kib: proc::rss(server_pid),
        cpu_s: cpu,
        completed: completed.load(Ordering::Relaxed),
    };
    OrdersReport::new(load, total, &server)
}

/// The server's CPU time (user + system) over the measured window, sampled
/// from /proc at its start and end; `None` without a server to watch.
async fn server_cpu(window: Arc<Window>, pid: Option<u32>) -> Option<f64> {
    pid?;
    tokio::time::sleep_until(window.measure_from.into()).await;
    let before = proc::cpu(pid)?;
    tokio::time::sleep_until(window.end.into()).await;
    Some(proc::cpu(pid)? - before)
}

/// What the server used during a load.
struct ServerUse {
    rss_before_kib: Option<u64>,
    rss_after_kib: Option<u64>,
    /// CPU seconds over the measured window.
    cpu_s: Option<f64>,
    /// Orders answered within the measured window.
    completed: u64,
}

/// What an orders load measured.
#[derive(Debug)]
pub struct OrdersReport {
    load: OrdersLoad,
    orders: u64,
    orders_per_s: u64,
    outcomes: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    latency_us: Percentiles,
    server_rss_before_kib: Option<u64>,
    server_rss_after_kib: Option<u64>,
    server_cpu_s: Option<f64>,
    /// Server CPU time per order answered in the measured window, in µs.
    server_cpu_us_per_order: Option<f64>,
}

impl OrdersReport {
    fn new(load: &OrdersLoad, total: Tally, server: &ServerUse) -> anyhow::Result<Self> {
        let latencies = total.latencies_us;
        if latencies.is_empty() {
            bail!("no order completed within the measured window");
        }
        let orders = latencies.len();
        let window_us = u64::try_from(load.schedule.duration.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Ok(Self {
            load: load.clone(),
            orders,
            orders_per_s: orders * 1_000_000 / window_us,
            outcomes: total.outcomes,
            errors: total.errors,
            latency_us: Percentiles::of(&latencies),
            server_rss_before_kib: server.rss_before_kib,
            server_rss_after_kib: server.rss_after_kib,
            server_cpu_s: server.cpu_s,
            server_cpu_us_per_order: server
                .cpu_s
                .filter(|_| server.completed > 0)
                .map(|s| s * 1e6 / server.completed as f64),
        })
    }

    /// The report as `fxcast loadtest orders --json` prints it.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "interface": "orders",
            "concurrency": self.load.concurrency,
            "connections": self.load.connections,
            "duration_s": self.load.schedule.duration.as_secs_f64(),
            "mode": if self.load.schedule.rate.is_some() { "open_loop" } else { "closed_loop" },
            "target_rate_per_s": self.load.schedule.rate,
            "orders": self.orders,
            "orders_per_s": self.orders_per_s,
            "outcomes": self.outcomes,
            "errors": self.errors,
            "latency_us": self.latency_us,
            "server_rss_before_kib": self.server_rss_before_kib,
            "server_rss_after_kib": self.server_rss_after_kib,
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_us_per_order": self.server_cpu_us_per_order,
        })
    }

    /// Prints the report as text; an error when any order failed.
    pub fn print(&self) -> anyhow::Result<()> {
        println!(
            "orders      {} in {:?} = {} orders/s",
            self.orders, self.load.schedule.duration, self.orders_per_s
        );
        let outcomes: Vec<String> = self
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("outcomes    {}", outcomes.join("  "));
        let l = &self.latency_us;
        println!(
            "latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}{}",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            if self.load.schedule.rate.is_some() {
                " (from each order's intended send time)"
            } else {
                ""
            },
        );
        if let (Some(cpu), Some(per_order)) = (self.server_cpu_s, self.server_cpu_us_per_order) {
            println!("server CPU  {per_order:.1} µs/order ({cpu:.2} s user+sys over the window)");
        }
        if let (Some(before), Some(after)) = (self.server_rss_before_kib, self.server_rss_after_kib)
        {
            println!("server RSS  {before} KiB before, {after} KiB after");
        }
        if !self.errors.is_empty() {
            for (error, n) in &self.errors {
                println!("error       {n} x {error}");
            }
            bail!("{} orders failed", self.errors.values().sum::<u64>());
        }
        Ok(())
    }
}
