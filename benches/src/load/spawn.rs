//! Starting the servers of a load run: pinned to cores with `taskset`,
//! their log drained so they never block on it.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, bail};

/// A child process, killed and reaped when dropped: on every error path of
/// a run as at its end.
#[derive(Debug)]
pub(super) struct Process(Child);

impl Process {
    pub(super) fn id(&self) -> u32 {
        self.0.id()
    }

    pub(super) fn child(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl From<Child> for Process {
    fn from(child: Child) -> Self {
        Self(child)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `within` for a line containing `marker` on `child`'s piped
/// stderr (drained to its end, so the child never blocks on it). Returns
/// the child, guarded, and what it logged up to that line (that line
/// last); `what` names it in errors, after which the child is killed.
///
/// # Errors
/// When it exits first (with what it logged) or is not ready in time.
pub(super) fn wait_until(
    child: Child,
    what: &str,
    marker: &'static str,
    within: Duration,
) -> anyhow::Result<(Process, String)> {
    let mut process = Process::from(child);
    let stderr = process
        .0
        .stderr
        .take()
        .with_context(|| format!("{what}'s stderr"))?;
    match drain_until(stderr, marker).recv_timeout(within) {
        Ok(Ok(line)) => Ok((process, line)),
        Ok(Err(log)) => bail!("{what} exited before it was ready:\n{log}"),
        Err(_) => bail!("{what} was not ready within {within:?}"),
    }
}

/// The program `name`: `$<env>` when set, else the first `name` on `PATH`,
/// else `name` in `fallback_dir` (where Debian installs servers, often not
/// on a user's `PATH`).
pub(super) fn program(env: &str, name: &str, fallback_dir: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([fallback_dir.into()])
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| std::path::Path::new(fallback_dir).join(name))
}

/// `program` under `taskset -c <cpus>` when pinned: taskset execs it, so the
/// child's pid is the server's.
pub(super) fn pinned(cpus: Option<&str>, program: &std::path::Path) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Reads `log` to its end on a thread of its own (so the child never blocks
/// on a full pipe) and sends what was logged up to and including the first
/// line containing `marker` (that line last), or what was logged when it
/// ended first.
pub(super) fn drain_until(
    log: impl std::io::Read + Send + 'static,
    marker: &'static str,
) -> mpsc::Receiver<Result<String, String>> {
    let (ready_tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut ready_tx = Some(ready_tx);
        for line in BufReader::new(log).lines() {
            let Ok(line) = line else { break };
            if ready_tx.is_none() {
                continue;
            }
            let found = line.contains(marker);
            seen.push(line);
            if found && let Some(tx) = ready_tx.take() {
                let _ = tx.send(Ok(std::mem::take(&mut seen).join("\n")));
            }
        }
        if let Some(tx) = ready_tx {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    ready
}
