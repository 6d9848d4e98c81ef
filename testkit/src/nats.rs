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

use std::process::Command;

use super::server_process::{Log, Process, free_port, program, spawn_until_ready};

/// A running (or killed) nats-server; killed when dropped.
pub struct NatsServer {
    port: u16,
    store: tempfile::TempDir,
    args: Vec<String>,
    process: Process,
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
            process: Process::default(),
        };
        server.spawn();
        server
    }

    super::server_process::local_server!("nats");

    /// Starts it again on the same port with the same store directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut command = Command::new(program("NATS_SERVER", "nats-server", "/usr/sbin"));
        command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store.path())
            .args(&self.args);
        match spawn_until_ready(command, Log::Stderr, "Server is ready") {
            Ok(child) => self.process = Process::running(child),
            Err(message) => panic!("{message} (install nats-server, or set NATS_SERVER)"),
        }
    }
}
