//! Publish-to-receive latency of the pub/sub transports.
//!
//! Group `transport_publish_to_receive`, one benchmark function per backend
//! (and variant), parameterised by the number of subscribers, so backends
//! added later (Momento) land in the same group and criterion compares them:
//!
//! - `memory/{1,100,1000}`: [`MemoryTransport`], 100-byte payload, 2-worker
//!   multi-threaded runtime;
//! - `memory-1KiB/1`: the same with a 1,024-byte payload;
//! - `memory-current-thread/{1,1000}`: a current-thread runtime; with one
//!   subscriber the cheapest wake-up path, with 1,000 the single-threaded
//!   baseline of the fan-out;
//! - `momento/{1,100,1000}`: [`MomentoTransport`] through momento-local started
//!   in the same runtime on loopback (Momento's gRPC protocol end to end:
//!   SDK publish, server fan-out, the transport's one subscription per topic
//!   fanned out locally), unpaced, 100-byte payload. Server and client share
//!   the two cores, so this is the protocol's cost, not a network's;
//! - `momento-1KiB/1`: the same with a 1,024-byte payload;
//! - `nats/{1,100,1000}`: [`NatsTransport`] on a local `nats-server` with
//!   JetStream (Debian's package, started by the bench on a free loopback
//!   port with its own store, `fxcast_testkit::NatsServer`): the publish
//!   waits for the stream's acknowledgement, delivery comes through the
//!   transport's one consumer per topic fanned out locally, 100-byte
//!   payload;
//! - `nats-1KiB/1`: the same with a 1,024-byte payload;
//! - `redis/{1,100,1000}`: [`RedisTransport`] on a local `redis-server`
//!   (Debian's package, free loopback port, append-only file synced every
//!   second, `fxcast_testkit::RedisServer`): the publish is the transport's
//!   script (stream append and pub/sub publish), delivery its one channel
//!   subscription per topic fanned out locally, 100-byte payload;
//! - `redis-1KiB/1`: the same with a 1,024-byte payload.
//!
//! Every broker case runs the real backend the application uses, so the
//! numbers are what `--transport nats|redis` costs; the broker shares the
//! two cores with the bench.
//!
//! Every subscriber is its own spawned task reading its [`Subscription`]. One
//! iteration is timed from just before `publish` until the *last* subscriber
//! has received that message: each subscriber task increments a shared
//! counter and the one that completes the count wakes the publishing task
//! (`fxcast_benches::harness::Arrivals`). The timed span therefore also
//! contains that final wake-up of the publishing task (one cross-task
//! hand-off), which a real consumer would not pay; it is the same for every
//! backend.
//!
//! Only one message is in flight at a time, so this measures latency, not
//! throughput. After criterion, a percentile pass (see `fxcast_benches`)
//! times 10,000 individual iterations per case and prints p50/p90/p99/max.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use fxcast_benches::harness::{self, Arrivals, Bench};
use fxcast_momento_local::{MomentoLocalConfig, serve};
use fxcast_testkit::{NatsServer, RedisServer};
use fxcast_transport::{
    Delivery, MemoryTransport, Subscription, Transport,
    momento::{MomentoConfig, MomentoTransport},
    nats::{NatsConfig, NatsTransport},
    redis::{RedisConfig, RedisTransport},
};
use tokio::{runtime::Runtime, task::JoinHandle};

const GROUP: &str = "transport_publish_to_receive";
const TOPIC: &str = "rates.USD_JPY";
/// A round that takes longer lost its message (checked by a watchdog, so
/// rounds carry no timer of their own).
const ROUND_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// Multi-threaded runtime with two workers (this machine has two cores).
    MultiThread2,
    /// Current-thread runtime: publisher and subscriber share one thread.
    CurrentThread,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    function: &'static str,
    subscribers: usize,
    payload: usize,
    flavor: Flavor,
    sample_size: usize,
}

const CASES: &[Case] = &[
    Case {
        function: "memory",
        subscribers: 1,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 100,
    },
    Case {
        function: "memory-1KiB",
        subscribers: 1,
        payload: 1024,
        flavor: Flavor::MultiThread2,
        sample_size: 100,
    },
    Case {
        function: "memory",
        subscribers: 100,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 100,
    },
    Case {
        function: "memory",
        subscribers: 1000,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "memory-current-thread",
        subscribers: 1,
        payload: 100,
        flavor: Flavor::CurrentThread,
        sample_size: 100,
    },
    // Single-threaded baseline for the 1,000-subscriber fan-out: shows what
    // the second worker adds or costs.
    Case {
        function: "memory-current-thread",
        subscribers: 1000,
        payload: 100,
        flavor: Flavor::CurrentThread,
        sample_size: 50,
    },
    Case {
        function: "momento",
        subscribers: 1,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "momento-1KiB",
        subscribers: 1,
        payload: 1024,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "momento",
        subscribers: 100,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "momento",
        subscribers: 1000,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 20,
    },
    Case {
        function: "nats",
        subscribers: 1,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "nats-1KiB",
        subscribers: 1,
        payload: 1024,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "nats",
        subscribers: 100,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "nats",
        subscribers: 1000,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 20,
    },
    Case {
        function: "redis",
        subscribers: 1,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "redis-1KiB",
        subscribers: 1,
        payload: 1024,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "redis",
        subscribers: 100,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 50,
    },
    Case {
        function: "redis",
        subscribers: 1000,
        payload: 100,
        flavor: Flavor::MultiThread2,
        sample_size: 20,
    },
];

/// The broker process a case runs against (a `NatsServer`, a
/// `RedisServer`), kept as long as its transport and killed when dropped.
type Broker = Option<Box<dyn std::any::Any + Send + Sync>>;

impl Case {
    /// Every backend of a case is built here, with the broker it needs.
    /// Must run inside the runtime: momento-local is served by it.
    async fn transport(&self) -> (Arc<dyn Transport>, Broker) {
        if self.function.starts_with("nats") {
            let server = NatsServer::start();
            let transport = NatsTransport::connect(NatsConfig {
                url: server.url(),
                ..NatsConfig::default()
            })
            .await
            .expect("connect to nats-server");
            return (Arc::new(transport), Some(Box::new(server)));
        }
        if self.function.starts_with("redis") {
            // Persisted as a production server would be: the append-only
            // file synced every second.
            let server = RedisServer::start_with(&["--appendfsync", "everysec"]);
            let transport = RedisTransport::connect(RedisConfig {
                url: server.url(),
                ..RedisConfig::default()
            })
            .await
            .expect("connect to redis-server");
            return (Arc::new(transport), Some(Box::new(server)));
        }
        if !self.function.starts_with("momento") {
            return (Arc::new(MemoryTransport::default()), None);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind momento-local");
        let addr = listener.local_addr().expect("momento-local address");
        let config = MomentoLocalConfig {
            caches: vec!["fxcast".to_owned()],
            ..MomentoLocalConfig::default()
        };
        tokio::spawn(serve(listener, config, std::future::pending()));
        let transport = MomentoTransport::connect(MomentoConfig {
            api_key: "bench".into(),
            endpoint: Some(format!("http://{addr}")),
            ..MomentoConfig::default()
        })
        .await
        .expect("connect to momento-local");
        (Arc::new(transport), None)
    }
}

fn runtime(flavor: Flavor) -> Runtime {
    match flavor {
        Flavor::MultiThread2 => harness::runtime(),
        Flavor::CurrentThread => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime"),
    }
}

/// `subscribers` subscriber tasks on one topic, and the means to time one
/// publish until all of them have it.
struct Fanout {
    transport: Arc<dyn Transport>,
    payload: Bytes,
    arrivals: Arc<Arrivals>,
    tasks: Vec<JoinHandle<()>>,
    /// Completed rounds and whether one is in flight, watched by `watchdog`.
    rounds: Arc<AtomicU64>,
    in_flight: Arc<AtomicBool>,
    watchdog: JoinHandle<()>,
    /// Dropped after the transport.
    broker: Broker,
}

impl Fanout {
    /// Subscribes and spawns the subscriber tasks; every subscription is live
    /// when this returns. Must run inside the runtime.
    async fn open(
        (transport, broker): (Arc<dyn Transport>, Broker),
        subscribers: usize,
        payload_len: usize,
    ) -> Self {
        let arrivals = Arc::new(Arrivals::new(subscribers));
        let mut tasks = Vec::with_capacity(subscribers);
        for _ in 0..subscribers {
            let subscription = transport.subscribe(TOPIC).await.expect("subscribe");
            tasks.push(tokio::spawn(subscriber(
                subscription,
                payload_len,
                Arc::clone(&arrivals),
            )));
        }
        assert_eq!(transport.local_subscribers(TOPIC), subscribers);
        let rounds = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicBool::new(false));
        let watchdog = tokio::spawn(watchdog(
            transport.name(),
            subscribers,
            Arc::clone(&rounds),
            Arc::clone(&in_flight),
            Arc::clone(&arrivals),
        ));
        Self {
            transport,
            payload: Bytes::from(vec![0x5a; payload_len]),
            arrivals,
            tasks,
            rounds,
            in_flight,
            watchdog,
            broker,
        }
    }
}

/// Ends the process when no round completes within [`ROUND_DEADLINE`]
/// while the bench runs: a lost message would otherwise hang it silently.
/// Between criterion's batches no round is in flight, so pauses there are
/// not mistaken for a loss.
async fn watchdog(
    transport: &'static str,
    subscribers: usize,
    rounds: Arc<AtomicU64>,
    in_flight: Arc<AtomicBool>,
    arrivals: Arc<Arrivals>,
) {
    let mut seen = rounds.load(Ordering::Relaxed);
    // Checks in a row that found a round in flight and none completed: two
    // mean a round has been stuck for at least one whole deadline.
    let mut stuck = 0;
    loop {
        tokio::time::sleep(ROUND_DEADLINE).await;
        let now = rounds.load(Ordering::Relaxed);
        stuck = if now == seen && in_flight.load(Ordering::Relaxed) {
            stuck + 1
        } else {
            0
        };
        if stuck >= 2 {
            let partial = arrivals.count();
            eprintln!(
                "{partial} of {subscribers} subscribers received the last message and no round completed for {ROUND_DEADLINE:?}: the {transport} transport lost it"
            );
            std::process::exit(1);
        }
        seen = now;
    }
}

async fn subscriber(mut subscription: Subscription, payload_len: usize, arrivals: Arc<Arrivals>) {
    while let Some(delivery) = subscription.next().await {
        match delivery {
            Delivery::Message(payload) => {
                debug_assert_eq!(payload.len(), payload_len);
                arrivals.arrive();
            }
            // Only one message is ever in flight, so a gap means the
            // transport is broken; the round would never complete.
            Delivery::Gap(gap) => {
                eprintln!("subscriber saw a gap during the benchmark: {gap}");
                std::process::exit(1);
            }
        }
    }
}

impl Bench for Fanout {
    const GROUP: &'static str = GROUP;
    type Case = &'static Case;

    fn cases() -> Vec<Self::Case> {
        CASES.iter().collect()
    }

    fn id(case: Self::Case) -> (&'static str, String) {
        (case.function, case.subscribers.to_string())
    }

    async fn start(case: Self::Case) -> Self {
        Self::open(case.transport().await, case.subscribers, case.payload).await
    }

    /// Publishes one message and returns the time until the last subscriber
    /// received it.
    async fn round(&self) -> Duration {
        self.arrivals.reset();
        self.in_flight.store(true, Ordering::Relaxed);
        let start = Instant::now();
        self.transport
            .publish(TOPIC, self.payload.clone())
            .await
            .expect("publish");
        self.arrivals.all().await;
        let elapsed = start.elapsed();
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.in_flight.store(false, Ordering::Relaxed);
        elapsed
    }

    /// Drops the transport and ends the subscriber tasks.
    async fn stop(self) {
        let Self {
            transport,
            tasks,
            watchdog,
            broker,
            ..
        } = self;
        watchdog.abort();
        drop(transport);
        // A broker client's subscriptions may outlive the transport handle
        // (async-nats keeps its connection while a subscriber exists), so end
        // the tasks rather than wait for their streams to close.
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        drop(broker);
    }

    fn runtime(case: Self::Case) -> Runtime {
        runtime(case.flavor)
    }

    fn sample_size(case: Self::Case) -> Option<usize> {
        Some(case.sample_size)
    }

    fn label(case: Self::Case, id: &str) -> String {
        format!("{id} ({} B)", case.payload)
    }
}

fn main() {
    harness::main::<Fanout>();
}
