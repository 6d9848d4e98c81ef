//! Helpers shared by the tests that run the real `fxcast` binary.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
};
use tonic::{
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
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

/// Adds `authorization: Bearer <credential>` to every call.
#[derive(Clone)]
pub struct Bearer(AsciiMetadataValue);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel that carries a credential.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Connects to `url` sending `credential` (a token or the API key) on every call.
pub async fn channel(url: &str, credential: &str) -> Authed {
    let channel = Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    InterceptedService::new(
        channel,
        Bearer(format!("Bearer {credential}").parse().unwrap()),
    )
}
