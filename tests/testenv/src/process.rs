//! Child processes of the test environment: each runs in its own process group,
//! logs to a file, dies with the test process (PR_SET_PDEATHSIG) and is stopped
//! with SIGTERM, a grace period, then SIGKILL of the whole group.
//!
//! Children are forked from one long-lived "spawner" thread: the kernel delivers
//! the parent-death signal when the *thread* that forked exits, and test threads
//! come and go; the spawner lives as long as the process.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Env var set on every process the environment starts; teardown checks use it
/// to prove no process (or descendant) of an environment survives.
pub const ENV_MARKER: &str = "KRUNTIMES_TESTENV_ID";

type Job = Box<dyn FnOnce() + Send>;

fn spawner() -> &'static std::sync::Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        // If the thread cannot start, jobs fail below with a clear error.
        let _ = std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        std::sync::Mutex::new(tx)
    })
}

/// Runs `f` on the spawner thread and waits for its result.
pub fn on_spawner_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    spawner()
        .lock()
        .map_err(|_| Error::Other("spawner lock poisoned".into()))?
        .send(job)
        .map_err(|_| Error::Other("spawner thread is gone".into()))?;
    rx.recv()
        .map_err(|_| Error::Other("spawner thread dropped a job".into()))
}

/// Makes the child die with SIGKILL when the spawner thread (the process) dies.
///
/// # Safety
/// Only async-signal-safe calls; meant for `pre_exec`.
pub(crate) unsafe fn set_parent_death_signal(expected_parent: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: prctl/getppid are async-signal-safe.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The parent may have died before prctl took effect.
        if libc::getppid() != expected_parent {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// A long-running child process of the control plane (etcd, kube-apiserver, ...).
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Starts `cmd` in a new process group with stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, env_id: &str) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening log {}", log.display()), e))?;
        let err = file
            .try_clone()
            .map_err(|e| Error::io("duplicating log fd", e))?;
        cmd.stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .env(ENV_MARKER, env_id)
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only calls async-signal-safe functions.
        unsafe {
            cmd.pre_exec(move || set_parent_death_signal(parent));
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = on_spawner_thread(move || cmd.spawn())?
            .map_err(|e| Error::io(format!("starting {name} ({program})"), e))?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            exit: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Returns the exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// An error describing an early exit, with the tail of the log.
    pub fn exited_error(&mut self) -> Error {
        let status = self
            .try_exit()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "still running".into());
        Error::ProcessExited {
            what: self.name.clone(),
            status,
            log: self.log.clone(),
            tail: log_tail(&self.log, 30),
        }
    }

    /// SIGTERM to the process group, up to `grace` to exit, then SIGKILL to the group.
    pub fn stop(&mut self, grace: Duration) {
        let pgid = Pid::from_raw(self.child.id() as i32);
        if self.try_exit().is_none() {
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.try_exit().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The leader may be gone while others in its group live on.
        let _ = killpg(pgid, Signal::SIGKILL);
        if self.exit.is_none() {
            self.exit = self.child.wait().ok();
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Last `n` lines of a log file (for error messages).
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read log: {e})"),
    }
}

/// Pids of live processes whose environment carries `ENV_MARKER=<env_id>`.
pub fn processes_with_marker(env_id: &str) -> Vec<u32> {
    let needle = format!("{ENV_MARKER}={env_id}");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        // Zombies have an empty environ; they are dead already.
        if let Ok(environ) = std::fs::read(entry.path().join("environ"))
            && environ
                .split(|b| *b == 0)
                .any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}
