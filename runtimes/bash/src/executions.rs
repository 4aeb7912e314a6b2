//! The table of known executions and the operations on it (Start, Cancel,
//! Status, List, Forget, shutdown), enforcing the server's limits: at most
//! `max_executions` running, at most `max_retained` known until Forgotten.
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use kruntimes_proto::handoff;
use kruntimes_proto::runtime::v1::{
    ExecutionEvent, ExecutionStatus, StartRequest, Started, Stream, execution_event,
};
use kruntimes_proto::time::to_timestamp;
use tokio::sync::{Notify, watch};

use crate::error::RuntimeError;
use crate::execution::{Execution, StopReason, Which};
use crate::pump::pump;
use crate::reaper::Reaper;
use crate::spawn::{Env, Launch, resolve_program, spawn};
use crate::supervisor::{Supervised, supervise};
use crate::validate::{self, Program};
use crate::workspace::Workspace;

/// Limits and paths the table works with.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_running: usize,
    pub max_retained: usize,
    pub buffer_bytes: usize,
}

#[derive(Default)]
struct Table {
    known: HashMap<String, Arc<Execution>>,
    /// Ids reserved by a Start in progress.
    starting: HashSet<String>,
    running: usize,
    shutting_down: bool,
}

pub struct Executions {
    reaper: Arc<Reaper>,
    workspace: Arc<Workspace>,
    bash: PathBuf,
    limits: Limits,
    /// Where clients take handed-off output pipes; `None`: never hand off.
    handoff_socket: Option<PathBuf>,
    table: Mutex<Table>,
    /// Woken whenever an execution finishes.
    finished: Notify,
}

/// Releases a reserved id if Start fails half-way.
struct Reservation<'a> {
    table: &'a Executions,
    id: String,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.table.lock().starting.remove(&self.id);
        }
    }
}

impl Executions {
    pub fn new(
        reaper: Arc<Reaper>,
        workspace: Arc<Workspace>,
        bash: PathBuf,
        limits: Limits,
        handoff_socket: Option<PathBuf>,
    ) -> Self {
        Self {
            reaper,
            workspace,
            bash,
            limits,
            handoff_socket,
            table: Mutex::new(Table::default()),
            finished: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn workspace(&self) -> &Workspace {
        &self.workspace
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    pub fn bash(&self) -> &std::path::Path {
        &self.bash
    }

    pub fn handoff_socket(&self) -> Option<&std::path::Path> {
        self.handoff_socket.as_deref()
    }

    /// Answers the handoff socket: a duplicate of a handed-off read end.
    pub fn handoff_fd(&self, req: &handoff::Request) -> Result<OwnedFd, String> {
        let exec = self.get(&req.execution_id).map_err(|e| e.to_string())?;
        let which = match req.stream {
            Stream::Stderr => Which::Stderr,
            _ => Which::Stdout,
        };
        exec.handoff_fd(which)
    }

    pub fn max_running(&self) -> usize {
        self.limits.max_running
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>, RuntimeError> {
        let mut t = self.lock();
        if t.shutting_down {
            return Err(RuntimeError::ShuttingDown);
        }
        if t.known.contains_key(id) || t.starting.contains(id) {
            return Err(RuntimeError::AlreadyExists(id.to_string()));
        }
        if t.running + t.starting.len() >= self.limits.max_running {
            return Err(RuntimeError::ResourceExhausted(format!(
                "max_executions limit reached: {} executions running, the limit is {}",
                t.running + t.starting.len(),
                self.limits.max_running
            )));
        }
        if t.known.len() + t.starting.len() >= self.limits.max_retained {
            return Err(RuntimeError::ResourceExhausted(format!(
                "max_retained limit reached: {} executions known, the limit is {}; Forget finished executions",
                t.known.len() + t.starting.len(),
                self.limits.max_retained
            )));
        }
        t.starting.insert(id.to_string());
        Ok(Reservation {
            table: self,
            id: id.to_string(),
            armed: true,
        })
    }

    /// Starts one execution; returns once the process exists, with the
    /// `started` event. The execution's first reader (generation
    /// [`crate::execution::START_GENERATION`]) reads from offsets 0/0.
    pub fn start(
        self: &Arc<Self>,
        req: StartRequest,
    ) -> Result<(Arc<Execution>, ExecutionEvent), RuntimeError> {
        let spec = validate::start_request(req)?;
        let mut reservation = self.reserve(&spec.execution_id)?;
        let id = spec.execution_id.clone();

        let cwd = self.workspace.working_dir(&id, &spec.working_dir)?;
        let env = Env::merged(&spec.env);
        let launch = match spec.program {
            Program::Command { mut argv } => {
                let program = resolve_program(&argv[0], env.get("PATH"), &cwd)?;
                let arg0 = OsString::from(argv.remove(0));
                Launch {
                    program,
                    arg0,
                    args: argv.into_iter().map(OsString::from).collect(),
                    env,
                    cwd,
                }
            }
            Program::Script {
                source,
                args,
                filename,
            } => {
                let file = self.workspace.write_script(&id, &filename, &source)?;
                let mut all = vec![file.into_os_string()];
                all.extend(args.into_iter().map(OsString::from));
                Launch {
                    program: self.bash.clone(),
                    arg0: "bash".into(),
                    args: all,
                    env,
                    cwd,
                }
            }
        };

        let spawned = spawn(&self.reaper, &launch)?;
        if self.workspace.spares_low() {
            // Off the Start path, beside the process starting up.
            let ws = Arc::clone(&self.workspace);
            tokio::task::spawn_blocking(move || ws.refill_spares());
        }
        let started_at = SystemTime::now();
        let exec = Arc::new(Execution::new(
            id.clone(),
            spawned.pid,
            started_at,
            Instant::now(),
            spec.grace,
            self.limits.buffer_bytes,
            spec.output_handoff && self.handoff_socket.is_some(),
        ));
        let (leader_done, leader_rx) = watch::channel(false);
        let stdout = tokio::spawn(pump(
            Arc::clone(&exec),
            Which::Stdout,
            spawned.stdout,
            leader_rx.clone(),
        ));
        let stderr = tokio::spawn(pump(
            Arc::clone(&exec),
            Which::Stderr,
            spawned.stderr,
            leader_rx,
        ));

        {
            let mut t = self.lock();
            reservation.armed = false;
            t.starting.remove(&id);
            t.known.insert(id.clone(), Arc::clone(&exec));
            t.running += 1;
        }
        tracing::debug!(%id, pid = spawned.pid, program = %launch.program.display(), "execution started");

        let table = Arc::clone(self);
        let supervised = Supervised {
            exec: Arc::clone(&exec),
            exit: spawned.exit,
            writers: spawned.writers,
            timeout: spec.timeout,
            grace: spec.grace,
            stdout,
            stderr,
            leader_done,
        };
        tokio::spawn(async move {
            supervise(supervised).await;
            table.lock().running -= 1;
            table.finished.notify_waiters();
        });

        let started = ExecutionEvent {
            event: Some(execution_event::Event::Started(Started {
                pid: spawned.pid,
                started_at: Some(to_timestamp(started_at)),
            })),
        };
        Ok((exec, started))
    }

    pub fn get(&self, id: &str) -> Result<Arc<Execution>, RuntimeError> {
        validate::execution_id(id)?;
        self.lock()
            .known
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    pub fn cancel(&self, id: &str, grace_ms: u64) -> Result<(), RuntimeError> {
        let exec = self.get(id)?;
        let grace = validate::grace_period("grace_period_ms", grace_ms)?;
        exec.request_cancel(grace, StopReason::Cancel);
        Ok(())
    }

    pub fn list(&self) -> Vec<ExecutionStatus> {
        let execs: Vec<Arc<Execution>> = self.lock().known.values().cloned().collect();
        let mut out: Vec<ExecutionStatus> = execs.iter().map(|e| e.status()).collect();
        out.sort_by(|a, b| a.execution_id.cmp(&b.execution_id));
        out
    }

    /// Drops finished executions (a Forget's `execution_id` and
    /// `more_execution_ids`), all or none: if one is unknown or still
    /// running, nothing is dropped.
    pub fn forget(&self, first: String, more: Vec<String>) -> Result<(), RuntimeError> {
        let ids = validate::forget_ids(first, more)?;
        {
            let mut t = self.lock();
            for id in &ids {
                match t.known.get(id) {
                    None => return Err(RuntimeError::NotFound(id.clone())),
                    Some(e) if e.is_running() => {
                        return Err(RuntimeError::StillRunning(id.clone()));
                    }
                    Some(_) => {}
                }
            }
            for id in &ids {
                t.known.remove(id);
            }
        }
        for id in &ids {
            self.workspace.remove_scripts(id);
        }
        Ok(())
    }

    /// Refuses new Starts, cancels every running execution with its own grace
    /// capped at `cap`, and waits (bounded) until they all finished.
    pub async fn shutdown(&self, cap: Duration) {
        let running: Vec<Arc<Execution>> = {
            let mut t = self.lock();
            t.shutting_down = true;
            t.known
                .values()
                .filter(|e| e.is_running())
                .cloned()
                .collect()
        };
        tracing::info!(
            running = running.len(),
            "shutting down: cancelling running executions"
        );
        for e in &running {
            e.request_cancel(e.grace.min(cap), StopReason::Shutdown);
        }
        // Grace, then SIGKILL, group teardown and output drain all take time.
        let deadline = Instant::now() + cap + Duration::from_secs(10);
        loop {
            let notified = self.finished.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().running == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                tracing::warn!(
                    running = self.lock().running,
                    "executions still running at shutdown deadline"
                );
                return;
            }
        }
    }
}
