//! The server's resident memory, from /proc (Linux).

/// Resident memory of a process in KiB; `None` when unknown.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The pid of a running `fxcast serve` or `fxcast gateway` other than us.
pub fn find_server() -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_fxcast = args.first().is_some_and(|a| a.ends_with(b"fxcast"));
            let serving = args
                .get(1)
                .is_some_and(|a| *a == b"serve" || *a == b"gateway");
            (is_fxcast && serving).then_some(pid)
        })
}

/// The server to watch: `pid`, else a local `fxcast serve`/`gateway`.
pub(super) fn server(pid: Option<u32>) -> Option<u32> {
    pid.or_else(find_server)
}

/// The RSS of `pid` when there is one.
pub(super) fn rss(pid: Option<u32>) -> Option<u64> {
    pid.and_then(rss_kib)
}
