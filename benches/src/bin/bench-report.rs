//! Builds `docs/BENCHMARKS.md` and its SVG plots from one run's results:
//! criterion's `estimates.json` files and the `fxcast loadtest --json`
//! outputs that `scripts/bench-report` collects.
//!
//! `bench-report --criterion target/criterion --results target/bench-results --out docs --commit <sha>`
//!
//! With `--only compare` it replaces just the section of `fxcast loadtest
//! compare` (`compare.json`) in the existing `BENCHMARKS.md`, so the
//! comparison can be rerun without the hour of criterion benches.

#![allow(missing_docs)]

use std::{
    collections::BTreeMap,
    error::Error,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use fxcast_benches::load::compare::Table;
use plotters::{coord::Shift, prelude::*};
use serde_json::Value;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

struct Args {
    criterion: PathBuf,
    results: PathBuf,
    out: PathBuf,
    commit: String,
    only_compare: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut map = BTreeMap::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        map.insert(flag, value);
    }
    let get = |k: &str, d: &str| map.get(k).cloned().unwrap_or_else(|| d.to_owned());
    Ok(Args {
        criterion: get("--criterion", "target/criterion").into(),
        results: get("--results", "target/bench-results").into(),
        out: get("--out", "docs").into(),
        commit: get("--commit", "unknown"),
        only_compare: match get("--only", "").as_str() {
            "" => false,
            "compare" => true,
            other => return Err(format!("--only {other}: only `compare` is known")),
        },
    })
}

/// One criterion benchmark: group, id (function/parameter), median ns and bounds.
struct Estimate {
    group: String,
    id: String,
    median_ns: f64,
    lower_ns: f64,
    upper_ns: f64,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Walks target/criterion for `new/estimates.json` (ids may be nested one or two levels).
fn criterion_estimates(root: &Path) -> Vec<Estimate> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir()
                && path
                    .file_name()
                    .is_some_and(|n| n != "report" && n != "base" && n != "change")
            {
                stack.push(path.clone());
            }
            if path.ends_with("new/estimates.json") {
                let Some(json) = read_json(&path) else {
                    continue;
                };
                let bench_dir = path
                    .parent()
                    .and_then(Path::parent)
                    .expect("new/ has a parent");
                let relative = bench_dir.strip_prefix(root).unwrap_or(bench_dir);
                let mut parts = relative.iter().map(|p| p.to_string_lossy().into_owned());
                let group = parts.next().unwrap_or_default();
                let id = parts.collect::<Vec<_>>().join("/");
                let median = &json["median"];
                found.push(Estimate {
                    group,
                    id,
                    median_ns: median["point_estimate"].as_f64().unwrap_or(f64::NAN),
                    lower_ns: median["confidence_interval"]["lower_bound"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                    upper_ns: median["confidence_interval"]["upper_bound"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                });
            }
        }
    }
    found.sort_by(|a, b| (&a.group, natural(&a.id)).cmp(&(&b.group, natural(&b.id))));
    found
}

/// Sort key that orders `memory/100` after `memory/20`.
fn natural(id: &str) -> (String, u64, String) {
    let (head, tail) = id.rsplit_once('/').unwrap_or((id, ""));
    match tail.parse::<u64>() {
        Ok(n) => (head.to_owned(), n, String::new()),
        Err(_) => (id.to_owned(), 0, String::new()),
    }
}

fn human_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn human_us(us: u64) -> String {
    if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// One case of a bench's percentile pass: full id and quantiles in µs.
struct Percentiles {
    id: String,
    samples: u64,
    /// `(label, µs)` for p50, p90, p99, p99.9 and max, in that order.
    quantiles: Vec<(&'static str, f64)>,
}

const QUANTILES: [(&str, &str); 5] = [
    ("p50", "p50"),
    ("p90", "p90"),
    ("p99", "p99"),
    ("p99.9", "p99.9"),
    ("max", "max"),
];

/// The `percentiles <id> n=… p50=1.23µs …` lines the bench binaries print
/// after criterion (captured by `scripts/bench-report` in `criterion.txt`).
fn percentile_lines(path: &Path) -> Vec<Percentiles> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<Percentiles> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("percentiles") {
            continue;
        }
        let Some(id) = words.next() else { continue };
        let fields: BTreeMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let micros = |key: &str| {
            fields
                .get(key)
                .and_then(|v| v.strip_suffix("µs"))
                .and_then(|v| v.parse::<f64>().ok())
        };
        let quantiles: Option<Vec<(&'static str, f64)>> = QUANTILES
            .iter()
            .map(|&(label, key)| micros(key).map(|v| (label, v)))
            .collect();
        let (Some(quantiles), Some(samples)) = (
            quantiles,
            fields.get("n").and_then(|n| n.parse::<u64>().ok()),
        ) else {
            continue;
        };
        // A later run of the same case replaces an earlier one.
        out.retain(|p| p.id != id);
        out.push(Percentiles {
            id: id.to_owned(),
            samples,
            quantiles,
        });
    }
    out
}

fn human_micros(us: f64) -> String {
    human_ns(us * 1000.0)
}

/// Load-test results keyed by interface, then connections (or concurrency).
fn loadtests(dir: &Path) -> BTreeMap<String, BTreeMap<u64, Value>> {
    let mut out: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(json) = read_json(&path) else {
            continue;
        };
        // `loadtest compare` has a section of its own.
        if json.get("rows").is_some() {
            continue;
        }
        let interface = json["interface"].as_str().unwrap_or("unknown").to_owned();
        // Open-loop order runs are keyed by their target rate, in a table of
        // their own.
        if interface == "orders"
            && let Some(rate) = json["target_rate_per_s"].as_u64()
        {
            out.entry("orders-open".to_owned())
                .or_default()
                .insert(rate, json);
            continue;
        }
        let n = json["connections"]
            .as_u64()
            .or_else(|| json["concurrency"].as_u64())
            .unwrap_or(0);
        let key = if interface == "orders" {
            json["concurrency"].as_u64().unwrap_or(n)
        } else {
            n
        };
        out.entry(interface).or_default().insert(key, json);
    }
    out
}

/// The y range of a log axis holding `values`: whole decades, so the axis
/// labels every one of them.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (min, max) = values.fold((f64::INFINITY, 1.0f64), |(min, max), v| {
        (min.min(v), max.max(v))
    });
    let low = 10f64.powf(min.max(0.01).log10().floor());
    let high = 10f64.powf(max.log10().ceil());
    (low, if high > low { high } else { low * 10.0 })
}

const COLORS: [RGBColor; 8] = [
    RGBColor(76, 141, 222),
    RGBColor(229, 83, 75),
    RGBColor(63, 185, 127),
    RGBColor(212, 167, 44),
    RGBColor(150, 110, 200),
    RGBColor(40, 40, 40),
    RGBColor(230, 120, 180),
    RGBColor(120, 180, 220),
];

/// A plot's drawing area.
type Root<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A white 760×420 SVG canvas at `path`.
fn canvas(path: &Path) -> Result<Root<'_>> {
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    Ok(root)
}

/// A chart on `root` captioned `title`, with the report's margins.
fn chart_on<'a, 'b>(root: &'a Root<'b>, title: &str) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    builder
}

/// A chart with logarithmic axes: whole numbers on x, reals on y.
type LogLogChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<LogCoord<u64>, LogCoord<f64>>>;

/// A log-log chart on `root`: x from 1 to twice `max_x`, y over `y_range`,
/// both axes described.
fn log_log_chart<'a, 'b>(
    root: &'a Root<'b>,
    title: &str,
    (max_x, x_desc): (u64, &str),
    ((min_y, max_y), y_desc): ((f64, f64), &str),
) -> Result<LogLogChart<'a, 'b>> {
    let mut chart = chart_on(root, title)
        .build_cartesian_2d((1u64..max_x * 2).log_scale(), (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

/// Draws `points` as a solid line with a legend entry `label`.
fn legend_line<'a, 'b, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
    points: Vec<(X::ValueType, Y::ValueType)>,
    color: RGBColor,
    label: String,
) -> Result<()>
where
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    chart
        .draw_series(LineSeries::new(points, color.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    Ok(())
}

/// Draws the legend at `position` and writes the plot.
fn finish<'a, 'b: 'a, X: Ranged, Y: Ranged>(
    root: &Root<'b>,
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<bool> {
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()?;
    Ok(true)
}

fn plot_transport(estimates: &[Estimate], path: &Path) -> Result<bool> {
    // Series per transport (function), x = subscribers.
    let mut series: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for e in estimates
        .iter()
        .filter(|e| e.group == "transport_publish_to_receive")
    {
        let (name, param) = e.id.rsplit_once('/').unwrap_or((&e.id, ""));
        if let Ok(n) = param.parse::<u64>() {
            series
                .entry(name.to_owned())
                .or_default()
                .push((n, e.median_ns / 1000.0));
        }
    }
    if series.is_empty() {
        return Ok(false);
    }
    let max_x = series
        .values()
        .flatten()
        .map(|p| p.0)
        .max()
        .unwrap_or(1)
        .max(2);
    let root = canvas(path)?;
    let mut chart = log_log_chart(
        &root,
        "Transport publish → receive (all subscribers served), median",
        (max_x, "subscribers"),
        (log_range(series.values().flatten().map(|p| p.1)), "µs"),
    )?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = points.clone();
        points.sort_by_key(|p| p.0);
        legend_line(&mut chart, points.clone(), color, name.clone())?;
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    finish(&root, &mut chart, SeriesLabelPosition::MiddleRight)
}

fn plot_connections(loads: &BTreeMap<String, BTreeMap<u64, Value>>, path: &Path) -> Result<bool> {
    let streams: Vec<(&String, &BTreeMap<u64, Value>)> = loads
        .iter()
        .filter(|(k, _)| !k.starts_with("orders"))
        .collect();
    if streams.is_empty() {
        return Ok(false);
    }
    let points = |runs: &BTreeMap<u64, Value>, q: &str| -> Vec<(u64, f64)> {
        runs.iter()
            .filter_map(|(n, v)| Some((*n, v["latency_us"][q].as_u64()? as f64 / 1000.0)))
            .collect()
    };
    let all: Vec<(u64, f64)> = streams
        .iter()
        .flat_map(|(_, r)| [points(r, "p50"), points(r, "p99")].concat())
        .collect();
    let max_x = all.iter().map(|p| p.0).max().unwrap_or(10).max(10);
    let root = canvas(path)?;
    let mut chart = log_log_chart(
        &root,
        "Delivery latency vs connections (solid p50, dashed p99)",
        (max_x, "connections"),
        (log_range(all.iter().map(|p| p.1)), "ms (publish → receipt)"),
    )?;
    for (i, (name, runs)) in streams.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let p50 = points(runs, "p50");
        let p99 = points(runs, "p99");
        legend_line(&mut chart, p50.clone(), color, format!("{name} p50 / p99"))?;
        chart.draw_series(p50.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        chart.draw_series(DashedLineSeries::new(
            p99.clone(),
            6,
            4,
            color.stroke_width(1),
        ))?;
        chart.draw_series(p99.iter().map(|p| Cross::new(*p, 4, color)))?;
    }
    finish(&root, &mut chart, SeriesLabelPosition::MiddleRight)
}

/// Latency percentiles (x: p50 … max) of several cases, one line each.
fn plot_percentiles(title: &str, cases: &[(String, &Percentiles)], path: &Path) -> Result<bool> {
    if cases.is_empty() {
        return Ok(false);
    }
    let values = || {
        cases
            .iter()
            .flat_map(|(_, p)| p.quantiles.iter().map(|q| q.1))
    };
    let (min_y, max_y) = log_range(values());
    let root = canvas(path)?;
    let mut chart = chart_on(&root, title).build_cartesian_2d(
        (0..QUANTILES.len() - 1).into_segmented(),
        (min_y..max_y).log_scale(),
    )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(QUANTILES.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                QUANTILES.get(*i).map_or(String::new(), |q| q.0.to_owned())
            }
            SegmentValue::Last => String::new(),
        })
        .x_desc("percentile of individually timed iterations")
        .y_labels(16)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("µs")
        .draw()?;
    for (i, (name, case)) in cases.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(SegmentValue<usize>, f64)> = case
            .quantiles
            .iter()
            .enumerate()
            .map(|(x, q)| (SegmentValue::CenterOf(x), q.1))
            .collect();
        legend_line(&mut chart, points.clone(), color, name.clone())?;
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    finish(&root, &mut chart, SeriesLabelPosition::UpperLeft)
}

/// The percentile cases of `group` whose id passes `keep`, named by the id
/// without the group.
fn cases_of<'a>(
    percentiles: &'a [Percentiles],
    group: &str,
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, &'a Percentiles)> {
    percentiles
        .iter()
        .filter_map(|p| {
            let id = p.id.strip_prefix(group)?.strip_prefix('/')?;
            keep(id).then(|| (id.to_owned(), p))
        })
        .collect()
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    format!(
        "{cores} × {model}, {:.1} GiB RAM",
        mem_kib as f64 / 1_048_576.0
    )
}

/// The report's heading: commit and machine.
fn write_heading(md: &mut String, args: &Args) -> std::fmt::Result {
    writeln!(md, "# fxcast benchmarks\n")?;
    writeln!(
        md,
        "Generated by `scripts/bench-report` (do not edit by hand; rerun it), except the analyses between the `hand-written` markers, which a rerun keeps as they are.\n"
    )?;
    writeln!(md, "- Commit: `{}`", args.commit)?;
    writeln!(md, "- Machine: {}", machine())?;
    writeln!(
        md,
        "- Server and load generators run on the same machine; latencies use one clock (same process for criterion, the system clock for load tests).\n"
    )
}

/// Draws every plot there are results for into `plots` and links it.
fn write_plots(
    md: &mut String,
    plots: &Path,
    estimates: &[Estimate],
    percentiles: &[Percentiles],
    loads: &BTreeMap<String, BTreeMap<u64, Value>>,
) -> Result<()> {
    if plot_transport(estimates, &plots.join("transport.svg"))? {
        writeln!(md, "![transport latency](bench/transport.svg)\n")?;
    }
    let transport_1 = cases_of(percentiles, "transport_publish_to_receive", |id| {
        id.ends_with("/1") && !id.contains("current-thread")
    });
    if plot_percentiles(
        "Transport publish → receive, 1 subscriber: latency percentiles",
        &transport_1,
        &plots.join("transport-percentiles.svg"),
    )? {
        writeln!(
            md,
            "![transport latency percentiles](bench/transport-percentiles.svg)\n"
        )?;
    }
    let interfaces_1 = cases_of(percentiles, "tick_to_client_e2e", |id| id.ends_with("/1"));
    if plot_percentiles(
        "Tick → client end to end, 1 client: latency percentiles per interface",
        &interfaces_1,
        &plots.join("interfaces-percentiles.svg"),
    )? {
        writeln!(
            md,
            "![interface latency percentiles](bench/interfaces-percentiles.svg)\n"
        )?;
    }
    if plot_connections(loads, &plots.join("connections.svg"))? {
        writeln!(md, "![latency vs connections](bench/connections.svg)\n")?;
    }
    Ok(())
}

/// A table per criterion group: median and interval of each benchmark.
fn write_criterion(md: &mut String, estimates: &[Estimate], dir: &Path) -> std::fmt::Result {
    writeln!(md, "## Criterion (`cargo bench -p fxcast-benches`)\n")?;
    writeln!(
        md,
        "Median time per iteration with criterion's 95% interval. For the transport and end-to-end groups an iteration is one publish until every subscriber has received it.\n"
    )?;
    let mut group = String::new();
    for e in estimates {
        if e.group != group {
            group.clone_from(&e.group);
            writeln!(
                md,
                "\n### {group}\n\n| benchmark | median | interval |\n|---|---|---|"
            )?;
        }
        writeln!(
            md,
            "| {} | {} | {} – {} |",
            e.id,
            human_ns(e.median_ns),
            human_ns(e.lower_ns),
            human_ns(e.upper_ns)
        )?;
    }
    if estimates.is_empty() {
        writeln!(md, "No criterion results found in {}.", dir.display())?;
    }
    Ok(())
}

/// A table per group of the benches' percentile passes.
fn write_percentiles(md: &mut String, percentiles: &[Percentiles]) -> std::fmt::Result {
    if percentiles.is_empty() {
        return Ok(());
    }
    writeln!(
        md,
        "\n## Latency percentiles (`cargo bench`, per-iteration pass)\n\nAfter criterion each bench binary times every case's iterations one by one (see `benches/src/percentiles.rs`); these are the distributions behind the medians above.\n"
    )?;
    let mut group = "";
    for p in percentiles {
        let (this, id) = p.id.split_once('/').unwrap_or(("", &p.id));
        if this != group {
            group = this;
            writeln!(
                md,
                "\n### {group}\n\n| case | samples | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|"
            )?;
        }
        write!(md, "| {id} | {} |", p.samples)?;
        for (_, us) in &p.quantiles {
            write!(md, " {} |", human_micros(*us))?;
        }
        writeln!(md)?;
    }
    Ok(())
}

/// p50, p90, p99, p99.9 and max of a load test's `latency_us`, humanly.
fn load_quantiles(run: &Value) -> [String; 5] {
    let l = &run["latency_us"];
    ["p50", "p90", "p99", "p999", "max"].map(|k| human_us(l[k].as_u64().unwrap_or(0)))
}

/// The table of `fxcast loadtest orders` runs (`orders` or `orders-open`).
fn write_orders(md: &mut String, interface: &str, runs: &BTreeMap<u64, Value>) -> std::fmt::Result {
    let open = interface == "orders-open";
    writeln!(
        md,
        "\n### {}\n\n| {} | orders/s | p50 | p90 | p99 | p99.9 | max | server RSS after |\n|---|---|---|---|---|---|---|---|",
        if open {
            "orders, open loop (PlaceOrder on a fixed schedule; latency from each order's intended send time)"
        } else {
            "orders, closed loop (PlaceOrder, durable journal; a fixed number in flight)"
        },
        if open { "target orders/s" } else { "in flight" },
    )?;
    for (n, v) in runs {
        let [p50, p90, p99, p999, max] = load_quantiles(v);
        let rss = v["server_rss_after_kib"]
            .as_u64()
            .map_or("–".to_owned(), |k| {
                format!("{:.0} MiB", k as f64 / 1024.0)
            });
        writeln!(
            md,
            "| {n} | {} | {p50} | {p90} | {p99} | {p999} | {max} | {rss} |",
            v["orders_per_s"],
        )?;
    }
    Ok(())
}

/// The table of `fxcast loadtest ws|sse|grpc` runs of one interface.
fn write_subscribers(
    md: &mut String,
    interface: &str,
    runs: &BTreeMap<u64, Value>,
) -> std::fmt::Result {
    writeln!(
        md,
        "\n### {interface} subscribers\n\n| connections | connected | messages/s | p50 | p90 | p99 | p99.9 | max | server KiB/conn | disconnects |\n|---|---|---|---|---|---|---|---|---|---|"
    )?;
    for (n, v) in runs {
        let [p50, p90, p99, p999, max] = load_quantiles(v);
        let kib = v["server_kib_per_connection"]
            .as_f64()
            .map_or("–".to_owned(), |k| format!("{k:.1}"));
        writeln!(
            md,
            "| {n} | {} | {:.0} | {p50} | {p90} | {p99} | {p999} | {max} | {kib} | {} |",
            v["connected"],
            v["messages_per_s"].as_f64().unwrap_or(0.0),
            v["disconnects"]
        )?;
    }
    Ok(())
}

/// The load-test tables.
fn write_loads(
    md: &mut String,
    loads: &BTreeMap<String, BTreeMap<u64, Value>>,
    dir: &Path,
) -> std::fmt::Result {
    writeln!(md, "\n## Load tests (`fxcast loadtest ...`)\n")?;
    for (interface, runs) in loads {
        if interface.starts_with("orders") {
            write_orders(md, interface, runs)?;
        } else {
            write_subscribers(md, interface, runs)?;
        }
    }
    if loads.is_empty() {
        writeln!(md, "No load-test results found in {}.", dir.display())?;
    }
    Ok(())
}

/// Where the comparison's section starts and ends in `BENCHMARKS.md`.
const COMPARE_BEGIN: &str = "<!-- loadtest compare: begin -->";
const COMPARE_END: &str = "<!-- loadtest compare: end -->";

/// The section of `fxcast loadtest compare` (`compare.json`), between its
/// markers; empty without results.
fn compare_section(results: &Path, commit: &str) -> Result<String> {
    let path = results.join("compare.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(String::new());
    };
    let table: Table =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let command = std::fs::read_to_string(results.join("compare.command"))
        .unwrap_or_else(|_| "fxcast loadtest compare".to_owned());
    let mut md = String::new();
    writeln!(md, "{COMPARE_BEGIN}")?;
    writeln!(
        md,
        "\n## fxcast and nats-server side by side (`fxcast loadtest compare`)\n"
    )?;
    writeln!(
        md,
        "`{}` at commit `{commit}`. Every row is a fresh server started by the command: `fxcast serve` \
         (simulated feed ticking every symbol every interval) or Debian's `nats-server` with its WebSocket \
         listener, fed by an async-nats publisher with the very frame fxcast's WebSocket sends (captured \
         from a probe server, times refreshed at publish). Subscribers speak each server's own protocol \
         (fxcast JSON over WebSocket, SSE, gRPC `StreamRates`; NATS `CONNECT`/`SUB`/`MSG` over WebSocket). \
         Latency is the message's `publish_time` to receipt on this machine's clock (no coordinated \
         omission: every message carries the time it was published, so a delivery held up behind a \
         backlog counts its whole delay). Server CPU is user + system time from \
         `/proc/<pid>/stat` over the measured window; KiB per connection is the growth of the server's RSS \
         once every subscriber connected.\n",
        command.trim()
    )?;
    md.push_str(&table.markdown());
    // A rough sign of other work: by the end the run's own servers and
    // load generators (eight processes in a spread case) are in the load
    // average, so only the start is read; even that still carries what
    // `scripts/bench-report` itself ran just before (its build, or the
    // order load tests of a full report).
    let busy = table
        .load_average
        .0
        .split_whitespace()
        .next()
        .and_then(|one_minute| one_minute.parse::<f64>().ok())
        .is_some_and(|one_minute| one_minute > table.cores as f64);
    if busy {
        writeln!(
            md,
            "\nThe load average was high for this machine when the run started: other work was \
             probably running beside the servers and the load generator, so latency and CPU figures \
             are disturbed."
        )?;
    }
    writeln!(md, "{COMPARE_END}")?;
    Ok(md)
}

/// Analyses written by hand into `BENCHMARKS.md` sit between these markers;
/// a full run carries them over unchanged.
const HAND_WRITTEN_BEGIN: &str = "<!-- hand-written: begin -->";
const HAND_WRITTEN_END: &str = "<!-- hand-written: end -->";

/// Where `text` runs from `begin` to `end` (markers and the newline after
/// `end` included), if it has both in that order.
fn region(text: &str, begin: &str, end: &str) -> Option<std::ops::Range<usize>> {
    let start = text.find(begin)?;
    let stop = start + text[start..].find(end)? + end.len();
    Some(start..stop + usize::from(text[stop..].starts_with('\n')))
}

/// Replaces the comparison's section of `BENCHMARKS.md` (or appends it).
fn splice_compare(path: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match region(&old, COMPARE_BEGIN, COMPARE_END) {
        Some(at) => format!("{}{section}{}", &old[..at.start], &old[at.end..]),
        // Before the hand-written analyses, which read the table above them.
        None => match old
            .find(HAND_WRITTEN_BEGIN)
            .or_else(|| old.find("\n## Reading these numbers"))
        {
            Some(at) => format!("{}\n{section}{}", &old[..at], &old[at..]),
            None => format!("{old}\n{section}"),
        },
    };
    std::fs::write(path, new)?;
    Ok(())
}

/// Appends to `md` the hand-written analyses of `old` (the file a full run
/// replaces), markers included. Refuses a file with a marker but no whole
/// region rather than overwrite what was written by hand.
fn keep_hand_written(md: &mut String, old: &str) -> Result<()> {
    match region(old, HAND_WRITTEN_BEGIN, HAND_WRITTEN_END) {
        Some(kept) => {
            md.push('\n');
            md.push_str(&old[kept]);
        }
        None if old.contains(HAND_WRITTEN_BEGIN) || old.contains(HAND_WRITTEN_END) => {
            return Err(format!(
                "BENCHMARKS.md has a `{HAND_WRITTEN_BEGIN}` or `{HAND_WRITTEN_END}` marker \
                 without the other (or in the wrong order); mend it, or a rerun would \
                 drop the analyses written by hand"
            )
            .into());
        }
        None => {}
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let compare = compare_section(&args.results, &args.commit)?;
    if args.only_compare {
        if compare.is_empty() {
            return Err(format!("no compare.json in {}", args.results.display()).into());
        }
        let path = args.out.join("BENCHMARKS.md");
        splice_compare(&path, &compare)?;
        eprintln!("updated the comparison in {}", path.display());
        return Ok(());
    }
    let estimates = criterion_estimates(&args.criterion);
    let loads = loadtests(&args.results);
    let percentiles = percentile_lines(&args.results.join("criterion.txt"));
    let plots = args.out.join("bench");
    std::fs::create_dir_all(&plots)?;

    let mut md = String::new();
    write_heading(&mut md, &args)?;
    write_plots(&mut md, &plots, &estimates, &percentiles, &loads)?;
    write_criterion(&mut md, &estimates, &args.criterion)?;
    write_percentiles(&mut md, &percentiles)?;
    write_loads(&mut md, &loads, &args.results)?;
    if !compare.is_empty() {
        writeln!(md)?;
        md.push_str(&compare);
    }
    let path = args.out.join("BENCHMARKS.md");
    keep_hand_written(&mut md, &std::fs::read_to_string(&path).unwrap_or_default())?;
    if let Ok(notes) = std::fs::read_to_string(args.results.join("notes.md")) {
        writeln!(md, "\n{notes}")?;
    }
    std::fs::write(&path, md)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_runs_from_its_begin_marker_to_the_first_end_marker_after_it() {
        let text = "a\n<!-- b -->\nkept\n<!-- e -->\nz\n";
        let at = region(text, "<!-- b -->", "<!-- e -->").unwrap();
        assert_eq!(&text[at], "<!-- b -->\nkept\n<!-- e -->\n");
        assert_eq!(region(text, "<!-- e -->", "<!-- b -->"), None);
        assert_eq!(region(text, "<!-- x -->", "<!-- e -->"), None);
        let text = "E B x E y E";
        assert_eq!(&text[region(text, "B", "E").unwrap()], "B x E");
        let text = "a B x E";
        assert_eq!(&text[region(text, "B", "E").unwrap()], "B x E");
    }

    #[test]
    fn a_full_run_keeps_the_hand_written_region_and_refuses_half_a_one() {
        let hand = format!("{HAND_WRITTEN_BEGIN}\nanalysis\n{HAND_WRITTEN_END}\n");
        let mut md = "generated\n".to_owned();
        keep_hand_written(&mut md, &format!("old generated\n{hand}old notes\n")).unwrap();
        assert_eq!(md, format!("generated\n\n{hand}"));
        let mut md = "generated\n".to_owned();
        keep_hand_written(&mut md, "nothing by hand\n").unwrap();
        assert_eq!(md, "generated\n");
        for broken in [
            format!("{HAND_WRITTEN_BEGIN}\nanalysis\n"),
            format!("analysis\n{HAND_WRITTEN_END}\n"),
            format!("{HAND_WRITTEN_END}\nanalysis\n{HAND_WRITTEN_BEGIN}\n"),
        ] {
            assert!(
                keep_hand_written(&mut String::new(), &broken).is_err(),
                "{broken}"
            );
        }
    }

    #[test]
    fn a_first_comparison_goes_above_the_hand_written_analyses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BENCHMARKS.md");
        let hand = format!("{HAND_WRITTEN_BEGIN}\nanalysis\n{HAND_WRITTEN_END}\n");
        std::fs::write(&path, format!("# head\n{hand}")).unwrap();
        let section = format!("{COMPARE_BEGIN}\nnew\n{COMPARE_END}\n");
        splice_compare(&path, &section).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("# head\n\n{section}{hand}")
        );
    }

    #[test]
    fn the_comparison_is_replaced_and_what_follows_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BENCHMARKS.md");
        let hand = format!("{HAND_WRITTEN_BEGIN}\nanalysis\n{HAND_WRITTEN_END}\n");
        let old = format!(
            "# head\n{COMPARE_BEGIN}\nold\n{COMPARE_END}\n{hand}## Reading these numbers\n"
        );
        std::fs::write(&path, old).unwrap();
        splice_compare(&path, &format!("{COMPARE_BEGIN}\nnew\n{COMPARE_END}\n")).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!(
                "# head\n{COMPARE_BEGIN}\nnew\n{COMPARE_END}\n{hand}## Reading these numbers\n"
            )
        );
    }
}
