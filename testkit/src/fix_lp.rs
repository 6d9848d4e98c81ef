//! A FIX liquidity provider on QuickFIX (tests/fix-lp/lp.cpp), compiled
//! once with g++ next to the test binaries and run as a child process.
//!
//! The test drives it through commands on its stdin and watches what it
//! prints on stdout (one event per line: `LOGON`, `D <ClOrdID> <count>`,
//! `H <ClOrdID> <known>`, ...); see lp.cpp for the list.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::watch,
};

/// Our CompID in the tests.
pub const FIX_SENDER: &str = "FXCAST";
/// The LP's CompID in the tests.
pub const FIX_TARGET: &str = "LP";
/// The Username the LP requires on the Logon.
pub const FIX_USERNAME: &str = "fxcast-test";
/// The Password the LP requires on the Logon.
pub const FIX_PASSWORD: &str = "fix-test-password-7d1c";

/// The compiled LP: built once per target directory, rebuilt when the
/// source is newer.
pub fn fix_lp_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let source = source_dir().join("lp.cpp");
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/debug/deps/<test> -> target/debug/fix-lp
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("a target directory")
            .to_owned();
        let binary = dir.join("fix-lp");
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if modified(&binary).is_some() && modified(&binary) >= modified(&source) {
            return binary;
        }
        // Another test binary may compile at the same time: each writes its
        // own file and renames it into place.
        let partial = dir.join(format!("fix-lp.{}", std::process::id()));
        let output = std::process::Command::new("g++")
            .args(["-std=gnu++14", "-O1", "-Wno-deprecated", "-o"])
            .arg(&partial)
            .arg(&source)
            .args(["-lquickfix", "-lpthread"])
            .output()
            .expect("g++ is required: scripts/test installs it with libquickfix-dev");
        assert!(
            output.status.success(),
            "compiling the QuickFIX LP failed (scripts/test installs libquickfix-dev):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::rename(&partial, &binary).expect("the LP binary moves into place");
        binary
    })
}

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fix-lp")
}

/// A running QuickFIX LP.
pub struct FixLp {
    child: Child,
    stdin: ChildStdin,
    port: u16,
    dir: PathBuf,
    lines: watch::Receiver<Vec<String>>,
}

impl FixLp {
    /// Starts an LP with its state in `dir` on a free port.
    ///
    /// The port is drawn below the kernel's ephemeral range (which starts
    /// at 32768 by default), not bound as `127.0.0.1:0`: a port from the
    /// ephemeral range can be taken, while the LP is down for a restart, as
    /// the local port of some outgoing connection (even fxcast's own
    /// reconnect attempt, which then connects to itself).
    pub async fn start(dir: &Path) -> Self {
        use std::hash::{BuildHasher, Hasher};
        for _ in 0..20 {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            let port = 20_000 + u16::try_from(hasher.finish() % 12_000).unwrap();
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            if let Some(lp) = Self::try_start(dir, port).await {
                return lp;
            }
        }
        panic!("the QuickFIX LP found no free port in 20 attempts");
    }

    /// Starts an LP on `port` with its state in `dir` (a restart keeps
    /// QuickFIX's store, so the session resumes). Retries while the port is
    /// still held by the previous process.
    pub async fn restart(dir: &Path, port: u16) -> Self {
        for _ in 0..50 {
            if let Some(lp) = Self::try_start(dir, port).await {
                return lp;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the QuickFIX LP cannot listen on {port} again");
    }

    async fn try_start(dir: &Path, port: u16) -> Option<Self> {
        let mut child = Command::new(fix_lp_binary())
            .arg(port.to_string())
            .arg(dir)
            .arg(source_dir().join("FIX44.xml"))
            .args([FIX_TARGET, FIX_SENDER, FIX_USERNAME, FIX_PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the QuickFIX LP starts");
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let (sender, lines) = watch::channel(Vec::new());
        let first = tokio::time::timeout(crate::STARTUP, reader.next_line())
            .await
            .expect("the QuickFIX LP says whether it listens")
            .expect("readable LP output")
            .unwrap_or_default();
        if !first.starts_with("READY") {
            let _ = child.wait().await;
            return None;
        }
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                sender.send_modify(|all| all.push(line));
            }
        });
        Some(Self {
            child,
            stdin,
            port,
            dir: dir.to_owned(),
            lines,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends one command line (see lp.cpp).
    pub async fn command(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// Everything it printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }

    /// How many printed lines match `predicate`.
    pub fn count(&self, predicate: impl Fn(&str) -> bool) -> usize {
        self.lines.borrow().iter().filter(|l| predicate(l)).count()
    }

    /// Waits until `n` printed lines match `predicate` (at most 30 s).
    pub async fn wait_for(&self, n: usize, predicate: impl Fn(&str) -> bool) {
        let mut lines = self.lines.clone();
        let waited = tokio::time::timeout(
            Duration::from_secs(30),
            lines.wait_for(|all| all.iter().filter(|l| predicate(l)).count() >= n),
        )
        .await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "the LP did not print that within 30 s; it printed:\n{}",
            self.lines().join("\n")
        );
    }

    /// Kills it with SIGKILL and waits for it to exit.
    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}
