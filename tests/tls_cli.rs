//! TLS as a user deploys it with the binary: `serve` with a certificate and
//! a client CA, a separate `fxcast gateway` reaching it over `https://`
//! with its own client certificate and serving HTTPS itself, and
//! `momento-local` over TLS.

use std::time::Duration;

use fxcast_testkit::{
    Ca, json_of, log_field, run_python, spawn_serve, spawn_until, stdout_of, wait_ready_at,
};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fxcast");

/// `fxcast <args>` without the fxcast settings of this environment.
fn fxcast(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("FXCAST_API_KEY")
        .env_remove("FXCAST_CONFIG")
        .env_remove("FXCAST_CA_CERT");
    command
}

/// The exit status and stderr of `command`, which must end within 30 s.
async fn failure_of(mut command: Command) -> String {
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the command exits")
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// The port of the address logged as `name=` in `line`.
fn port_of(line: &str, name: &str) -> String {
    log_field(line, name).rsplit(':').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_gateway_reaches_a_tls_upstream_with_its_client_certificate_and_serves_https() {
    let (ca, server) = Ca::for_localhost("fxcast test CA");
    let clients = Ca::new("fxcast clients CA");
    let client_ca = server.write("clients.pem", &clients.pem());
    let (gateway_cert_file, gateway_key_file) =
        server.write_leaf("gateway", &clients.issue(&["gateway"]));
    let (ca_file, cert, key) = (server.ca(), server.cert(), server.key());
    let data = tempfile::tempdir().unwrap();
    let served = spawn_serve(
        BIN,
        data.path(),
        &[
            "--symbols",
            "USD_JPY",
            "--tick-interval",
            "20ms",
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--tls-client-ca",
            path(&client_ca),
        ],
        &[],
    )
    .await;
    let grpc_port = served.grpc.rsplit(':').next().unwrap();
    let upstream = format!("https://localhost:{grpc_port}");
    let gateway_args = |with_cert: bool| {
        let mut args = vec![
            "gateway",
            "--upstream",
            upstream.as_str(),
            "--upstream-ca",
            path(&ca_file),
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
            path(data.path()),
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
        ];
        if with_cert {
            args.extend([
                "--upstream-cert",
                path(&gateway_cert_file),
                "--upstream-key",
                path(&gateway_key_file),
            ]);
        }
        args
    };
    let (_gateway, line) =
        spawn_until(fxcast(&gateway_args(true)), "fxcast gateway listening").await;
    let base = format!("https://localhost:{}", port_of(&line, "http"));
    let https = ca.https_client();
    wait_ready_at(&https, &base).await;
    // A browser token from the gateway, issued by the upstream over mTLS.
    let token = json_of(
        https
            .post(format!("{base}/v1/tokens"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        token["subject"].as_str().unwrap().starts_with("anon-"),
        "{token}"
    );

    // Without its client certificate the gateway is refused by the upstream
    // and exits saying so (with TLS 1.3 the reason is either the server's
    // CertificateRequired alert or the closed connection, whichever the
    // client reads first).
    let stderr = failure_of(fxcast(&gateway_args(false))).await;
    assert!(stderr.contains("upstream refused the gateway"), "{stderr}");
}

#[tokio::test]
async fn the_gateway_refuses_tls_flags_without_https() {
    let mut command = fxcast(&[
        "gateway",
        "--upstream",
        "http://127.0.0.1:1",
        "--upstream-ca",
        "/nonexistent.pem",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    command.env("FXCAST_API_KEY", "k");
    let stderr = failure_of(command).await;
    assert!(stderr.contains("need an https:// --upstream"), "{stderr}");
}

#[tokio::test]
async fn momento_local_serves_the_momento_wire_over_tls() {
    let (ca, files) = Ca::for_localhost("fxcast test CA");
    let command = fxcast(&[
        "momento-local",
        "--listen",
        "127.0.0.1:0",
        "--cache",
        "rates",
        "--tls-cert",
        path(&files.cert()),
        "--tls-key",
        path(&files.key()),
    ]);
    let (_child, line) = spawn_until(command, "momento-local listening").await;
    assert!(line.contains("tls=true"), "{line}");
    let port = port_of(&line, "addr");
    // A gRPC-web Get of a missing key (an empty `_GetRequest`, framed), as
    // Momento's web SDK sends it, over HTTPS trusting only the test CA.
    let response = ca
        .https_client()
        .post(format!("https://localhost:{port}/cache_client.Scs/Get"))
        .header("content-type", "application/grpc-web+proto")
        .header("cache", "rates")
        .header("x-grpc-web", "1")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // grpc-status comes as a header (a trailers-only reply) or in the
    // trailers frame of the body.
    let in_headers = response.headers().contains_key("grpc-status");
    let body = response.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&body).to_lowercase();
    assert!(in_headers || text.contains("grpc-status"), "{text}");

    // Plaintext on the TLS port is not served.
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/cache_client.Scs/Get"))
        .header("content-type", "application/grpc-web+proto")
        .body(vec![0u8, 0, 0, 0, 0])
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test]
async fn terminal_clients_reach_a_tls_server_trusting_fxcast_ca_cert() {
    let (_ca, files) = Ca::for_localhost("fxcast test CA");
    let (ca_file, cert, key) = (files.ca(), files.cert(), files.key());
    let data = tempfile::tempdir().unwrap();
    let served = spawn_serve(
        BIN,
        data.path(),
        &["--tls-cert", path(&cert), "--tls-key", path(&key)],
        &[],
    )
    .await;
    let port = served.grpc.rsplit(':').next().unwrap();
    let server = format!("https://localhost:{port}");
    let token = |ca: Option<&std::path::Path>| {
        let mut command = fxcast(&["token", "--server", &server, "--subject", "alice"]);
        command.args([
            "--scope",
            "rates:subscribe=*",
            "--data-dir",
            path(data.path()),
        ]);
        if let Some(ca) = ca {
            command.env("FXCAST_CA_CERT", ca);
        }
        command
    };
    let jwt = stdout_of(&token(Some(&ca_file)).output().await.unwrap());
    assert_eq!(jwt.matches('.').count(), 2, "{jwt}");
    grpcio_reaches(&ca_file, port, &jwt);
    // Against the Mozilla roots the test CA is unknown.
    let stderr = failure_of(token(None)).await;
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

/// gRPC's C core (Python `grpcio`, installed with Momento's Python SDK by
/// scripts/test) as a second, non-rustls TLS client, the way grpcurl
/// `-cacert` would be used: health, then `ListSymbols` with the token.
fn grpcio_reaches(ca: &std::path::Path, port: &str, token: &str) {
    const SCRIPT: &str = r#"
import sys, grpc
ca, target, token = sys.argv[1:4]
creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
channel = grpc.secure_channel(target, creds)
health = channel.unary_unary("/grpc.health.v1.Health/Check")
print("health", health(b"", timeout=10).hex())
symbols = channel.unary_unary("/fxcast.v1.RateService/ListSymbols")
try:
    symbols(b"", timeout=10)
except grpc.RpcError as err:
    print("anonymous", err.code().name)
reply = symbols(b"", metadata=[("authorization", "Bearer " + token)], timeout=10)
print("symbols", b"USD_JPY" in reply)
"#;
    let target = format!("localhost:{port}");
    let stdout = run_python(
        &[
            "-c".as_ref(),
            SCRIPT.as_ref(),
            ca.as_os_str(),
            target.as_ref(),
            token.as_ref(),
        ],
        &[],
        "grpc",
        "run scripts/test (it installs Momento's Python SDK, which brings grpcio)",
    );
    assert!(stdout.contains("health 0801"), "{stdout}");
    assert!(stdout.contains("anonymous UNAUTHENTICATED"), "{stdout}");
    assert!(stdout.contains("symbols True"), "{stdout}");
}
