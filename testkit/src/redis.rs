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
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// How long the server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Ports tried before giving up on finding a free one.
const PORT_ATTEMPTS: usize = 5;

/// A running (or killed) redis-server; killed when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    persistent: bool,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("REDIS_SERVER") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|path| path.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"))
}

fn free_port() -> u16 {
    // Free once the listener is closed; redis-server binds it right after
    // (and a collision is retried on another port).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
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
            child: None,
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

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
        let binary = binary();
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
        let mut child = Command::new(&binary)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args(persistence)
            .args(["--daemonize", "no"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Failed::Other(format!(
                    "cannot start {} (install redis-server, or set REDIS_SERVER): {e}",
                    binary.display()
                ))
            })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready) = mpsc::channel();
        // Reads the log to the end, so the server never blocks on a full
        // pipe; says when it accepts connections (or what it logged
        // before exiting).
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections")
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
        let outcome = match ready.recv_timeout(READY_WITHIN) {
            Ok(Ok(())) if self.answers_ping() => Ok(()),
            Ok(Ok(())) => Err(Failed::Other(format!(
                "redis-server said it was ready but port {} does not answer PING",
                self.port
            ))),
            Ok(Err(log)) if log.contains("Address already in use") => Err(Failed::PortTaken),
            Ok(Err(log)) => Err(Failed::Other(format!(
                "redis-server exited before it was ready:\n{log}"
            ))),
            Err(_) => Err(Failed::Other(format!(
                "redis-server was not ready within {READY_WITHIN:?}"
            ))),
        };
        match outcome {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(failed) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(failed)
            }
        }
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
