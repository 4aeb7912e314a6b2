//! Reads process facts from /proc: resident memory and a process's children.

use std::path::Path;

/// VmRSS of `pid` in KiB, or `None` when the process is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

pub fn rss_mib(pid: u32) -> Option<f64> {
    rss_kib(pid).map(|k| k as f64 / 1024.0)
}

/// CPU time (user + system) `pid` has used so far, in milliseconds, counting
/// threads that already exited. /proc reports it in USER_HZ ticks, which the
/// Linux ABI fixes at 100 per second.
pub fn cpu_ms(pid: u32) -> Option<f64> {
    // After the comm: state is field 3, utime field 14, stime field 15.
    let stat = stat_after_comm(pid)?;
    let mut fields = stat.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 * 10.0)
}

/// CPU time the hypervisor ran something else while this VM's vCPUs had
/// work ("steal" in /proc/stat), in ms summed over all CPUs. Wall-clock
/// figures measured while it grows are slowed by the host, not by us.
pub fn steal_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    steal_ms_of(&s)
}

fn steal_ms_of(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // cpu user nice system idle iowait irq softirq steal ...
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(ticks as f64 * 10.0)
}

/// Load averages (1, 5, 15 min) from /proc/loadavg.
pub fn loadavg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// /proc/<pid>/stat from field 3 (the state) on: what follows the
/// parenthesised comm, which may itself contain spaces or parentheses.
fn stat_after_comm(pid: u32) -> Option<String> {
    let mut stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let end = stat.rfind(')')? + 1;
    stat.drain(..end);
    Some(stat)
}

/// Parent pid (field 4).
fn ppid(pid: u32) -> Option<u32> {
    stat_after_comm(pid)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Alive and not yet a zombie (state, field 3, other than `Z`).
pub fn running(pid: u32) -> bool {
    stat_after_comm(pid).is_some_and(|s| s.split_whitespace().next().is_some_and(|st| st != "Z"))
}

/// The direct child of `parent` whose executable is `exe`.
pub fn child_running(parent: u32, exe: &Path) -> Option<u32> {
    let want = std::fs::canonicalize(exe).ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if ppid(pid)? != parent {
            return None;
        }
        let got = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        (got == want).then_some(pid)
    })
}

/// Number of CPUs online, memory, CPU model and kernel, for the report header.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn memory_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
        })
        .map(|k| k / (1024.0 * 1024.0))
        .unwrap_or(0.0)
}

/// The filesystem `path` lives on, from /proc/self/mountinfo: type, source
/// and what changes metadata costs (an ext4 without a journal skips every
/// inode freed in the last minute when it allocates one; `discard` makes
/// each freed block a synchronous trim). `None` when it cannot be told.
pub fn filesystem(path: &Path) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (mount, fstype, source, options) = info
        .lines()
        .filter_map(parse_mountinfo)
        .filter(|(mount, ..)| path.starts_with(mount))
        .max_by_key(|(mount, ..)| mount.len())?;
    let mut notes = Vec::new();
    if fstype == "ext4" {
        let dev = source.rsplit('/').next().unwrap_or(source);
        let journaled = std::fs::read_dir("/proc/fs/jbd2").is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(dev))
        });
        if !journaled {
            notes.push("no journal");
        }
    }
    if options.split(',').any(|o| o == "discard") {
        notes.push("discard");
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(", {}", notes.join(", "))
    };
    Some(format!("{fstype} {source} mounted on {mount}{notes}"))
}

/// (mount point, fs type, source, mount and super options) of one line.
fn parse_mountinfo(line: &str) -> Option<(&str, &str, &str, String)> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let mut right = right.split(' ');
    let (fstype, source, sup) = (right.next()?, right.next()?, right.next().unwrap_or(""));
    Some((
        left.get(4)?,
        fstype,
        source,
        format!("{},{sup}", left.get(5)?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_and_child_lookup() {
        let me = std::process::id();
        let rss = rss_kib(me).unwrap_or(0);
        assert!(rss > 100, "VmRSS of this test process: {rss} KiB");
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let sleep = std::fs::read_link(format!("/proc/{}/exe", child.id())).expect("exe");
        let found = child_running(me, &sleep);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Some(child.id()));
        assert_eq!(child_running(me, Path::new("/nonexistent")), None);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        // Spin until the counter moves (the machine may be busy, so no fixed
        // wall-clock budget is assumed beyond a generous bound).
        let me = std::process::id();
        let before = cpu_ms(me).expect("cpu");
        let start = std::time::Instant::now();
        let mut after = before;
        while after - before < 50.0 && start.elapsed() < std::time::Duration::from_secs(120) {
            for i in 0..1_000_000u64 {
                std::hint::black_box(i);
            }
            after = cpu_ms(me).expect("cpu");
        }
        assert!(after - before >= 50.0, "{before} -> {after}");
        assert!(loadavg().is_some());
        assert!(steal_ms().is_some());
        let stat = "cpu  232852 0 47268 200840 3029 0 772 4257 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(steal_ms_of(stat), Some(42570.0));
    }

    #[test]
    fn mountinfo_lines() {
        let l = "29 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard,resv_strict";
        let (mount, fstype, source, options) = parse_mountinfo(l).unwrap();
        assert_eq!((mount, fstype, source), ("/", "ext4", "/dev/vda"));
        assert!(options.split(',').any(|o| o == "discard"));
        assert!(parse_mountinfo("garbage").is_none());
    }

    #[test]
    fn the_root_filesystem_is_found() {
        let fs = filesystem(Path::new("/")).unwrap();
        assert!(fs.contains("mounted on /"), "{fs}");
    }
}
