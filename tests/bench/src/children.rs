//! The long-lived processes the bench starts (runtimed, the bare chain,
//! nginx) and runtimed's data dir, so that Ctrl-C or SIGTERM stops and
//! removes them instead of leaving them behind: each start registers its
//! pid, each normal stop releases it, and the signal watcher stops what is
//! left before the bench exits with 130.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a stopped process may take to exit (runtimed stops its Runtime
/// Servers first) before it is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Live {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

/// Set once a signal came: the measurement failing under the stop is not a
/// result to report.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

static LIVE: Mutex<Live> = Mutex::new(Live {
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A process to stop if the bench is interrupted.
pub fn adopt(pid: u32) {
    live().pids.push(pid);
}

/// The process was stopped (and reaped) the normal way.
pub fn release(pid: u32) {
    live().pids.retain(|p| *p != pid);
}

/// A directory to remove if the bench is interrupted (after the processes
/// that use it stopped).
pub fn adopt_dir(dir: PathBuf) {
    live().dirs.push(dir);
}

pub fn release_dir(dir: &std::path::Path) {
    live().dirs.retain(|d| d != dir);
}

/// On the first SIGINT or SIGTERM: stop every adopted process, remove the
/// adopted directories and exit with 130. Runs on the runtime's workers, so
/// it fires even while the bench's own thread is busy measuring.
/// SIGINT is left alone when it was ignored at start (a background job of
/// a shell script): the shell meant Ctrl-C not to reach the bench.
pub fn stop_on_signal(rt: &tokio::runtime::Runtime) {
    use tokio::signal::unix::{SignalKind, signal};
    // The handlers register with this runtime's driver.
    let _in_runtime = rt.enter();
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        // Without the handler the default action (exit) stays.
        return;
    };
    let mut int = if ignored(Signal::SIGINT) {
        None
    } else {
        signal(SignalKind::interrupt()).ok()
    };
    rt.spawn(async move {
        let interrupt = async {
            match int.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("kruntimes-bench: interrupted; stopping the processes it started");
        stop_all();
        std::process::exit(130);
    });
}

/// After an interruption, waits for the watcher to finish stopping and
/// exit; returns at once otherwise.
pub fn exit_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop_all() {
    let Live { pids, dirs } = std::mem::take(&mut *live());
    let pids: Vec<Pid> = pids
        .into_iter()
        .filter_map(|p| i32::try_from(p).ok().map(Pid::from_raw))
        .collect();
    for &pid in &pids {
        let _ = kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_PATIENCE;
    while pids.iter().any(|&p| running(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids.iter().filter(|&&p| running(p)) {
        let _ = kill(pid, Signal::SIGKILL);
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether this process ignores `sig` (the `SigIgn` mask of
/// /proc/self/status).
fn ignored(sig: Signal) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (sig as i32 - 1)) != 0)
}

/// Alive and not yet a zombie (nobody reaps it once the bench exits; init
/// does).
fn running(pid: Pid) -> bool {
    u32::try_from(pid.as_raw()).is_ok_and(crate::procfs::running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_which_signals_are_ignored() {
        // The Rust runtime ignores SIGPIPE; SIGTERM is never ignored here.
        assert!(ignored(Signal::SIGPIPE));
        assert!(!ignored(Signal::SIGTERM));
    }

    #[test]
    fn a_zombie_or_a_missing_process_is_not_running() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        assert!(running(pid));
        kill(pid, Signal::SIGKILL).unwrap();
        // Unreaped: a zombie.
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!running(pid));
        child.wait().unwrap();
        assert!(!running(pid));
    }
}
