//! Driving the real `fxcast` binary: reading what it logs.

use std::time::Duration;

use fxcast_proto::v1::{
    IssueTokenRequest, IssueTokenResponse, token_service_client::TokenServiceClient,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

/// How long a child may take to log that it is ready.
pub const STARTUP: Duration = Duration::from_secs(30);

/// Reads the child's stderr until a line contains `marker` and returns it;
/// the rest of the log keeps being drained so the child never blocks on a
/// full pipe. The child must have been spawned with `stderr(Stdio::piped())`.
pub async fn wait_for_line(child: &mut Child, marker: &str) -> String {
    let mut lines = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
    let line = tokio::time::timeout(STARTUP, async {
        while let Some(line) = lines.next_line().await.expect("readable log") {
            if line.contains(marker) {
                return line;
            }
        }
        panic!("the process exited before logging {marker:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no {marker:?} in the log within {STARTUP:?}"));
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    line
}

/// The value of `name=` in a structured log line, e.g. `grpc=127.0.0.1:4242`.
pub fn log_field(line: &str, name: &str) -> String {
    let key = format!("{name}=");
    let start = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len();
    line[start..]
        .split_whitespace()
        .next()
        .expect("a value")
        .to_owned()
}

/// Spawns `command` logging at info level without colours to a piped
/// stderr (stdout discarded, killed on drop); returns it once it logged a
/// line containing `marker`, and that line.
pub async fn spawn_until(mut command: Command, marker: &str) -> (Child, String) {
    command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the command starts");
    let line = wait_for_line(&mut child, marker).await;
    (child, line)
}

/// A running `fxcast serve` child process and the addresses it logged.
pub struct ServeProcess {
    /// The process (killed on drop).
    pub child: Child,
    /// `host:port` of its gRPC listener.
    pub grpc: String,
    /// `host:port` of its HTTP listener.
    pub http: String,
}

/// The `serve` flags that bind gRPC and HTTP to ephemeral loopback ports.
pub const EPHEMERAL_LISTENERS: [&str; 4] = [
    "--grpc-listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
];

/// Starts `<bin> serve` on ephemeral ports with `data_dir` and `args`, the
/// environment cleared of fxcast settings and then given `env`; returns
/// once it logged the addresses it bound.
pub async fn spawn_serve(
    bin: &str,
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> ServeProcess {
    let mut command = Command::new(bin);
    command
        .arg("serve")
        .args(EPHEMERAL_LISTENERS)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("FXCAST_API_KEY")
        .env_remove("FXCAST_CONFIG")
        .envs(env.iter().copied());
    let (child, line) = spawn_until(command, "fxcast listening").await;
    ServeProcess {
        grpc: log_field(&line, "grpc"),
        http: log_field(&line, "http"),
        child,
    }
}

/// Runs `<bin> <args>` without the fxcast credentials of the environment;
/// its output once it exited, within 30 s.
pub async fn run(bin: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new(bin)
        .args(args)
        .env_remove("FXCAST_API_KEY")
        .env_remove("FXCAST_TOKEN")
        .output();
    tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("the command did not finish within 30 s")
        .unwrap()
}

/// The trimmed stdout of a command that must have succeeded.
pub fn stdout_of(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

/// A bodiless `method path` HTTP/1.1 request to `addr` over a fresh
/// connection: the whole answer, as the server sent it.
pub async fn http_exchange(addr: &str, method: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// As [`http_exchange`]: the status and body of the answer.
pub async fn http_request(addr: &str, method: &str, path: &str) -> (u16, String) {
    let response = http_exchange(addr, method, path).await;
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// A token for `subject` with `scopes`, issued by the server at `url` with
/// its API key.
pub async fn issue_token(
    url: &str,
    api_key: &str,
    subject: &str,
    scopes: &[&str],
) -> IssueTokenResponse {
    let mut tokens = TokenServiceClient::new(crate::channel(url, api_key).await);
    let request = IssueTokenRequest {
        subject: subject.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        ttl: None,
    };
    tokens.issue_token(request).await.unwrap().into_inner()
}

/// Runs `python3` with `args` and `envs`, a script that needs the Python
/// package `module` (`install` says how to get it); returns its stdout once
/// it exited successfully.
pub fn run_python(
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &str)],
    module: &str,
    install: &str,
) -> String {
    let output = std::process::Command::new("python3")
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("python3 is required: scripts/test installs what the tests need");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains(&format!("No module named '{module}'")),
        "the Python package {module} is missing: {install}"
    );
    assert!(
        output.status.success(),
        "python3 failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}
