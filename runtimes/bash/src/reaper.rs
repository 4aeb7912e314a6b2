//! The server's single reaper. The server is a child subreaper, so orphaned
//! grandchildren become its children; one loop calls `waitpid(-1, WNOHANG)` on
//! every SIGCHLD and hands each status to the pid registered for it (or drops
//! it for an orphan). Nothing else in the process may wait for children:
//! a second waiter would steal statuses and turn exits into "-1".
//!
//! Registration and spawn happen under the same lock as `waitpid`, so a child
//! that exits immediately cannot be reaped before its pid is registered, and
//! glibc's own wait for a child whose exec failed (inside `posix_spawn`)
//! cannot race with this loop.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessExit {
    Code(i32),
    Signal(i32),
}

/// Safety net in case a SIGCHLD is coalesced with one handled mid-loop.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, oneshot::Sender<ProcessExit>>>,
}

impl Reaper {
    /// Makes this process a child subreaper and starts the reaping loop.
    /// Must run inside the tokio runtime, before any child is spawned.
    pub fn install() -> std::io::Result<Arc<Self>> {
        nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Self::default());
        let r = Arc::clone(&reaper);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                }
                r.reap();
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ProcessExit>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `spawn` (which returns the new pid) and registers the pid before
    /// any exit can be reaped.
    pub fn spawn<E>(
        &self,
        spawn: impl FnOnce() -> Result<i32, E>,
    ) -> Result<(i32, oneshot::Receiver<ProcessExit>), E> {
        let mut waiting = self.lock();
        let pid = spawn()?;
        let (tx, rx) = oneshot::channel();
        waiting.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Reaps every child that has exited. Uses libc directly: nix's
    /// `WaitStatus` cannot represent real-time signals and would turn such a
    /// death into an error after the status was already consumed.
    fn reap(&self) {
        let mut waiting = self.lock();
        loop {
            let mut raw: libc::c_int = 0;
            // SAFETY: waitpid only writes the status int we own.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG | libc::__WALL) };
            if pid == 0 {
                break;
            }
            if pid < 0 {
                match Errno::last() {
                    Errno::EINTR => continue,
                    Errno::ECHILD => break,
                    e => {
                        tracing::warn!(error = %e, "waitpid failed");
                        break;
                    }
                }
            }
            let exit = if libc::WIFEXITED(raw) {
                ProcessExit::Code(libc::WEXITSTATUS(raw))
            } else if libc::WIFSIGNALED(raw) {
                ProcessExit::Signal(libc::WTERMSIG(raw))
            } else {
                // Stops and continues are not requested; nothing to do.
                continue;
            };
            match waiting.remove(&pid) {
                Some(tx) => {
                    // The receiver may be gone if its supervisor ended; harmless.
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid, ?exit, "reaped orphan"),
            }
        }
    }
}
