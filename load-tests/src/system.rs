//! What the run needs from the machine: loopback addresses, the open-files limit, the
//! server's resident memory and the generator's own CPU time, all read from `/proc` (Linux).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

/// Largest number of source addresses a range may expand to.
const MAX_SOURCES: usize = 4096;

/// Parse `127.0.1.1-127.0.1.20,127.0.2.1`: comma-separated addresses and inclusive IPv4
/// ranges, all in 127.0.0.0/8. An empty string means no explicit source address.
pub fn parse_sources(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |s: &str| -> anyhow::Result<Ipv4Addr> {
            let ip: Ipv4Addr = s.parse().with_context(|| format!("source address {s:?}"))?;
            ensure!(
                ip.is_loopback(),
                "source address {ip} is not in 127.0.0.0/8"
            );
            Ok(ip)
        };
        let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
        ensure!(first <= last, "empty source range {part:?}");
        let count = (last - first) as usize + 1;
        ensure!(
            out.len() + count <= MAX_SOURCES,
            "more than {MAX_SOURCES} source addresses"
        );
        out.extend((first..=last).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
    }
    Ok(out)
}

/// Traffic goes to loopback only.
pub fn check_loopback(server: SocketAddr) -> anyhow::Result<()> {
    ensure!(
        server.ip().is_loopback(),
        "server {server} is not a loopback address; this tool only targets 127.0.0.0/8 or ::1"
    );
    Ok(())
}

/// The soft and hard limits on open files of this process (`None` is unlimited).
pub fn open_files_limit() -> anyhow::Result<(Option<u64>, Option<u64>)> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    parse_open_files(&limits).context("no \"Max open files\" in /proc/self/limits")
}

fn parse_open_files(limits: &str) -> Option<(Option<u64>, Option<u64>)> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let value = |v: &str| {
        if v == "unlimited" {
            Some(None)
        } else {
            v.parse().ok().map(Some)
        }
    };
    Some((value(fields.next()?)?, value(fields.next()?)?))
}

/// Fail early when `sockets` connections would not fit under the soft limit.
pub fn check_open_files(sockets: u64) -> anyhow::Result<()> {
    let (soft, hard) = open_files_limit()?;
    let needed = sockets + 64;
    if let Some(soft) = soft.filter(|&soft| needed > soft) {
        match hard {
            Some(hard) if needed > hard => bail!(
                "{sockets} connections need about {needed} open files but the hard limit is \
                 {hard}: split the users over several processes with --first"
            ),
            _ => {
                let hard = hard.map_or("unlimited".to_string(), |h| h.to_string());
                bail!(
                    "{sockets} connections need about {needed} open files but the soft limit \
                     is {soft}: raise it with `ulimit -n {hard}` in this shell"
                )
            }
        }
    }
    Ok(())
}

/// The server's resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let kib = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(kib)
}

/// Clock ticks per second of the times in `/proc/<pid>/stat` (`USER_HZ`, 100 on every
/// architecture Linux runs this tool on).
const USER_HZ: u64 = 100;

/// CPU time this process has used so far, user plus system, over all its threads (exited
/// ones included): `utime + stime` of `/proc/self/stat`, in 10 ms ticks.
pub fn process_cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    parse_cpu_ticks(&stat)
        .map(|ticks| Duration::from_millis(ticks * 1000 / USER_HZ))
        .context("no utime/stime in /proc/self/stat")
}

/// CPU time process `pid` has used so far (user plus system, all its threads): how the
/// server's CPU per delivered message is measured (`chat --server-pid`).
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| Duration::from_millis(ticks * 1000 / USER_HZ))
        .with_context(|| format!("no utime/stime in {path}"))
}

/// The CPU time of the server processes `pids` together (`None` without any).
pub fn server_cpu(pids: &[u32]) -> anyhow::Result<Option<Duration>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = Duration::ZERO;
    for &pid in pids {
        total += cpu_time_of(pid)?;
    }
    Ok(Some(total))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line; the command name in
/// field 2 may contain spaces and parentheses, so fields are counted from its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The generator's CPU time and wall time from a starting point: how busy the generator
/// itself was while it measured the server.
#[derive(Clone, Copy)]
pub struct CpuMeter {
    cpu: Duration,
    wall: Instant,
}

impl CpuMeter {
    /// From now. If `/proc/self/stat` cannot be read (checked once at start-up with
    /// [`process_cpu_time`]), CPU figures are zero.
    pub fn start() -> CpuMeter {
        CpuMeter {
            cpu: process_cpu_time().unwrap_or_default(),
            wall: Instant::now(),
        }
    }

    /// CPU time used since the start.
    pub fn cpu(&self) -> Duration {
        process_cpu_time()
            .unwrap_or_default()
            .saturating_sub(self.cpu)
    }

    pub fn wall(&self) -> Duration {
        self.wall.elapsed()
    }
}

/// CPU seconds over wall seconds, in percent (100: one core busy all the time).
pub fn cpu_percent(cpu: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
}

/// CPU per event, in microseconds (0 without events).
pub fn cpu_us_per(cpu: Duration, events: u64) -> f64 {
    if events == 0 {
        return 0.0;
    }
    cpu.as_secs_f64() * 1e6 / events as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges() {
        let ips = parse_sources("127.0.1.1-127.0.1.3, 127.0.2.9").unwrap();
        let text: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(text, ["127.0.1.1", "127.0.1.2", "127.0.1.3", "127.0.2.9"]);
        assert_eq!(parse_sources("127.0.0.255-127.0.1.0").unwrap().len(), 2);
        assert!(parse_sources("").unwrap().is_empty());
        assert!(parse_sources("10.0.0.1").is_err());
        assert!(parse_sources("127.0.1.5-127.0.1.1").is_err());
        assert!(parse_sources("127.0.0.1-127.255.255.255").is_err());
        assert!(parse_sources("127.0.0.x").is_err());
    }

    #[test]
    fn loopback_only() {
        assert!(check_loopback("127.0.0.1:5222".parse().unwrap()).is_ok());
        assert!(check_loopback("[::1]:5222".parse().unwrap()).is_ok());
        assert!(check_loopback("192.168.1.1:5222".parse().unwrap()).is_err());
    }

    #[test]
    fn proc_parsing() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 20000                files\n";
        assert_eq!(parse_open_files(limits), Some((Some(1024), Some(20000))));
        let limits = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files(limits), Some((None, None)));
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   12345 kB\n"), Some(12345));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(open_files_limit().is_ok());
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn cpu_time() {
        let stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 9 0 1";
        assert_eq!(parse_cpu_ticks(stat), Some(281));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        let meter = CpuMeter::start();
        let before = process_cpu_time().unwrap();
        // Burn a little CPU so the clock moves by at least a tick.
        let mut x = 0u64;
        while process_cpu_time().unwrap() < before + Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(meter.cpu() >= Duration::from_millis(20));
        assert!(cpu_time_of(std::process::id()).unwrap() >= Duration::from_millis(20));
        assert!(cpu_time_of(u32::MAX).is_err());
        assert!(meter.wall() > Duration::ZERO);
        assert_eq!(
            cpu_percent(Duration::from_millis(500), Duration::from_secs(1)),
            50.0
        );
        assert_eq!(cpu_percent(Duration::from_secs(1), Duration::ZERO), 0.0);
        assert_eq!(cpu_us_per(Duration::from_millis(3), 1000), 3.0);
        assert_eq!(cpu_us_per(Duration::from_millis(3), 0), 0.0);
    }
}
