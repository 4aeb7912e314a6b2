//! Drives one attempt of a Run on its Runtime Server after Start: reads the
//! rest of the Start stream (re-attaching from the spooled per-stream offsets
//! if it breaks), spools every chunk, takes over the pipes of streams the
//! server hands off (see `drain`), and turns the Exit into the Run's final
//! state once all output is in. A Runtime Server that dies mid-Run ends the
//! Run with a reason that says so.

use crate::drain::{DrainEnd, drain};
use crate::metrics::{Metrics, ResultLabels, RuntimeLabels};
use crate::run::{Outcome, Phase, Run};
use crate::runtime_server::RuntimeServer;
use crate::spool::StreamKind;
use crate::supervisor::signal_name;
use crate::tidy::Tidy;
use crate::workspace::Workspace;
use kruntimes_proto::events::Events;
use kruntimes_proto::runtime::v1 as rpb;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinHandle;
use tonic::Code;

/// How long runtimed keeps trying to re-attach to an execution whose server
/// it cannot reach (external servers; supervised ones are known dead at once).
const REATTACH_PATIENCE: Duration = Duration::from_secs(60);

/// How long the rest of an execution's stream (the server's trailers) is
/// waited for after its exit.
const TRAILERS_PATIENCE: Duration = Duration::from_secs(5);

/// Reads what is left of a Start or Attach stream after the exit (the
/// server's trailers, which may follow in a write of their own) instead of
/// dropping the stream: a dropped stream is reset (RST_STREAM CANCEL), and
/// the server handles its call as cancelled. Usually the trailers came with
/// the Exit and are read here; else a task of its own waits for them.
fn read_to_end(mut stream: Events) {
    use futures::FutureExt;
    if let Some(Ok(None) | Err(_)) = stream.message().now_or_never() {
        return;
    }
    tokio::spawn(async move {
        let rest = async { while let Ok(Some(_)) = stream.message().await {} };
        let _ = tokio::time::timeout(TRAILERS_PATIENCE, rest).await;
    });
}

pub struct Attempt {
    pub run: Arc<Run>,
    pub server: Arc<RuntimeServer>,
    pub metrics: Arc<Metrics>,
    /// Server generation the execution was started under.
    pub generation: u64,
    /// Whether runtimed supervises the server (local mode).
    pub supervised: bool,
    pub workspace: Workspace,
    pub artifacts: Arc<crate::collect::Artifacts>,
    /// Held until the Run is finished: it counts against `--max-runs`.
    /// `None` only for a Run recovered after a restart beyond the limit.
    pub permit: Option<OwnedSemaphorePermit>,
    /// Called as the Run finishes (spool budget enforcement).
    pub on_finish: Arc<dyn Fn() + Send + Sync>,
    /// The Start stream after `started`; `None` to Attach right away (a Run
    /// recovered after a restart).
    pub events: Option<Events>,
    /// When the finished Run's bookkeeping runs (see `tidy`).
    pub tidy: Arc<Tidy>,
}

/// The drains of handed-off streams (stdout, stderr). Dropping this drops
/// `exited`'s sender, which stops them (within a poll tick): an attempt that
/// ends without waiting for them leaves nothing behind.
struct Drains {
    tasks: [Option<JoinHandle<DrainEnd>>; 2],
    exited: watch::Sender<bool>,
}

impl Drains {
    fn new() -> Self {
        Self {
            tasks: [None, None],
            exited: watch::Sender::new(false),
        }
    }

    /// After the Exit: waits until every taken pipe reached EOF (bounded by
    /// the drains themselves) and says what the Run's result must mention.
    async fn finish(&mut self) -> Result<Vec<String>, String> {
        self.exited.send_replace(true);
        let mut notes = Vec::new();
        for (i, name) in [(0, "stdout"), (1, "stderr")] {
            let Some(task) = self.tasks[i].take() else {
                continue;
            };
            match task.await {
                Ok(DrainEnd::Eof) => {}
                Ok(DrainEnd::Abandoned) => notes.push(format!(
                    "{name} was held open by a process outside the group, later output was not read"
                )),
                Ok(DrainEnd::Failed(e)) => {
                    return Err(format!("spooling the Run's {name} failed: {e}"));
                }
                Err(e) => return Err(format!("spooling the Run's {name} failed: {e}")),
            }
        }
        Ok(notes)
    }
}

/// The spool stream of a Runtime Server stream tag (stdout unless stderr).
fn stream_kind(tag: i32) -> StreamKind {
    match rpb::Stream::try_from(tag) {
        Ok(rpb::Stream::Stderr) => StreamKind::Stderr,
        _ => StreamKind::Stdout,
    }
}

/// Maps a Runtime Server Exit to the Run's phase, exit fields and message.
pub fn outcome(e: &rpb::Exit, timeout_ms: u64) -> (Phase, Option<i32>, Option<i32>, String) {
    let (code, signal) = match e.status {
        Some(rpb::exit::Status::Code(c)) => (Some(c), None),
        Some(rpb::exit::Status::Signal(s)) => (None, Some(s)),
        None => (None, None),
    };
    let how = match (code, signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by signal {s} ({})", signal_name(s)),
        _ => "ended without an exit status".to_string(),
    };
    let (phase, mut msg) = if e.cancelled {
        (Phase::Cancelled, format!("cancelled; the process {how}"))
    } else if e.timed_out {
        (
            Phase::Timeout,
            format!("timed out after {timeout_ms} ms; the process {how}"),
        )
    } else if code == Some(0) {
        (Phase::Succeeded, how)
    } else {
        (Phase::Failed, how)
    };
    // The server's note only when it adds something to what we already say.
    if !e.message.is_empty() && !msg.contains(e.message.as_str()) {
        msg.push_str(": ");
        msg.push_str(&e.message);
    }
    (phase, code, signal, msg)
}

impl Attempt {
    pub async fn drive(mut self) {
        let id = self.run.id.clone();
        let result = self.follow_execution().await;
        let o = self.finalize(result).await;
        let (phase, message) = (o.phase, o.message.clone());
        // Older finished spools make room, and the metrics count the Run,
        // before it is seen finished: whoever waits for it sees both.
        (self.on_finish)();
        self.count_finished(phase);
        self.run.finish(o);
        // A waiter that saw the Run finish may start the next one at once.
        drop(self.permit.take());
        // Bookkeeping waits for a quiet moment (see `tidy`). Until the
        // record is saved a restarted runtimed re-attaches and finishes the
        // Run again (the server keeps the execution until the Forget below),
        // so nothing is lost meanwhile. The yield first: arming the wait's
        // timer wakes the event loop (an eventfd write), after the result.
        let tidy = Arc::clone(&self.tidy);
        let _pending = tidy.enter();
        tokio::task::yield_now().await;
        tidy.wait().await;
        // A short Run's output was held in memory (see `spool`): on disk
        // before the record says finished, while the server still keeps it.
        if let Err(e) = self.run.spool.persist() {
            tracing::error!(error = %e, "cannot write the run's log spool; its log is dropped");
            self.run.spool.evict();
        }
        self.run.save();
        self.workspace.cleanup(&id);
        // The next self-named Run's directories, while runtimed is idle.
        self.workspace.prename();
        let state = self.run.state();
        let ms = match (state.started_at, state.finished_at) {
            (Some(s), Some(f)) => f.duration_since(s).unwrap_or_default().as_millis() as u64,
            _ => 0,
        };
        // One line per Run, at its end: `run started` is a debug line.
        tracing::info!(pid = state.pid, ms, phase = phase.as_str(), %message, "run finished");
        // The server drops the execution's buffers (in a batch, see `forgets`).
        self.server.forgets().push(self.generation, id);
    }

    fn count_finished(&self, phase: Phase) {
        let runtime = self.server.name.clone();
        self.metrics
            .runs_finished
            .get_or_create(&ResultLabels {
                runtime: runtime.clone(),
                result: phase.as_str().to_string(),
            })
            .inc();
        if let Some(started) = self.run.state().started_at {
            let secs = started.elapsed().unwrap_or_default().as_secs_f64();
            self.metrics
                .run_duration
                .get_or_create(&RuntimeLabels { runtime })
                .observe(secs);
        }
        self.metrics.runs_active.dec();
    }

    /// Turns the execution's end into the Run's outcome: phase and message,
    /// then the outputs the Run wrote.
    async fn finalize(&self, result: Result<rpb::Exit, String>) -> Outcome {
        let exit = match result {
            Ok(e) => e,
            Err(reason) => return Outcome::failed(reason),
        };
        let (phase, exit_code, signal, message) = outcome(&exit, self.run.spec.timeout_ms);
        let mut o = Outcome {
            phase,
            exit_code,
            signal,
            message,
            outputs: Default::default(),
            artifacts: Vec::new(),
        };
        match crate::outputs::read(&self.workspace.outputs_file(&self.run.id)) {
            Ok(outputs) => o.outputs = outputs,
            Err(e) => {
                if o.phase == Phase::Succeeded {
                    o.phase = Phase::Failed;
                }
                o.message = format!("{}; outputs rejected: {e}", o.message);
            }
        }
        if o.phase == Phase::Succeeded || self.run.spec.artifacts_on_failure {
            let dir = self.workspace.artifacts_dir(&self.run.id);
            let scratch = self.workspace.scratch_dir(&self.run.id);
            match self
                .artifacts
                .collect(&dir, &scratch, &self.run.uid, self.run.spec.artifacts_gzip)
                .await
            {
                Ok(refs) => o.artifacts = refs,
                Err(e) => {
                    o.phase = Phase::Failed;
                    o.message = format!("{}; artifacts not stored: {e}", o.message);
                }
            }
        }
        o
    }

    /// Returns the execution's Exit, or why the Run must fail without one.
    async fn follow_execution(&mut self) -> Result<rpb::Exit, String> {
        let id = self.run.id.clone();
        let mut lost_since: Option<SystemTime> = None;
        let mut pause = Duration::from_millis(20);
        let mut drains = Drains::new();
        loop {
            let attached = match self.events.take() {
                Some(events) => Ok(events),
                None => {
                    let (stdout_offset, stderr_offset) = self.run.spool.stream_lengths();
                    let mut client = self.server.client();
                    client
                        .attach(rpb::AttachRequest {
                            execution_id: id.clone(),
                            stdout_offset,
                            stderr_offset,
                        })
                        .await
                        .map(|r| Events::new(r.into_inner()))
                }
            };
            let broke = match attached {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(ev)) => match ev.event {
                            Some(rpb::execution_event::Event::Output(c)) => {
                                lost_since = None;
                                pause = Duration::from_millis(20);
                                let kind = stream_kind(c.stream);
                                if let Err(e) = self.run.spool.append(kind, c.offset, c.data) {
                                    let reason = format!("writing the log spool failed: {e}");
                                    self.cancel_execution().await;
                                    return Err(reason);
                                }
                            }
                            Some(rpb::execution_event::Event::Handoff(h)) => {
                                let kind = stream_kind(h.stream);
                                let i = usize::from(kind == StreamKind::Stderr);
                                // A re-Attach repeats the Handoff of a pipe
                                // already being drained.
                                if drains.tasks[i].is_none() {
                                    tracing::info!(
                                        run = %id, stream = ?kind, offset = h.offset,
                                        "runtime server handed off a fast output stream; draining its pipe into the spool"
                                    );
                                    match self.take_over(kind, &drains).await {
                                        Ok(task) => drains.tasks[i] = Some(task),
                                        Err(reason) => {
                                            self.cancel_execution().await;
                                            return Err(reason);
                                        }
                                    }
                                }
                            }
                            Some(rpb::execution_event::Event::Exited(mut e)) => {
                                read_to_end(stream);
                                for note in drains.finish().await? {
                                    e.message = if e.message.is_empty() {
                                        note
                                    } else {
                                        format!("{}; {note}", e.message)
                                    };
                                }
                                return Ok(e);
                            }
                            // Batches come unpacked.
                            Some(
                                rpb::execution_event::Event::Started(_)
                                | rpb::execution_event::Event::Batch(_),
                            )
                            | None => {}
                        },
                        Ok(None) => {
                            break tonic::Status::unavailable(
                                "attach stream ended before the exit",
                            );
                        }
                        Err(s) => break s,
                    }
                },
                Err(s) => s,
            };
            if broke.code() == Code::NotFound {
                return Err(format!(
                    "runtime server {} no longer knows this execution (it restarted?): {}",
                    self.server.name,
                    broke.message()
                ));
            }
            let health = self.server.health();
            if self.supervised && (!health.ready || health.generation != self.generation) {
                self.kill_orphans();
                return Err(format!(
                    "the runtime server crashed while the Run was running ({})",
                    health.reason
                ));
            }
            let since = *lost_since.get_or_insert_with(SystemTime::now);
            if since.elapsed().unwrap_or_default() > REATTACH_PATIENCE {
                return Err(format!(
                    "lost contact with runtime server {} at {} for over {}s: {}",
                    self.server.name,
                    self.server.address,
                    REATTACH_PATIENCE.as_secs(),
                    broke.message()
                ));
            }
            tracing::warn!(run = %id, error = %broke.message(), "attach broke; re-attaching");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Takes the handed-off pipe of `kind` from the server and starts
    /// draining it into the spool.
    async fn take_over(
        &self,
        kind: StreamKind,
        drains: &Drains,
    ) -> Result<JoinHandle<DrainEnd>, String> {
        let (stream, name) = match kind {
            StreamKind::Stdout => (rpb::Stream::Stdout, "stdout"),
            StreamKind::Stderr => (rpb::Stream::Stderr, "stderr"),
        };
        let Some(socket) = self.server.health().handoff_socket else {
            return Err(format!(
                "runtime server {} handed off the Run's {name} but offers no handoff socket",
                self.server.name
            ));
        };
        let fd = kruntimes_proto::handoff::take(&socket, &self.run.id, stream)
            .await
            .map_err(|e| {
                format!(
                    "cannot take over the Run's {name} from runtime server {}: {e}",
                    self.server.name
                )
            })?;
        self.metrics
            .output_handoffs
            .get_or_create(&RuntimeLabels {
                runtime: self.server.name.clone(),
            })
            .inc();
        let (run, exited) = (Arc::clone(&self.run), drains.exited.subscribe());
        Ok(tokio::task::spawn_blocking(move || {
            drain(run, kind, fd, exited)
        }))
    }

    async fn cancel_execution(&self) {
        let mut client = self.server.client();
        let _ = client
            .cancel(rpb::CancelRequest {
                execution_id: self.run.id.clone(),
                grace_period_ms: 0,
            })
            .await;
    }

    /// The server that supervised the process is gone; its process group (in
    /// our PID namespace in local mode) must not outlive the Run.
    fn kill_orphans(&self) {
        let pid = self.run.state().pid;
        if pid > 1 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: rpb::exit::Status) -> rpb::Exit {
        rpb::Exit {
            status: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn outcomes() {
        let (p, c, s, m) = outcome(&exit(rpb::exit::Status::Code(0)), 0);
        assert_eq!((p, c, s), (Phase::Succeeded, Some(0), None));
        assert_eq!(m, "exited with code 0");
        let (p, _, _, m) = outcome(&exit(rpb::exit::Status::Code(3)), 0);
        assert_eq!((p, m.as_str()), (Phase::Failed, "exited with code 3"));
        let (p, c, s, m) = outcome(&exit(rpb::exit::Status::Signal(9)), 0);
        assert_eq!((p, c, s), (Phase::Failed, None, Some(9)));
        assert!(m.contains("SIGKILL"), "{m}");
        let mut e = exit(rpb::exit::Status::Signal(15));
        e.timed_out = true;
        let (p, _, _, m) = outcome(&e, 500);
        assert_eq!(p, Phase::Timeout);
        assert!(m.contains("500 ms"), "{m}");
        e.cancelled = true;
        assert_eq!(outcome(&e, 500).0, Phase::Cancelled);
    }
}
