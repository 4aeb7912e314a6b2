//! Local mode: runtimed starts the built-in Runtime Servers itself, restarts
//! them when they crash (with back-off) and stops them when it stops.
//!
//! A server outlives a runtimed that is killed (it runs in its own process
//! group), so a restarted runtimed first tries to *adopt* the server still
//! listening on the socket — its Runs are still running there — and watches
//! that process by pid (from SO_PEERCRED) instead of waiting on it.

use crate::runtime_server::RuntimeServer;
use kruntimes_proto::runtime::v1 as rpb;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::watch;

/// How to start one Runtime Server process.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub socket: PathBuf,
    /// How long the server may take to stop after SIGTERM (see
    /// [`stop_grace`]) before it is killed.
    pub stop_grace: Duration,
}

/// How long a fresh server may take to pass its handshake.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// A server that stayed up this long restarts without accumulated back-off.
const HEALTHY_RESET: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// What a server gets to exit after SIGTERM beyond its Runs' grace: their
/// groups' teardown, the output drained, its own exit.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Time a server gets to exit after SIGTERM when runtimed stops, when it
/// gives running Runs `run_grace` (its `--shutdown-grace-ms`) between
/// SIGTERM and SIGKILL: killed earlier, it could not kill their groups.
pub fn stop_grace(run_grace: Duration) -> Duration {
    run_grace + STOP_MARGIN
}

pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s} ({})", signal_name(s)),
        _ => "unknown status".into(),
    }
}

pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// Runs the server until `shutdown` turns true.
pub async fn supervise(
    server: Arc<RuntimeServer>,
    cmd: ServerCommand,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Some(pid) = adopt(&server, &cmd).await {
        tracing::info!(runtime = %server.name, pid, "adopted the runtime server left running by a previous runtimed");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => if !alive(pid) { break },
                _ = stopping(&mut shutdown) => {
                    stop_pid(pid, cmd.stop_grace).await;
                    return;
                }
            }
        }
        let reason = format!("runtime server {} (adopted, pid {pid}) exited", server.name);
        tracing::error!(runtime = %server.name, "{reason}; starting a new one");
        server.set_health(|h| {
            h.ready = false;
            h.reason = reason;
        });
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let _ = std::fs::remove_file(&cmd.socket);
        let mut child = match Command::new(&cmd.program)
            .args(&cmd.args)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let reason = format!(
                    "cannot start runtime server {:?} ({}): {e}",
                    cmd.program.display(),
                    server.name
                );
                tracing::error!(runtime = %server.name, "{reason}");
                server.set_health(|h| {
                    h.ready = false;
                    h.reason = reason;
                });
                if sleep_or_shutdown(MAX_BACKOFF, &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        tracing::info!(runtime = %server.name, pid, program = %cmd.program.display(), "started runtime server");
        let started = Instant::now();

        // Handshake until ready, while watching for an early exit.
        let ready = async {
            loop {
                if let Ok(h) = server.handshake().await
                    && h.ready
                {
                    return Ok(h);
                }
                if started.elapsed() > STARTUP_TIMEOUT {
                    return Err(format!(
                        "runtime server {} did not become ready within {}s",
                        server.name,
                        STARTUP_TIMEOUT.as_secs()
                    ));
                }
                // Poll briskly at first: start-up latency is what a local Run waits on.
                let pause = if started.elapsed() < Duration::from_secs(2) {
                    5
                } else {
                    200
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        };
        let early = tokio::select! {
            r = ready => Early::Handshake(r),
            s = child.wait() => Early::Exited(s),
            _ = stopping(&mut shutdown) => {
                stop(&mut child, cmd.stop_grace).await;
                return;
            }
        };
        let status = match early {
            Early::Handshake(Ok(h)) => {
                tracing::info!(runtime = %server.name, pid, ms = started.elapsed().as_millis() as u64, "runtime server ready");
                server.record_handshake(Ok(h), true);
                tokio::select! {
                    s = child.wait() => s,
                    _ = stopping(&mut shutdown) => {
                        stop(&mut child, cmd.stop_grace).await;
                        return;
                    }
                }
            }
            Early::Handshake(Err(reason)) => {
                tracing::error!(runtime = %server.name, "{reason}");
                server.set_health(|h| {
                    h.ready = false;
                    h.reason = reason;
                });
                let _ = child.start_kill();
                child.wait().await
            }
            Early::Exited(s) => s,
        };
        let how = match status {
            Ok(s) => describe(s),
            Err(e) => format!("unknown status ({e})"),
        };
        let reason = format!(
            "runtime server {} (pid {pid}) exited with {how}",
            server.name
        );
        tracing::error!(runtime = %server.name, "{reason}; restarting in {}ms", backoff.as_millis());
        server.set_health(|h| {
            h.ready = false;
            h.reason = reason;
        });
        if started.elapsed() > HEALTHY_RESET {
            backoff = Duration::from_millis(100);
        }
        if sleep_or_shutdown(backoff, &mut shutdown).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum Early {
    Handshake(Result<rpb::HandshakeResponse, String>),
    Exited(std::io::Result<ExitStatus>),
}

/// Resolves once runtimed is stopping.
async fn stopping(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stopping(shutdown) => true,
    }
}

/// The pid of a ready server already listening on `socket`, if any.
async fn adopt(server: &RuntimeServer, cmd: &ServerCommand) -> Option<i32> {
    let stream = tokio::net::UnixStream::connect(&cmd.socket).await.ok()?;
    let pid = stream.peer_cred().ok()?.pid()?;
    drop(stream);
    match server.handshake().await {
        Ok(h) if h.ready => {
            server.record_handshake(Ok(h), true);
            Some(pid)
        }
        other => {
            // Not adoptable, but alive: stop it, or it would run on with
            // its processes and no runtimed to answer to.
            let why = match other {
                Ok(h) => format!("not ready: {}", h.message),
                Err(e) => e,
            };
            tracing::warn!(runtime = %server.name, pid, reason = %why, "the runtime server left running cannot be adopted; stopping it");
            stop_pid(pid, cmd.stop_grace).await;
            None
        }
    }
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Stops a server that is not our child: SIGTERM, poll, SIGKILL.
async fn stop_pid(pid: i32, grace: Duration) {
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while alive(pid) && start.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if alive(pid) {
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    }
}

/// SIGTERM, a bounded wait, then SIGKILL.
async fn stop(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}
