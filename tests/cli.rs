//! The `fxcast` binary as a user runs it: `serve` on ephemeral ports, the
//! `subscribe` client against it, health over HTTP, and a clean SIGTERM exit.

use std::time::{Duration, Instant};

use fxcast_testkit::{http_request, stdout_of as stdout};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_fxcast");

struct Served {
    child: Child,
    grpc: String,
    http: String,
    data: std::path::PathBuf,
}

/// Starts `fxcast serve` on ephemeral ports and reads the bound addresses
/// from its log.
async fn serve(extra: &[&str]) -> Served {
    let data = tempfile::tempdir().unwrap().keep();
    let args = [&["--tick-interval", "20ms"], extra].concat();
    let served = fxcast_testkit::spawn_serve(BIN, &data, &args, &[]).await;
    Served {
        grpc: served.grpc,
        http: served.http,
        child: served.child,
        data,
    }
}

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// `fxcast <command line>` without the environment's credentials; the
/// line is split at whitespace (no argument here contains any).
async fn fxcast(line: &str) -> std::process::Output {
    fxcast_testkit::run(BIN, &line.split_whitespace().collect::<Vec<_>>()).await
}

/// `fxcast subscribe` of `symbols` from `server` with `token`, `count` rates.
async fn subscribe(server: &str, symbols: &str, count: usize, token: &str) -> std::process::Output {
    let line =
        format!("subscribe --server {server} --symbols {symbols} --count {count} --token {token}");
    fxcast(&line).await
}

#[tokio::test]
async fn serve_subscribe_health_and_sigterm() {
    let mut served = serve(&["--symbols", "USD_JPY,EUR_USD"]).await;

    let (grpc, data) = (&served.grpc, served.data.display());
    let output = fxcast(&format!(
        "subscribe --server http://{grpc} --symbols USD_JPY --count 3 --data-dir {data}"
    ))
    .await;
    let stdout = stdout(&output);
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for line in lines {
        let words: Vec<_> = line.split_whitespace().collect();
        assert_eq!(words[1], "USD_JPY", "{line}");
        let bid = words
            .iter()
            .position(|w| *w == "bid")
            .map(|i| words[i + 1])
            .unwrap_or_default();
        assert!(bid.starts_with("151.") && bid.len() == 7, "{line}");
    }

    let (status, body) = http_get(&served.http, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let started = Instant::now();
    loop {
        let (status, body) = http_get(&served.http, "/readyz").await;
        if status == 200 {
            assert_eq!(body, r#"{"status":"ready"}"#);
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never became ready: {body}"
        );
        tokio::task::yield_now().await;
    }

    let pid = served.child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), served.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "fxcast serve exited with {status} on SIGTERM"
    );
}

#[tokio::test]
async fn subscribe_reports_a_bad_symbol_and_exits() {
    let served = serve(&["--symbols", "USD_JPY"]).await;
    let (grpc, data) = (&served.grpc, served.data.display());
    let output = fxcast(&format!(
        "subscribe --server http://{grpc} --symbols NOPE --data-dir {data}"
    ))
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown symbol \"NOPE\""), "{stderr}");
}

#[tokio::test]
async fn serve_refuses_bad_flags_with_a_clear_message() {
    let output = fxcast("serve --transport carrier-pigeon").await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown --transport \"carrier-pigeon\""),
        "{stderr}"
    );
}

#[tokio::test]
async fn tokens_from_the_cli_scope_what_subscribe_may_see() {
    let served = serve(&["--symbols", "USD_JPY,EUR_USD"]).await;
    let server = format!("http://{}", served.grpc);
    let data = served.data.to_str().unwrap();

    let token = stdout(
        &fxcast(&format!(
            "token --subject alice --scope rates:subscribe=USD_JPY --ttl 10m --server {server} --data-dir {data}"
        ))
        .await,
    );
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let ok = subscribe(&server, "USD_JPY", 1, &token).await;
    assert!(stdout(&ok).contains("USD_JPY"));
    let denied = fxcast(&format!(
        "subscribe --server {server} --symbols EUR_USD --token {token}"
    ))
    .await;
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("may not read rates of EUR_USD"),
        "{stderr}"
    );

    let too_long = fxcast(&format!(
        "token --scope orders:place --ttl 2d --server {server} --data-dir {data}"
    ))
    .await;
    assert!(!too_long.status.success());
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("above the maximum of 1day"));

    let no_key = fxcast(&format!(
        "token --scope orders:place --server {server} --data-dir /nonexistent"
    ))
    .await;
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("no credentials"));
}

#[tokio::test]
async fn signed_urls_are_minted_offline_and_survive_key_rotation() {
    let served = serve(&["--symbols", "USD_JPY,EUR_USD"]).await;
    let server = format!("http://{}", served.grpc);
    let data = served.data.to_str().unwrap();
    let mint = async || {
        let line = format!(
            "token --url http://127.0.0.1:8000/v1/rates/stream --symbols EUR_USD --ttl 1h --data-dir {data}"
        );
        stdout(&fxcast(&line).await)
    };
    let url = mint().await;
    assert!(
        url.starts_with("http://127.0.0.1:8000/v1/rates/stream?symbols=EUR_USD&token="),
        "{url}"
    );
    let token = url.split("token=").nth(1).unwrap().to_owned();
    let eur_usd_with = async |token: &str| subscribe(&server, "EUR_USD", 1, token).await;
    assert!(stdout(&eur_usd_with(&token).await).contains("EUR_USD"));

    stdout(&fxcast(&format!("token --rotate-key --data-dir {data}")).await);
    let rotated = mint().await.split("token=").nth(1).unwrap().to_owned();
    assert_ne!(rotated, token);
    assert!(
        stdout(&eur_usd_with(&rotated).await).contains("EUR_USD"),
        "the running server must accept the new key"
    );
    assert!(
        stdout(&eur_usd_with(&token).await).contains("EUR_USD"),
        "tokens of the old key stay valid"
    );
}

#[tokio::test]
async fn a_separate_gateway_serves_a_remote_upstream() {
    let served = serve(&["--symbols", "USD_JPY"]).await;
    let mut gateway = Command::new(BIN);
    gateway
        .args(["gateway", "--upstream", &format!("http://{}", served.grpc)])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&served.data)
        .env_remove("FXCAST_API_KEY");
    let (_child, line) = fxcast_testkit::spawn_until(gateway, "fxcast gateway listening").await;
    let http = fxcast_testkit::log_field(&line, "http");

    let started = Instant::now();
    while http_get(&http, "/readyz").await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the gateway never became ready"
        );
        tokio::task::yield_now().await;
    }
    // A browser token from the gateway works against the remote services.
    let response = fxcast_testkit::http_exchange(&http, "POST", "/v1/tokens").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"subject\":\"anon-"), "{response}");
}

#[tokio::test]
async fn servers_sharing_a_signing_keys_file_accept_each_others_tokens() {
    let shared = tempfile::tempdir().unwrap();
    let keys = shared.path().join("keys.json");
    let keys = keys.to_str().unwrap();
    let first = serve(&["--symbols", "USD_JPY", "--signing-keys", keys]).await;
    let second = serve(&["--symbols", "USD_JPY", "--signing-keys", keys]).await;
    let alone = serve(&["--symbols", "USD_JPY"]).await;
    // Minted offline with the shared keys (the first server created the file).
    let line = format!(
        "token --url http://127.0.0.1:8000/v1/rates/stream --symbols USD_JPY --signing-keys {keys} --data-dir {}",
        shared.path().display()
    );
    let url = stdout(&fxcast(&line).await);
    let token = url.split("token=").nth(1).unwrap().trim().to_owned();
    let subscribe_to = async |served: &Served| {
        subscribe(&format!("http://{}", served.grpc), "USD_JPY", 1, &token).await
    };
    for served in [&first, &second] {
        assert!(stdout(&subscribe_to(served).await).contains("USD_JPY"));
    }
    let refused = subscribe_to(&alone).await;
    assert!(
        !refused.status.success(),
        "a server with other keys must refuse the token"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unknown key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[tokio::test]
async fn loadtests_report_throughput_latency_and_server_memory_as_json() {
    let served = serve(&["--symbols", "USD_JPY,EUR_USD"]).await;
    let pid = served.child.id().unwrap().to_string();
    let grpc = format!("http://{}", served.grpc);
    let http = format!("http://{}", served.http);
    let data = served.data.to_str().unwrap();
    let json = |output: std::process::Output| -> serde_json::Value {
        serde_json::from_str(&stdout(&output)).unwrap()
    };

    // Closed loop: four orders in flight.
    let closed = json(
        fxcast(&format!(
            "loadtest orders --target {grpc} --concurrency 4 --duration 1s --warmup 200ms \
             --data-dir {data} --server-pid {pid} --json"
        ))
        .await,
    );
    assert_eq!(closed["mode"], "closed_loop", "{closed}");
    assert!(closed["orders"].as_u64().unwrap() > 0, "{closed}");
    assert!(
        closed["outcomes"]["FILLED"].as_u64().unwrap() > 0,
        "{closed}"
    );
    let p50 = closed["latency_us"]["p50"].as_u64().unwrap();
    let max = closed["latency_us"]["max"].as_u64().unwrap();
    assert!(0 < p50 && p50 <= max, "{closed}");
    assert!(
        closed["server_rss_after_kib"].as_u64().unwrap() > 0,
        "{closed}"
    );
    // The server's CPU per order, from its /proc over the measured window.
    let cpu_per_order = closed["server_cpu_us_per_order"].as_f64().unwrap();
    assert!(cpu_per_order > 0.0, "{closed}");

    // Open loop at 100 orders/s for 1 s: about 100 orders, measured from
    // their intended send times.
    let open = json(
        fxcast(&format!(
            "loadtest orders --target {grpc} --rate 100 --duration 1s --warmup 0s \
             --data-dir {data} --json"
        ))
        .await,
    );
    assert_eq!(open["mode"], "open_loop", "{open}");
    assert_eq!(
        open["orders"], 100,
        "every order due in 1 s at 100/s is sent and counted, however late: {open}"
    );

    // Twenty WebSocket subscribers through the gateway.
    let ws = json(
        fxcast(&format!(
            "loadtest ws --target {http} --connections 20 --duration 1s --symbols USD_JPY \
             --server-pid {pid} --json"
        ))
        .await,
    );
    assert_eq!(ws["connected"], 20, "{ws}");
    assert_eq!(ws["disconnects"], 0, "{ws}");
    assert!(ws["messages"].as_u64().unwrap() > 0, "{ws}");
    assert!(ws["latency_us"]["p99"].as_u64().unwrap() > 0, "{ws}");
}

/// A row of `loadtest compare` that held all its `connections` subscribers
/// and measured them: deliveries, latency, server CPU and memory.
fn assert_measured(row: &serde_json::Value, connections: u64) {
    let report = &row["report"];
    assert_eq!(row["connections"], connections, "{row:#}");
    assert_eq!(report["connections"], connections, "{row:#}");
    assert_eq!(report["connected"], connections, "{row:#}");
    assert!(report["messages"].as_u64().unwrap() > 0, "{row:#}");
    assert!(report["latency_us"]["p50"].as_u64().unwrap() > 0, "{row:#}");
    assert!(report["server_cpu_s"].as_f64().is_some(), "{row:#}");
    assert!(
        report["server_kib_per_connection"].as_f64().is_some(),
        "{row:#}"
    );
}

/// `fxcast loadtest compare --servers <servers> --connections
/// <connections> --ws-connections <ws_connections> <args>` (an empty count
/// runs no case of that kind) for 2 s per case, 40 subscribers per source
/// address, as JSON; within 3 minutes.
async fn compare(
    servers: &str,
    connections: &str,
    ws_connections: &str,
    args: &[&str],
) -> serde_json::Value {
    let run = Command::new(BIN)
        .args(["loadtest", "compare"])
        .args(["--servers", servers, "--connections", connections])
        .args(["--ws-connections", ws_connections])
        .args(args)
        .args(["--per-source-address", "40", "--duration", "2s", "--json"])
        .env_remove("FXCAST_API_KEY")
        .env_remove("FXCAST_TOKEN")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the comparison finished within 3 minutes")
        .unwrap();
    serde_json::from_str(&stdout(&output)).unwrap()
}

/// `loadtest compare` as a smoke run (benchmarks are not timed tests: no
/// latency is asserted): fxcast's WebSocket and nats-server's, 100
/// subscribers each from three loopback source addresses for 2 s, each
/// against a server the command starts itself.
#[tokio::test]
async fn loadtest_compare_runs_fxcast_and_nats_server_side_by_side() {
    let table = compare("fxcast-ws,nats-ws", "100", "", &[]).await;
    let rows = table["rows"].as_array().unwrap();
    let servers: Vec<_> = rows.iter().map(|r| r["server"].as_str().unwrap()).collect();
    assert_eq!(servers, ["fxcast-ws", "nats-ws"], "{table:#}");
    for row in rows {
        assert_measured(row, 100);
    }
    // The same messages on both sides: fxcast's frames, republished.
    assert!(table["payload_bytes"].as_u64().unwrap() > 100, "{table:#}");
}

/// A `loadtest compare` case past what one process may hold runs spread:
/// forced here at 50 per process, 120 WebSocket subscribers go to three
/// serving `fxcast serve --feed none` nodes fed through a nats-server, from
/// three load-generator processes whose results merge into one row (no
/// latency asserted, only that every subscriber was held and received).
#[tokio::test]
async fn loadtest_compare_spreads_a_case_past_one_process_over_a_cluster() {
    let table = compare("fxcast-ws", "", "120", &["--max-per-process", "50"]).await;
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{table:#}");
    let row = &rows[0];
    assert_eq!(row["server"], "fxcast-ws", "{row:#}");
    assert_eq!(row["spread"]["server_processes"], 3, "{row:#}");
    assert_eq!(row["spread"]["load_generators"], 3, "{row:#}");
    assert_eq!(row["spread"]["largest_share"], 40, "{row:#}");
    assert_measured(row, 120);
    assert_eq!(row["report"]["disconnects"], 0, "{row:#}");
    // Merged, not passed through.
    assert!(row["report"].get("latency_histogram").is_none(), "{row:#}");
}
