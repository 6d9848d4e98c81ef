//! A real `nats-server` with JetStream for one test: on a free port of
//! 127.0.0.1 with its own store directory, killed (`kill -9`) and started
//! again on the same port with the same store, as after a crash.
//!
//! The binary is `$NATS_SERVER`, else `nats-server` on `PATH`, else the
//! Debian package's `/usr/sbin/nats-server` (`scripts/test` installs it).
//!
//! This file uses only std and `tempfile`: the transport crate's own tests
//! compile it too (`transport/tests/support`), since fxcast-transport sits
//! below everything this crate depends on.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// How long the server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A running (or killed) nats-server; killed when dropped.
pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|path| path.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

fn free_port() -> u16 {
    // The port is free once the listener is closed; nats-server binds it
    // right after.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl NatsServer {
    /// A server with JetStream, no authentication.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with JetStream and `args` besides (`--user u --pass p`).
    pub fn start_with(args: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            store: tempfile::tempdir().expect("a store directory"),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `kill -9`: no clean shutdown, connections drop at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let binary = binary();
        let mut child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (install nats-server, or set NATS_SERVER): {e}",
                    binary.display()
                )
            });
        let stderr = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready) = mpsc::channel();
        // Reads the log to the end, so the server never blocks on a full
        // pipe; says when it is ready (or what it logged before exiting).
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("Server is ready")
                    && let Some(tx) = ready_tx.take()
                {
                    let _ = tx.send(Ok(()));
                }
                if ready_tx.is_some() {
                    log.push(line);
                }
            }
            if let Some(tx) = ready_tx {
                let _ = tx.send(Err(log.join("\n")));
            }
        });
        match ready.recv_timeout(READY_WITHIN) {
            Ok(Ok(())) => self.child = Some(child),
            Ok(Err(log)) => panic!("nats-server exited before it was ready:\n{log}"),
            Err(_) => {
                let _ = child.kill();
                panic!("nats-server was not ready within {READY_WITHIN:?}");
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
