//! A listener out of file descriptors backs off and accepts again once one
//! is free. Its own test binary: it lowers this process's open-files limit.
#![cfg(target_os = "linux")]

use std::{os::fd::AsRawFd, path::Path, time::Duration};

use fxcast_listener::{Listener, ListenerConfig, bind};
use rlimit::Resource;
use tokio::{net::TcpStream, sync::mpsc};

const CLIENTS: usize = 20;
const DEADLINE: Duration = Duration::from_secs(10);

/// The highest file descriptor this process holds.
fn highest_fd() -> u64 {
    std::fs::read_dir(Path::new("/proc/self/fd"))
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap()
}

/// The open-files limit lowered until dropped, also when the test fails
/// (a panic's backtrace needs files).
struct Limit {
    soft: u64,
    hard: u64,
}

impl Limit {
    fn lower_to(soft: u64) -> Self {
        let (old, hard) = rlimit::getrlimit(Resource::NOFILE).unwrap();
        rlimit::setrlimit(Resource::NOFILE, soft, hard).unwrap();
        Self { soft: old, hard }
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        let _ = rlimit::setrlimit(Resource::NOFILE, self.soft, self.hard);
    }
}

/// Waits, up to [`DEADLINE`], for `done` to hold.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited in vain: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn accepts_again_once_a_descriptor_is_free() {
    let listener = Listener::new(
        "test",
        bind("127.0.0.1:0".parse().unwrap()).unwrap(),
        ListenerConfig::default(),
        None,
    );
    let addr = listener.local_addr().unwrap();
    let stats = listener.stats();
    // Connected before the limit drops: they wait in the kernel's backlog.
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(TcpStream::connect(addr).await.unwrap());
    }
    // New descriptors take the lowest free number: fill every gap below
    // the highest, then leave room for two more.
    let highest = highest_fd();
    let mut fillers = Vec::new();
    let top = loop {
        let filler = std::fs::File::open("/dev/null").unwrap();
        let fd = u64::try_from(filler.as_raw_fd()).unwrap();
        fillers.push(filler);
        if fd >= highest {
            break fd;
        }
    };
    let _restore = Limit::lower_to(top + 3);

    let (accepted, mut conns) = mpsc::unbounded_channel();
    let acceptor = tokio::spawn(async move {
        loop {
            let conn = listener.accept().await;
            if accepted.send(conn).is_err() {
                return;
            }
        }
    });
    until("the accept loop runs out of descriptors", || {
        stats.fd_exhausted() > 0
    })
    .await;
    let held = stats.accepted();
    assert!(
        (held as usize) < CLIENTS,
        "{held} accepted: the limit did not bite"
    );

    // Each accepted connection closed frees its descriptor: the loop's next
    // attempt, a backoff later, accepts another client.
    until("every client is accepted", || {
        while let Ok(conn) = conns.try_recv() {
            drop(conn);
        }
        stats.accepted() as usize == CLIENTS
    })
    .await;
    acceptor.abort();
}
