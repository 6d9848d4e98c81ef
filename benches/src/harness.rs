//! The harness of the criterion benches: a fixture implements [`Bench`]
//! (its cases, how to start one, its timed round, how to stop), and
//! [`main`] runs every case for criterion and then, under `cargo bench`,
//! for the percentile pass (see [`crate::percentiles`]). Fan-out fixtures
//! count their receivers with [`Arrivals`].

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use criterion::{BenchmarkGroup, BenchmarkId, Criterion, measurement::WallTime};
use tokio::{runtime::Runtime, sync::Notify};

use crate::{LatencySummary, PercentilePass};

/// The runtime the benches use unless a case asks for another: two workers
/// (this machine has two cores) shared by server, clients and the timing
/// task.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A bench fixture: one started case whose timed operation runs round after
/// round.
pub trait Bench: Sized + Send + Sync + 'static {
    /// The criterion group of every case.
    const GROUP: &'static str;
    /// What tells the cases apart.
    type Case: Copy;

    /// Every case, in the order they run.
    fn cases() -> Vec<Self::Case>;

    /// The case's benchmark function and parameter (its id in the group).
    fn id(case: Self::Case) -> (&'static str, String);

    /// Starts the fixture of `case` (on its runtime).
    fn start(case: Self::Case) -> impl Future<Output = Self>;

    /// Runs the timed operation once and returns its time.
    fn round(&self) -> impl Future<Output = Duration> + Send;

    /// Stops the fixture.
    fn stop(self) -> impl Future<Output = ()>;

    /// The runtime the case runs on.
    fn runtime(_case: Self::Case) -> Runtime {
        runtime()
    }

    /// Criterion's sample size for the case (`None`: criterion's own).
    fn sample_size(_case: Self::Case) -> Option<usize> {
        None
    }

    /// How the percentile pass names the case with full id `id`.
    fn label(_case: Self::Case, id: &str) -> String {
        id.to_owned()
    }
}

/// `group/function/parameter`.
fn full_id<B: Bench>(case: B::Case) -> String {
    let (function, parameter) = B::id(case);
    format!("{}/{function}/{parameter}", B::GROUP)
}

/// A bench binary's `main`: criterion over every case of `B` (2 s warm-up,
/// 5 s measurement), then the percentile pass when it should run.
pub fn main<B: Bench>() {
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group(B::GROUP);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(5));
    for case in B::cases() {
        if let Some(size) = B::sample_size(case) {
            group.sample_size(size);
        }
        let (function, parameter) = B::id(case);
        with_fixture::<B>(case, |rt, fixture| {
            bench_case(
                &mut group,
                BenchmarkId::new(function, parameter),
                rt,
                fixture,
            );
        });
    }
    group.finish();
    criterion.final_summary();
    if let Some(pass) = PercentilePass::from_env_and_args() {
        pass.print_heading(B::GROUP);
        for case in B::cases() {
            let id = full_id::<B>(case);
            if pass.wants(&id) {
                with_fixture::<B>(case, |rt, fixture| {
                    percentile_case(rt, &pass, &B::label(case, &id), fixture);
                });
            }
        }
    }
}

/// Starts the fixture of `case` on its runtime, runs `f` with it and stops it.
fn with_fixture<B: Bench>(case: B::Case, f: impl FnOnce(&Runtime, &Arc<B>)) {
    let rt = B::runtime(case);
    let fixture = Arc::new(rt.block_on(B::start(case)));
    f(&rt, &fixture);
    let fixture = Arc::into_inner(fixture).expect("no bench task holds the fixture");
    rt.block_on(fixture.stop());
}

/// One criterion case: each sample runs its rounds on the runtime's workers
/// (not on the bench thread) and reports their summed time.
fn bench_case<B: Bench>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    rt: &Runtime,
    fixture: &Arc<B>,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let fixture = Arc::clone(fixture);
            rt.block_on(rt.spawn(async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += fixture.round().await;
                }
                total
            }))
            .expect("bench task")
        });
    });
}

/// One case of the percentile pass: `pass.warmup` untimed rounds, then
/// `pass.samples` rounds timed one by one; prints their distribution as `id`.
fn percentile_case<B: Bench>(rt: &Runtime, pass: &PercentilePass, id: &str, fixture: &Arc<B>) {
    let (warmup, samples) = (pass.warmup, pass.samples);
    let fixture = Arc::clone(fixture);
    let mut latencies = rt
        .block_on(rt.spawn(async move {
            for _ in 0..warmup {
                fixture.round().await;
            }
            let mut latencies = Vec::with_capacity(samples);
            for _ in 0..samples {
                latencies.push(fixture.round().await);
            }
            latencies
        }))
        .expect("percentile task");
    let summary = LatencySummary::from_samples(&mut latencies).expect("samples");
    pass.print(id, &summary);
}

/// How many of a round's receivers have its message: each receiver task
/// calls [`Arrivals::arrive`], and the one that completes the count wakes
/// the timing task waiting in [`Arrivals::all`].
#[derive(Debug)]
pub struct Arrivals {
    expected: usize,
    count: AtomicUsize,
    done: Notify,
}

impl Arrivals {
    /// Arrivals of `expected` receivers per round.
    pub fn new(expected: usize) -> Self {
        Self {
            expected,
            count: AtomicUsize::new(0),
            done: Notify::new(),
        }
    }

    /// Starts a round. The previous round's last arrival happened before its
    /// wake-up, so no receiver touches the count concurrently with this.
    pub fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
    }

    /// One receiver has the round's message.
    pub fn arrive(&self) {
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.expected {
            self.done.notify_one();
        }
    }

    /// Waits until every receiver has the round's message.
    pub async fn all(&self) {
        self.done.notified().await;
    }

    /// Receivers that have the current round's message so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}
