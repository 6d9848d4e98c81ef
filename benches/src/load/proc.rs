//! The server's resident memory and CPU time, from /proc (Linux).

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

/// CPU time (user + system) a process has used so far, in seconds, from
/// `/proc/<pid>/stat`; `None` when unknown.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime), counted from 1 over the whole line;
    // `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_second() as f64)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`), 100 when
/// `getconf` cannot say: the unit of /proc's CPU times.
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// The CPU seconds of `pid` when there is one.
pub(super) fn cpu(pid: Option<u32>) -> Option<f64> {
    pid.and_then(cpu_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_memory() {
        let me = std::process::id();
        let mut spin = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(50) {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        assert!(cpu_seconds(me).is_some_and(|s| s > 0.0));
        assert!(rss_kib(me).is_some_and(|k| k > 0));
    }
}
