//! Prometheus metrics of the gateway, served as text at `/metrics`.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};

/// Labels of HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) method: String,
    pub(crate) route: String,
    pub(crate) status: u16,
}

/// Labels of order metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OrderLabels {
    pub(crate) status: String,
}

/// Labels of per-symbol metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SymbolLabels {
    pub(crate) symbol: String,
}

/// Labels of streaming connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub(crate) kind: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 us .. ~3.3 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

/// Every gateway metric. A cheap `Clone` handle.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub(crate) ticks_received: Counter,
    pub(crate) connections: Family<KindLabels, Gauge>,
    pub(crate) subscriptions: Gauge,
    pub(crate) deliveries: Family<KindLabels, Counter>,
    pub(crate) conflations: Family<KindLabels, Counter>,
    pub(crate) slow_consumer_disconnects: Family<KindLabels, Counter>,
    pub(crate) orders: Family<OrderLabels, Counter>,
    pub(crate) symbol_stale: Family<SymbolLabels, Gauge>,
    pub(crate) symbol_sequence: Family<SymbolLabels, Gauge>,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) request_seconds: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// The HTTP listener's counters, copied into the three below on render.
    pub(crate) listener: Arc<std::sync::OnceLock<Arc<fxcast_listener::ListenerStats>>>,
    listener_open: Gauge,
    listener_cap_reached: Counter,
    listener_timed_out: Counter,
    momento_planned_ops: Family<KindLabels, Gauge<f64, AtomicU64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Registers each metric under the gateway's prefix as it is made.
struct Registrar(Registry);

impl Registrar {
    /// A new metric, registered as `name`.
    fn add<M: Metric + Clone + Default>(&mut self, name: &str, help: &str) -> M {
        self.register(name, help, M::default())
    }

    /// `metric`, registered as `name`.
    fn register<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.0.register(name, help, metric.clone());
        metric
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registrar(Registry::with_prefix("fxcast_gateway"));
        Self {
            ticks_received: r.add("ticks_received", "Rate ticks received from the upstream"),
            connections: r.add(
                "connections",
                "Open streaming connections by kind (ws, sse)",
            ),
            subscriptions: r.add(
                "subscriptions",
                "Symbol subscriptions across WebSocket connections",
            ),
            deliveries: r.add("deliveries", "Rate messages delivered to clients"),
            conflations: r.add(
                "conflations",
                "Times a slow client was skipped ahead to the latest rate",
            ),
            slow_consumer_disconnects: r.add(
                "slow_consumer_disconnects",
                "Connections closed for staying behind",
            ),
            orders: r.add("orders", "Orders placed through the gateway by outcome"),
            symbol_stale: r.add(
                "symbol_stale",
                "1 while a symbol's feed is stale (or has no rate yet)",
            ),
            symbol_sequence: r.add("symbol_sequence", "Sequence of the latest rate per symbol"),
            requests: r.add("http_requests", "HTTP requests by route and status"),
            request_seconds: r.register(
                "http_request_duration_seconds",
                "HTTP request latency",
                Family::new_with_constructor(latency_histogram),
            ),
            listener_open: r.add(
                "listener_connections",
                "TCP connections open on the HTTP listener",
            ),
            listener_cap_reached: r.add(
                "listener_cap_reached",
                "Times the HTTP listener's connection cap (--max-connections) was reached",
            ),
            listener_timed_out: r.add(
                "listener_timed_out",
                "HTTP connections closed by the header or idle timeout",
            ),
            momento_planned_ops: r.add(
                "momento_planned_ops_per_second",
                "Momento operations per second the transport settings spend on rates, by kind \
                 (publishes, cache_writes, deliveries_per_subscriber)",
            ),
            listener: Arc::default(),
            registry: Arc::new(r.0),
        }
    }
}

impl Metrics {
    /// Records the Momento operations the configuration plans to spend.
    pub(crate) fn set_momento_plan(&self, plan: &[(&'static str, f64)]) {
        for &(kind, ops) in plan {
            self.momento_planned_ops
                .get_or_create(&KindLabels { kind })
                .set(ops);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(stats) = self.listener.get() {
            self.listener_open
                .set(i64::try_from(stats.open()).unwrap_or(i64::MAX));
            let catch_up = |counter: &Counter, total: u64| {
                counter.inc_by(total.saturating_sub(counter.get()));
            };
            catch_up(&self.listener_cap_reached, stats.cap_reached());
            catch_up(&self.listener_timed_out, stats.timed_out());
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// One streaming connection's handles on its kind's metrics, looked up once
/// rather than per frame. Counts the connection as open while it lives.
pub(crate) struct ConnectionMetrics {
    /// Rates delivered.
    pub(crate) deliveries: Counter,
    /// Lags (skips to the latest rate).
    pub(crate) conflations: Counter,
    /// Closes for staying behind.
    pub(crate) slow_consumer_disconnects: Counter,
    open: Gauge,
}

impl ConnectionMetrics {
    /// The metrics of a connection of `kind` (`ws`, `sse`), now open.
    pub(crate) fn new(metrics: &Metrics, kind: &'static str) -> Self {
        let labels = KindLabels { kind };
        let open = metrics.connections.get_or_create(&labels).clone();
        open.inc();
        Self {
            deliveries: metrics.deliveries.get_or_create(&labels).clone(),
            conflations: metrics.conflations.get_or_create(&labels).clone(),
            slow_consumer_disconnects: metrics
                .slow_consumer_disconnects
                .get_or_create(&labels)
                .clone(),
            open,
        }
    }
}

impl Drop for ConnectionMetrics {
    fn drop(&mut self) {
        self.open.dec();
    }
}
