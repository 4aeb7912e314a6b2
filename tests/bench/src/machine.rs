//! Describes where and when the bench ran, for the report header.

use crate::procfs;
use crate::report::Machine;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The machine now; `loadavg_start` is what procfs::loadavg gave at the start,
/// `data_dir` runtimed's data directory (its filesystem matters: a Run
/// creates and removes files and directories there).
pub fn describe(loadavg_start: Option<[f64; 3]>, data_dir: &Path) -> Machine {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Machine {
        date_utc: utc(secs),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model: procfs::cpu_model(),
        kernel: kernel(),
        memory_gib: procfs::memory_gib(),
        loadavg_start,
        loadavg_end: procfs::loadavg(),
        data_dir: format!(
            "{} on {}",
            data_dir.display(),
            procfs::filesystem(data_dir).unwrap_or_else(|| "an unknown filesystem".into())
        ),
    }
}

/// The kernel release, with any scheduler options it was booted with: they
/// decide where woken processes run, and a Run crosses several processes
/// (e.g. `sched_vcpu_pack`, which packs runnable tasks onto fewer vCPUs).
fn kernel() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut notes = Vec::new();
    let sched: Vec<&str> = scheduler_options(&cmdline);
    if !sched.is_empty() {
        notes.push(format!("booted with {}", sched.join(" ")));
    }
    let reporting = |name: &str| {
        std::fs::read_to_string(format!("/sys/module/page_reporting/parameters/{name}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    if let Some(note) = page_reporting(reporting("page_reporting_order"), reporting("reported_kib"))
    {
        notes.push(note);
    }
    if notes.is_empty() {
        release
    } else {
        format!("{release} ({})", notes.join("; "))
    }
}

/// Free page reporting (a VM handing the guest's free memory back to its
/// host): the next touch of a reported page faults in the host, so writing
/// fresh page-cache pages (a Run's spool) costs several times what reusing
/// pages does (the raw-pipe baseline reuses one pipe's). Orders above 10
/// report nothing.
fn page_reporting(order: Option<u64>, reported_kib: Option<u64>) -> Option<String> {
    let order = order.filter(|o| *o <= 10)?;
    let gib = reported_kib.unwrap_or(0) as f64 / (1 << 20) as f64;
    Some(format!(
        "free page reporting on, order {order}: {gib:.1} GiB handed back to the host since boot"
    ))
}

fn scheduler_options(cmdline: &str) -> Vec<&str> {
    cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .filter(|w| w.starts_with("sched") || w.starts_with("isolcpus") || w.starts_with("nohz"))
        .collect()
}

/// `YYYY-MM-DD HH:MM` for seconds since the epoch (civil-from-days, proleptic
/// Gregorian), so the bench needs no date crate.
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_options_from_the_kernel_command_line() {
        let c = "console=ttyS0 sched_vcpu_pack=15 quiet nohz_full=1 -- --sched_x=1";
        assert_eq!(scheduler_options(c), ["sched_vcpu_pack=15", "nohz_full=1"]);
        assert!(scheduler_options("console=ttyS0 quiet").is_empty());
    }

    #[test]
    fn free_page_reporting_is_named_when_it_can_report() {
        assert_eq!(
            page_reporting(Some(9), Some(3 << 20)).as_deref(),
            Some("free page reporting on, order 9: 3.0 GiB handed back to the host since boot")
        );
        assert_eq!(
            page_reporting(Some(11), Some(5)),
            None,
            "order 11 reports nothing"
        );
        assert_eq!(page_reporting(None, None), None, "no page_reporting module");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(1_767_225_599), "2025-12-31 23:59");
    }
}
