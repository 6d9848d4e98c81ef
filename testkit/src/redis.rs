//! A real `redis-server` for one test: on a free port of 127.0.0.1 with its
//! own data directory and an append-only file synced on every write, killed
//! (`kill -9`) and started again on the same port with the same data, as
//! after a crash.
//!
//! redis-server cannot bind port 0 and say which port it got, so a free
//! port is found by binding a listener on `127.0.0.1:0` and closing it;
//! should another process take it before redis-server binds it, the start
//! is retried on a new port. Ready is when its log says it accepts
//! connections and it answers a `PING`: no timer.
//!
//! The binary is `$REDIS_SERVER`, else `redis-server` on `PATH`, else the
//! Debian package's `/usr/bin/redis-server` (`scripts/test` installs it).
//!
//! This file uses only std and `tempfile`: the transport crate's own tests
//! compile it too (`transport/tests/support`), since fxcast-transport sits
//! below everything this crate depends on.

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use super::server_process::{Log, Process, free_port, program, spawn_until_ready};

/// Ports tried before giving up on finding a free one.
const PORT_ATTEMPTS: usize = 5;

/// A running (or killed) redis-server; killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    persistent: bool,
    process: Process,
}

/// Why a start failed.
enum Failed {
    /// Another process holds the port: try another.
    PortTaken,
    Other(String),
}

impl RedisServer {
    /// A server without authentication, persisting every write.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with `args` besides (`--requirepass p`), persisting every
    /// write (`--appendonly yes --appendfsync always`).
    pub fn start_with(args: &[&str]) -> Self {
        Self::launch(args, true)
    }

    /// A server that keeps nothing on disk: a restart loses every key.
    pub fn start_ephemeral() -> Self {
        Self::launch(&[], false)
    }

    fn launch(args: &[&str], persistent: bool) -> Self {
        let mut server = Self {
            port: 0,
            dir: tempfile::tempdir().expect("a data directory"),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            persistent,
            process: Process::default(),
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(Failed::PortTaken) => last = format!("port {} was taken", server.port),
                Err(Failed::Other(message)) => panic!("{message}"),
            }
        }
        panic!("redis-server found no free port in {PORT_ATTEMPTS} attempts: {last}");
    }

    super::server_process::local_server!("redis");

    /// Starts it again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        match self.spawn() {
            Ok(()) => {}
            Err(Failed::PortTaken) => {
                panic!("port {} was taken while redis-server was down", self.port)
            }
            Err(Failed::Other(message)) => panic!("{message}"),
        }
    }

    fn spawn(&mut self) -> Result<(), Failed> {
        let persistence: &[&str] = if self.persistent {
            &[
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ]
        } else {
            &["--appendonly", "no", "--save", ""]
        };
        let mut command = Command::new(program("REDIS_SERVER", "redis-server", "/usr/bin"));
        command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args(persistence)
            .args(["--daemonize", "no"])
            .args(&self.args);
        let process = match spawn_until_ready(command, Log::Stdout, "Ready to accept connections") {
            Ok(child) => Process::running(child),
            Err(log) if log.contains("Address already in use") => return Err(Failed::PortTaken),
            Err(message) => {
                return Err(Failed::Other(format!(
                    "{message} (install redis-server, or set REDIS_SERVER)"
                )));
            }
        };
        if !self.answers_ping() {
            // Dropping `process` kills it.
            return Err(Failed::Other(format!(
                "redis-server said it was ready but port {} does not answer PING",
                self.port
            )));
        }
        self.process = process;
        Ok(())
    }

    /// Whether a server on the port answers `PING` (`+PONG`, or `-NOAUTH`
    /// when it wants a password: it is up either way).
    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if stream.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut line = String::new();
        match BufReader::new(stream).read_line(&mut line) {
            Ok(_) => line.starts_with("+PONG") || line.starts_with("-NOAUTH"),
            Err(_) => false,
        }
    }
}
