//! Reading /proc to check what the server under test leaves behind: whether a
//! process is gone, zombie children of the server, its resident memory.
use std::time::{Duration, Instant};

/// Identity and state of a live process from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    /// Start time in clock ticks since boot: tells a reused pid apart.
    pub starttime: u64,
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain anything; fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state(0) ppid(1) ... starttime is field 22 of the line = index 19 here.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        starttime: fields.get(19)?.parse().ok()?,
    })
}

/// True while the process that had `starttime` still exists (zombie included).
pub fn is_present(pid: i32, starttime: u64) -> bool {
    stat(pid).is_some_and(|s| s.starttime == starttime)
}

/// Waits up to `limit` for the process to disappear completely (reaped).
pub async fn wait_gone(pid: i32, starttime: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while is_present(pid, starttime) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Pids of all processes whose parent is `ppid`, with their stat.
pub fn children(ppid: i32) -> Vec<(i32, ProcStat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| stat(pid).map(|s| (pid, s)))
        .filter(|(_, s)| s.ppid == ppid)
        .collect()
}

/// Zombie (Z state) children of `ppid`.
pub fn zombie_children(ppid: i32) -> Vec<i32> {
    children(ppid)
        .into_iter()
        .filter(|(_, s)| s.state == 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

/// Resident set size in KiB (`VmRSS` of /proc/<pid>/status).
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        let s = stat(me).unwrap();
        assert!(matches!(s.state, 'R' | 'S'));
        assert!(is_present(me, s.starttime));
        assert!(!is_present(me, s.starttime + 1));
        assert!(vm_rss_kib(me).unwrap() > 0);
    }
}
