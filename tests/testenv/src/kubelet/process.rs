//! Starting a container's process inside its Pod's namespaces.
//!
//! The forked child joins the Pod's network, UTS and container mount namespaces,
//! then unshares a PID namespace and forks again: the grandchild becomes PID 1
//! of its own PID namespace (as in a real container) and execs the container
//! command, while the child stays behind as a tiny shim that forwards signals
//! and exits with the container's status (128+signal when killed). The chain of
//! parent-death signals (spawner thread -> shim -> PID 1) and the kernel killing
//! every process of a PID namespace whose PID 1 dies mean nothing a container
//! starts can outlive the kubelet.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Error, Result};
use crate::process::{ENV_MARKER, on_spawner_thread, set_parent_death_signal};

/// Identity a container runs as (`securityContext.runAsUser` etc.).
#[derive(Debug, Clone, PartialEq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// Everything needed to exec one container process.
#[derive(Debug, Clone)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub run_as: Option<RunAs>,
}

/// Namespaces of the Pod (and container) to join.
#[derive(Clone, Copy)]
pub struct Namespaces<'a> {
    pub net: BorrowedFd<'a>,
    pub uts: BorrowedFd<'a>,
    pub mnt: BorrowedFd<'a>,
}

/// Starts `launch` in `ns`, stdout and stderr appended to `log` (or discarded).
pub fn spawn(
    launch: &Launch,
    ns: Namespaces<'_>,
    log: Option<&Path>,
    env_id: &str,
) -> Result<Child> {
    let program = launch
        .argv
        .first()
        .ok_or_else(|| Error::invalid("command", "[]", "container has no command"))?;
    let mut cmd = Command::new(program);
    cmd.args(&launch.argv[1..])
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .env(ENV_MARKER, env_id)
        .stdin(Stdio::null())
        .process_group(0);
    match log {
        Some(path) => {
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            let err = out
                .try_clone()
                .map_err(|e| Error::io("duplicating log fd", e))?;
            cmd.stdout(out).stderr(err);
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }

    let cwd = CString::new(launch.working_dir.as_bytes()).map_err(|_| {
        Error::invalid(
            "workingDir",
            launch.working_dir.clone(),
            "contains a NUL byte",
        )
    })?;
    let run_as = launch.run_as.clone();
    let (net, uts, mnt) = (ns.net.as_raw_fd(), ns.uts.as_raw_fd(), ns.mnt.as_raw_fd());
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls on data prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            set_parent_death_signal(parent)?;
            for (fd, kind) in [
                (net, libc::CLONE_NEWNET),
                (uts, libc::CLONE_NEWUTS),
                (mnt, libc::CLONE_NEWNS),
            ] {
                check(libc::setns(fd, kind))?;
            }
            check(libc::unshare(libc::CLONE_NEWPID))?;
            let pid = libc::fork();
            if pid < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if pid > 0 {
                shim(pid);
            }
            // PID 1 of the container's PID namespace.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            check(libc::chdir(cwd.as_ptr()))?;
            if let Some(ids) = &run_as {
                check(libc::setgroups(ids.groups.len(), ids.groups.as_ptr()))?;
                check(libc::setgid(ids.gid))?;
                check(libc::setuid(ids.uid))?;
            }
            Ok(())
        });
    }
    let program = program.clone();
    on_spawner_thread(move || cmd.spawn())?.map_err(|e| Error::io(format!("starting {program}"), e))
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

static SHIM_CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = SHIM_CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The shim: forwards signals to the container's PID 1 and mirrors its exit.
///
/// # Safety
/// Runs in a forked child of a multi-threaded process: no allocation, only
/// async-signal-safe calls.
unsafe fn shim(child: libc::pid_t) -> ! {
    SHIM_CHILD.store(child, Ordering::Relaxed);
    // SAFETY: see function docs; all calls are async-signal-safe syscalls.
    unsafe {
        // Drop inherited fds (notably std's exec-error pipe, which would keep
        // the parent's spawn() waiting for as long as the container runs).
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        loop {
            let mut status: libc::c_int = 0;
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    libc::_exit(128 + libc::WTERMSIG(status));
                }
            } else if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(255);
            }
        }
    }
}
