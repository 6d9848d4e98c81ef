//! What the nats-server and redis-server helpers share: finding the
//! binary, a free port, starting a server that is ready once its log
//! says so, and the methods both have ([`local_server!`]).
//!
//! Uses only std, like the helpers: the transport crate's own tests compile
//! these files too (`transport/tests/support`).

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// How long a server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// `$<env>` when set, else `name` on `PATH`, else `name` in `fallback_dir`
/// (where the Debian package installs it; `scripts/test` installs them).
pub(crate) fn program(env: &str, name: &str, fallback_dir: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(fallback_dir).join(name))
}

/// A port of 127.0.0.1 that is free once the probe listener is closed; the
/// server binds it right after (a collision is the caller's to retry).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// A server process of one test: killed (`kill -9`, then reaped) on
/// request and when dropped.
#[derive(Default)]
pub(crate) struct Process(Option<Child>);

impl Process {
    pub(crate) fn running(child: Child) -> Self {
        Self(Some(child))
    }

    /// No clean shutdown: connections drop at once. Nothing when not
    /// running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The methods every server of one test has, in the `impl` of a struct
/// with a `port` and a `process` ([`Process`]): its URL
/// (`<scheme>://127.0.0.1:<port>`), its port, and `kill`.
macro_rules! local_server {
    ($scheme:literal) => {
        #[doc = concat!("`", $scheme, "://127.0.0.1:<port>`.")]
        pub fn url(&self) -> String {
            format!(concat!($scheme, "://127.0.0.1:{}"), self.port)
        }

        pub fn port(&self) -> u16 {
            self.port
        }

        /// `kill -9`: no clean shutdown, connections drop at once.
        pub fn kill(&mut self) {
            self.process.kill();
        }
    };
}
pub(crate) use local_server;

/// Where a server writes the log line that says it is ready.
pub(crate) enum Log {
    Stdout,
    Stderr,
}

/// Starts `command` and returns it once a line of its `log` contains
/// `ready`. The log is read to its end on a thread of its own, so the
/// server never blocks on a full pipe. `Err` carries what it logged when
/// it exited first, or says it was not ready in time (it is killed then).
pub(crate) fn spawn_until_ready(
    mut command: Command,
    log: Log,
    ready: &'static str,
) -> Result<Child, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let (out, err) = match log {
        Log::Stdout => (Stdio::piped(), Stdio::null()),
        Log::Stderr => (Stdio::null(), Stdio::piped()),
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let pipe: Box<dyn Read + Send> = match log {
        Log::Stdout => Box::new(child.stdout.take().expect("piped stdout")),
        Log::Stderr => Box::new(child.stderr.take().expect("piped stderr")),
    };
    let (ready_tx, said_ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut ready_tx = Some(ready_tx);
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if line.contains(ready)
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(Ok(()));
            }
            if ready_tx.is_some() {
                seen.push(line);
            }
        }
        if let Some(tx) = ready_tx {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    let outcome = match said_ready.recv_timeout(READY_WITHIN) {
        Ok(Ok(())) => return Ok(child),
        Ok(Err(log)) => format!("{program} exited before it was ready:\n{log}"),
        Err(_) => format!("{program} was not ready within {READY_WITHIN:?}"),
    };
    let _ = child.kill();
    let _ = child.wait();
    Err(outcome)
}
