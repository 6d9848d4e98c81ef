//! Driving the real `fxcast` binary: reading what it logs.

use std::time::Duration;

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
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

/// A running `fxcast serve` child process and the addresses it logged.
pub struct ServeProcess {
    /// The process (killed on drop).
    pub child: Child,
    /// `host:port` of its gRPC listener.
    pub grpc: String,
    /// `host:port` of its HTTP listener.
    pub http: String,
}

/// Starts `<bin> serve` on ephemeral ports with `data_dir` and `args`, the
/// environment cleared of fxcast settings and then given `env`; returns
/// once it logged the addresses it bound.
pub async fn spawn_serve(
    bin: &str,
    data_dir: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> ServeProcess {
    let mut command = tokio::process::Command::new(bin);
    command
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("FXCAST_API_KEY")
        .env_remove("FXCAST_CONFIG")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the fxcast binary starts");
    let line = wait_for_line(&mut child, "fxcast listening").await;
    ServeProcess {
        grpc: log_field(&line, "grpc"),
        http: log_field(&line, "http"),
        child,
    }
}
