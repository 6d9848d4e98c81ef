//! The feed commands as a user runs them: `fxcast record` against a local
//! stand-in for bitFlyer's realtime API, `fxcast serve --feed bitflyer` and
//! `--feed replay:FILE`, watched with `fxcast subscribe`.

use futures_util::{SinkExt, StreamExt};
use tokio::{net::TcpListener, process::Child};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_fxcast");

struct Served {
    _child: Child,
    grpc: String,
    data: std::path::PathBuf,
}

/// Starts `fxcast serve` on ephemeral ports and reads the gRPC address from
/// its log.
async fn serve(extra: &[&str]) -> Served {
    let data = tempfile::tempdir().unwrap().keep();
    let served = fxcast_testkit::spawn_serve(BIN, &data, extra, &[]).await;
    Served {
        _child: served.child,
        grpc: served.grpc,
        data,
    }
}

/// `fxcast subscribe --count <count>` against `served`; its stdout lines.
async fn subscribe(served: &Served, symbols: &str, count: usize) -> Vec<String> {
    let server = format!("http://{}", served.grpc);
    let count = count.to_string();
    let data = served.data.to_str().unwrap();
    let args = ["subscribe", "--server", &server, "--symbols", symbols];
    let args = [&args[..], &["--count", &count, "--data-dir", data]].concat();
    let output = fxcast_testkit::run(BIN, &args).await;
    let stdout = fxcast_testkit::stdout_of(&output);
    stdout.lines().map(str::to_owned).collect()
}

/// A ticker notification in bitFlyer's format.
fn ticker(product: &str, bid: &str, ask: &str, tick_id: u64) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"channelMessage","params":{{"channel":"lightning_ticker_{product}","message":{{"product_code":"{product}","state":"RUNNING","timestamp":"2025-03-14T01:30:00.1180128Z","tick_id":{tick_id},"best_bid":{bid},"best_ask":{ask},"best_bid_size":0.01,"best_ask_size":0.02,"total_bid_depth":600.89,"total_ask_depth":619.42,"market_bid_size":0.0,"market_ask_size":0.0,"ltp":{ask},"volume":1916.28,"volume_by_product":1916.28}}}}}}"#
    )
}

/// A one-connection stand-in for bitFlyer: acknowledges every subscription,
/// then sends `frames` and keeps the connection open until the client goes.
async fn fake_bitflyer(frames: Vec<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/json-rpc", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let Some(Ok(Message::Text(request))) = ws.next().await else {
            panic!("expected a subscribe request");
        };
        let request: serde_json::Value = serde_json::from_str(&request).unwrap();
        assert_eq!(request["method"], "subscribe");
        let ack = format!(
            r#"{{"jsonrpc":"2.0","id":{},"result":true}}"#,
            request["id"]
        );
        ws.send(Message::text(ack)).await.unwrap();
        for frame in frames {
            ws.send(Message::text(frame)).await.unwrap();
        }
        while let Some(Ok(_)) = ws.next().await {}
    });
    url
}

#[tokio::test]
async fn record_a_session_then_serve_its_replay() {
    let url = fake_bitflyer(vec![
        ticker("BTC_JPY", "12634000.0", "12636500.0", 1),
        "garbage that is not JSON".to_owned(),
        ticker("BTC_JPY", "12635001.0", "12636002.0", 2),
        ticker("BTC_JPY", "12635100.0", "12636200.0", 3),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("session.jsonl");
    // It must stop after --max-messages.
    let record = [
        "record",
        "--feed=bitflyer",
        "--symbols=BTC_JPY",
        "--max-messages=3",
    ];
    let endpoint = format!("--bitflyer-endpoint={url}");
    let out_arg = format!("--out={}", out.display());
    let record = fxcast_testkit::run(BIN, &[&record[..], &[&endpoint, &out_arg]].concat()).await;
    fxcast_testkit::stdout_of(&record);
    let recording = std::fs::read_to_string(&out).unwrap();
    // Only notifications are recorded (the garbage was rejected and counted).
    assert_eq!(recording.lines().count(), 3, "{recording}");

    let out = out.to_str().unwrap();
    let feed = format!("--feed=replay:{out}");
    let served = serve(&[&feed, "--replay-speed=max", "--symbols=BTC_JPY"]).await;
    let lines = subscribe(&served, "BTC_JPY", 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    // The latest rate is the recording's last tick, quoted at scale 0.
    assert!(
        line.contains("BTC_JPY") && line.contains("12635100") && line.contains("12636200"),
        "{line}"
    );
    assert!(
        line.contains("seq        3") || line.split_whitespace().last() == Some("3"),
        "{line}"
    );
}

#[tokio::test]
async fn serve_the_live_bitflyer_feed_from_a_custom_endpoint() {
    let url = fake_bitflyer(vec![ticker("ETH_JPY", "285010.0", "285190.0", 7)]).await;
    let endpoint = format!("--bitflyer-endpoint={url}");
    let served = serve(&[
        "--feed=bitflyer",
        &endpoint,
        "--symbols=ETH_JPY",
        "--markup=10",
    ])
    .await;
    let lines = subscribe(&served, "ETH_JPY", 1).await;
    assert!(
        lines[0].contains("285000") && lines[0].contains("285200"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_shipped_sample_replays_in_a_loop() {
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/bitflyer-sample.jsonl"
    );
    let feed = format!("--feed=replay:{sample}");
    let served = serve(&[&feed, "--replay-speed=20", "--loop"]).await;
    let lines = subscribe(&served, "BTC_JPY,ETH_JPY,FX_BTC_JPY", 12).await;
    assert_eq!(lines.len(), 12, "{lines:?}");
    for symbol in ["BTC_JPY", "ETH_JPY", "FX_BTC_JPY"] {
        assert!(
            lines.iter().any(|l| l.contains(symbol)),
            "{symbol} missing: {lines:?}"
        );
    }
}
