//! Drives one execution from spawn to its Exit: waits for the leader's status,
//! enforces timeout and Cancel (SIGTERM to the group, wait for the group to go
//! or the grace to pass, SIGKILL the group), kills what is left of the group
//! when the leader exits so nothing outlives the attempt, lets the output
//! drain and records the Exit.
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use kruntimes_proto::runtime::v1::{Exit, exit};
use kruntimes_proto::time::to_timestamp;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use crate::execution::{CancelOrder, Execution, StopReason};
use crate::pump::PumpEnd;
use crate::reaper::ProcessExit;

/// How often to check whether a signalled group is gone.
const GROUP_POLL: Duration = Duration::from_millis(10);
/// How long to wait for a SIGKILLed group to disappear (a process in
/// uninterruptible sleep can take a while).
const GROUP_GONE_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything the supervisor needs about one started execution.
pub struct Supervised {
    pub exec: Arc<Execution>,
    pub exit: oneshot::Receiver<ProcessExit>,
    pub timeout: Option<Duration>,
    pub grace: Duration,
    pub stdout: JoinHandle<PumpEnd>,
    pub stderr: JoinHandle<PumpEnd>,
    /// The server's copies of the pipes' write ends (see `Spawned`).
    pub writers: [OwnedFd; 2],
    pub leader_done: watch::Sender<bool>,
}

pub async fn supervise(s: Supervised) {
    let Supervised {
        exec,
        exit: mut exit_rx,
        timeout,
        grace,
        stdout,
        stderr,
        writers,
        leader_done,
    } = s;
    let pgid = Pid::from_raw(exec.pid);
    let mut orders = exec.cancel_orders();
    let timeout_at = timeout.map(|t| exec.started + t);
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);

    let mut leader: Option<ProcessExit> = None;
    let mut term_sent = false;
    let mut killed = false;
    let order = loop {
        let order = *orders.borrow_and_update();
        if order.is_some() && !term_sent {
            signal_group(pgid, Signal::SIGTERM);
            term_sent = true;
        }
        match (leader, order) {
            // Normal end: the rest of the group is killed below.
            (Some(_), None) => break None,
            // Cancelling: the group had its grace, or is gone already.
            (Some(_), Some(o)) if killed || group_gone(pgid) => break Some(o),
            _ => {}
        }
        let kill_at = order.filter(|_| !killed).map(|o| o.kill_at);
        tokio::select! {
            r = &mut exit_rx, if leader.is_none() => {
                leader = Some(r.unwrap_or_else(|_| {
                    // Unreachable: the reaper always sends before dropping.
                    tracing::error!(id = %exec.id, "exit status channel closed");
                    ProcessExit::Signal(Signal::SIGKILL as i32)
                }));
                exec.mark_leader_exited();
            }
            r = orders.changed() => {
                if r.is_err() {
                    // The sender lives in `exec`; cannot happen while we hold it.
                    tracing::error!(id = %exec.id, "cancel channel closed");
                }
            }
            _ = sleep_until(timeout_at.unwrap_or(far).into()), if timeout_at.is_some() && order.is_none() => {
                exec.request_cancel(grace, StopReason::Timeout);
            }
            _ = sleep_until(kill_at.unwrap_or(far).into()), if kill_at.is_some() => {
                signal_group(pgid, Signal::SIGKILL);
                killed = true;
            }
            _ = tokio::time::sleep(GROUP_POLL), if term_sent && !killed && leader.is_some() => {}
        }
    };

    // Whatever is left of the group dies with the leader.
    signal_group(pgid, Signal::SIGKILL);
    let group_cleared = wait_group_gone(pgid).await;
    // Nobody of the group writes any more: the pipes end once the server's
    // copies close (unless an escaped process holds one; the pumps bound
    // that wait).
    drop(writers);
    let _ = leader_done.send(true);
    let out_end = stdout.await.unwrap_or(PumpEnd::Abandoned);
    let err_end = stderr.await.unwrap_or(PumpEnd::Abandoned);

    let status = leader.unwrap_or(ProcessExit::Signal(Signal::SIGKILL as i32));
    let exit = Exit {
        status: Some(match status {
            ProcessExit::Code(c) => exit::Status::Code(c),
            ProcessExit::Signal(s) => exit::Status::Signal(s),
        }),
        timed_out: order.is_some_and(|o| o.why == StopReason::Timeout),
        cancelled: order.is_some_and(|o| o.why != StopReason::Timeout),
        started_at: Some(to_timestamp(exec.started_at)),
        finished_at: Some(to_timestamp(SystemTime::now())),
        message: message(
            status,
            order,
            killed,
            timeout,
            group_cleared,
            out_end,
            err_end,
        ),
        stdout_length: 0,
        stderr_length: 0,
    };
    tracing::debug!(id = %exec.id, pid = exec.pid, message = %exit.message, "execution finished");
    exec.finish(exit);
}

fn signal_group(pgid: Pid, sig: Signal) {
    match killpg(pgid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw(), ?sig, error = %e, "killpg failed"),
    }
}

/// True when no process (zombies included) is left in the group.
fn group_gone(pgid: Pid) -> bool {
    matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

async fn wait_group_gone(pgid: Pid) -> bool {
    let deadline = Instant::now() + GROUP_GONE_TIMEOUT;
    while !group_gone(pgid) {
        if Instant::now() >= deadline {
            tracing::warn!(
                pgid = pgid.as_raw(),
                "process group still present after SIGKILL"
            );
            return false;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
    true
}

fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}

fn message(
    status: ProcessExit,
    order: Option<CancelOrder>,
    killed: bool,
    timeout: Option<Duration>,
    group_cleared: bool,
    out_end: PumpEnd,
    err_end: PumpEnd,
) -> String {
    let mut m = match status {
        ProcessExit::Code(c) => format!("exited with code {c}"),
        ProcessExit::Signal(s) => format!("killed by {} ({s})", signal_name(s)),
    };
    if let Some(o) = order {
        match o.why {
            StopReason::Timeout => {
                let t = timeout.unwrap_or_default();
                m.push_str(&format!("; timed out after {t:?}"));
            }
            StopReason::Cancel => m.push_str("; cancelled"),
            StopReason::Shutdown => m.push_str("; cancelled (the runtime server stopped)"),
        }
        if killed {
            m.push_str(&format!(", SIGKILL after {:?} grace", o.grace));
        } else {
            m.push_str(", ended after SIGTERM");
        }
    }
    if !group_cleared {
        m.push_str("; some processes of its group did not die after SIGKILL");
    }
    for (name, end) in [("stdout", out_end), ("stderr", err_end)] {
        if end == PumpEnd::Abandoned {
            m.push_str(&format!(
                "; {name} was held open by a process outside the group, later output was not read"
            ));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stopped(why: StopReason, killed: bool) -> String {
        let order = CancelOrder {
            kill_at: Instant::now(),
            grace: Duration::from_secs(1),
            why,
        };
        message(
            ProcessExit::Signal(if killed { 9 } else { 15 }),
            Some(order),
            killed,
            Some(Duration::from_secs(5)),
            true,
            PumpEnd::Eof,
            PumpEnd::Eof,
        )
    }

    /// The Exit's message says why the execution was stopped; only the
    /// flags (`timed_out`, `cancelled`) cannot tell a server's own stop
    /// from a client's Cancel.
    #[test]
    fn the_message_says_why_an_execution_was_stopped() {
        assert_eq!(
            stopped(StopReason::Cancel, false),
            "killed by SIGTERM (15); cancelled, ended after SIGTERM"
        );
        assert_eq!(
            stopped(StopReason::Timeout, true),
            "killed by SIGKILL (9); timed out after 5s, SIGKILL after 1s grace"
        );
        assert_eq!(
            stopped(StopReason::Shutdown, true),
            "killed by SIGKILL (9); cancelled (the runtime server stopped), SIGKILL after 1s grace"
        );
    }
}
