//! The runtimed gRPC API (`kruntimes.runtimed.v1.Runtimed`).

use crate::attempt::Attempt;
use crate::error::{Error, Result};
use crate::follow::{Followed, Item, pump};
use crate::run::{Outcome, Run, RunSpec};
use crate::runtime_server::RuntimeServer;
use crate::spool::{Spool, StreamKind};
use crate::validate;
use crate::workspace::Workspace;
use kruntimes_proto::events::Events;
use kruntimes_proto::runtime::v1 as rpb;
use kruntimes_proto::runtimed::v1 as pb;
use kruntimes_proto::time::from_timestamp;
use pb::runtimed_server::Runtimed;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Response-stream buffer per client, in messages (each up to 256 KiB).
const STREAM_BUFFER: usize = 8;

pub struct State {
    pub runs: Arc<crate::run::Registry>,
    pub runtimes: BTreeMap<String, Arc<RuntimeServer>>,
    pub supervised: bool,
    pub permits: Arc<Semaphore>,
    pub max_runs: u32,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub spool_dir: PathBuf,
    pub records: Arc<crate::records::Records>,
    pub workspace: crate::workspace::Workspace,
    pub log_cap: u64,
    pub spool_budget: u64,
    pub max_finished_runs: usize,
    pub artifacts: Arc<crate::collect::Artifacts>,
    pub grace_period_ms: u64,
    /// When finished Runs' bookkeeping runs.
    pub tidy: Arc<crate::tidy::Tidy>,
}

#[derive(Clone)]
pub struct Service(pub Arc<State>);

fn program(req: &pb::ExecuteRequest, env_bytes: usize) -> Result<rpb::start_request::Program> {
    match &req.program {
        Some(pb::execute_request::Program::Command(c)) => {
            if c.argv.is_empty() || c.argv[0].is_empty() {
                return Err(Error::InvalidArgument(
                    "command.argv is empty: give a program to run, or a script".into(),
                ));
            }
            validate::args("command.argv", &c.argv, env_bytes)?;
            Ok(rpb::start_request::Program::Command(rpb::Command {
                argv: c.argv.clone(),
            }))
        }
        Some(pb::execute_request::Program::Script(s)) => {
            if s.source.len() > validate::MAX_SCRIPT_BYTES {
                return Err(Error::InvalidArgument(format!(
                    "script.source is {} bytes; the limit is {} bytes",
                    s.source.len(),
                    validate::MAX_SCRIPT_BYTES
                )));
            }
            validate::args("script.args", &s.args, env_bytes + s.source.len())?;
            if !s.filename.is_empty() {
                validate::file_name("script.filename", &s.filename)?;
            }
            Ok(rpb::start_request::Program::Script(rpb::Script {
                source: s.source.clone(),
                args: s.args.clone(),
                filename: s.filename.clone(),
            }))
        }
        None => Err(Error::InvalidArgument(
            "neither command.argv nor script is set: give a program to run".into(),
        )),
    }
}

fn stream_filter(s: i32) -> Result<Option<StreamKind>> {
    match pb::Stream::try_from(s) {
        Ok(pb::Stream::Unspecified) => Ok(None),
        Ok(pb::Stream::Stdout) => Ok(Some(StreamKind::Stdout)),
        Ok(pb::Stream::Stderr) => Ok(Some(StreamKind::Stderr)),
        Err(_) => Err(Error::InvalidArgument(format!(
            "stream {s} is not one of STDOUT (1) or STDERR (2)"
        ))),
    }
}

impl State {
    fn runtime(&self, name: &str) -> Result<Arc<RuntimeServer>> {
        self.runtimes
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownRuntime {
                name: name.to_string(),
                known: self.runtimes.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Validates, admits and starts a Run; returns it once its process exists.
    pub async fn start(&self, req: &pb::ExecuteRequest) -> Result<Arc<Run>> {
        if !req.run_id.is_empty() {
            validate::run_id("run_id", &req.run_id)?;
        }
        let env_bytes = validate::env(&req.env)?;
        let program = program(req, env_bytes)?;
        validate::relative_path("working_dir", &req.working_dir)?;
        let server = self.runtime(&req.runtime)?;
        let health = server.health();
        if !health.ready {
            return Err(Error::RuntimeNotReady {
                runtime: server.name.clone(),
                reason: health.reason,
            });
        }
        if let Some(phase) = self.runs.contains(&req.run_id) {
            return Err(Error::RunExists {
                id: req.run_id.clone(),
                phase: phase.as_str().into(),
            });
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManyRuns {
                limit: self.max_runs as usize,
            })?;
        // Named only once nothing above can refuse the Run: a pre-named id
        // is not used up by a refused one.
        let new = if req.run_id.is_empty() {
            self.workspace.next_id()
        } else {
            Workspace::given_id(req.run_id.clone())
        };
        let id = new.id.clone();
        let spool = Spool::create(&self.spool_dir, &id, self.log_cap, self.runs.spool_usage())
            .with_shelf(self.runs.shelf());
        let spec = RunSpec {
            timeout_ms: req.timeout_ms,
            artifacts_on_failure: req.artifacts_on_failure,
            artifacts_gzip: req.artifacts_gzip,
        };
        let run = Arc::new(Run::new(
            id.clone(),
            server.name.clone(),
            spec,
            spool,
            self.records.clone(),
        ));
        self.runs.insert(run.clone())?;
        let mut env = req.env.clone();
        match self.workspace.prepare(&new, &health.workspace_root) {
            // Ours last: a Run cannot point runtimed at another file.
            Ok(vars) => env.extend(vars),
            Err(e) => {
                let msg = format!("cannot prepare the run's workspace: {e}");
                run.finish(Outcome::failed(msg.clone()));
                run.save();
                return Err(Error::Spool(std::io::Error::new(e.kind(), msg)));
            }
        }
        let grace = if req.grace_period_ms == 0 {
            self.grace_period_ms
        } else {
            req.grace_period_ms
        };
        let start = rpb::StartRequest {
            execution_id: id.clone(),
            program: Some(program),
            env,
            working_dir: req.working_dir.clone(),
            timeout_ms: req.timeout_ms,
            grace_period_ms: grace,
            output_handoff: health.handoff_socket.is_some(),
        };
        let mut client = server.client();
        let (started, events) = match start_execution(&mut client, start).await {
            Ok(s) => s,
            Err(status) => {
                let e = Error::RuntimeServer {
                    runtime: server.name.clone(),
                    status,
                };
                run.finish(Outcome::failed(e.to_string()));
                run.save();
                self.workspace.cleanup(&id);
                return Err(e);
            }
        };
        let started_at = started
            .started_at
            .as_ref()
            .map(from_timestamp)
            .unwrap_or_else(SystemTime::now);
        run.mark_running(started.pid, started_at);
        self.metrics
            .runs_started
            .get_or_create(&crate::metrics::RuntimeLabels {
                runtime: server.name.clone(),
            })
            .inc();
        self.metrics.runs_active.inc();
        let mut attempt =
            self.attempt(run.clone(), server.clone(), health.generation, Some(permit));
        attempt.events = Some(events);
        let span = tracing::info_span!("run", run = %id, runtime = %server.name);
        let pid = started.pid;
        tokio::spawn(
            async move {
                // Logged and saved once the caller has its answer: the yield
                // lets the connection send it first.
                tokio::task::yield_now().await;
                tracing::debug!(pid, "run started");
                attempt.run.save();
                // Finished Runs' bookkeeping runs now, beside this process.
                attempt.tidy.quiet();
                attempt.drive().await
            }
            .instrument(span),
        );
        Ok(run)
    }

    pub fn attempt(
        self: &State,
        run: Arc<Run>,
        server: Arc<RuntimeServer>,
        generation: u64,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Attempt {
        let runs = self.runs.clone();
        let (budget, max_finished) = (self.spool_budget, self.max_finished_runs);
        Attempt {
            run,
            server,
            metrics: self.metrics.clone(),
            generation,
            supervised: self.supervised,
            workspace: self.workspace.clone(),
            artifacts: self.artifacts.clone(),
            permit,
            events: None,
            tidy: self.tidy.clone(),
            on_finish: Arc::new(move || {
                runs.enforce_retention(max_finished);
                runs.enforce_spool_budget(budget);
            }),
        }
    }

    /// Where a follower starts: tail lines, a time, or an offset.
    fn start_offset(
        &self,
        run: &Run,
        req: &pb::LogsRequest,
        only: Option<StreamKind>,
    ) -> Result<u64> {
        if req.tail_lines > 0 {
            return Ok(run.spool.tail_offset(req.tail_lines, only)?);
        }
        if let Some(since) = &req.since {
            return Ok(run
                .spool
                .offset_since(crate::run::unix_us(from_timestamp(since))));
        }
        Ok(req.offset)
    }
}

/// Calls the Runtime Server's Start and reads its first event, `started`.
/// Returns it with the rest of the stream (output, then the exit).
async fn start_execution(
    client: &mut kruntimes_proto::runtime::v1::runtime_server_client::RuntimeServerClient<
        tonic::transport::Channel,
    >,
    req: rpb::StartRequest,
) -> std::result::Result<(rpb::Started, Events), Status> {
    let mut events = Events::new(client.start(req).await?.into_inner());
    match events.message().await? {
        Some(rpb::ExecutionEvent {
            event: Some(rpb::execution_event::Event::Started(s)),
        }) => Ok((s, events)),
        other => Err(Status::internal(format!(
            "the runtime server broke the protocol: Start's first event must be `started`, got {other:?}"
        ))),
    }
}

type EventStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Runtimed for Service {
    type ExecuteStream = EventStream<pb::RunEvent>;
    type LogsStream = EventStream<pb::LogsResponse>;
    type DownloadArtifactStream = EventStream<pb::DownloadArtifactResponse>;

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let run = self.0.runs.get(&request.into_inner().run_id)?;
        let artifacts = run.state().artifacts.iter().map(|a| a.to_proto()).collect();
        Ok(Response::new(pb::ListArtifactsResponse { artifacts }))
    }

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let req = request.into_inner();
        let run = self.0.runs.get(&req.run_id)?;
        let state = run.state();
        let Some(artifact) = state.artifacts.iter().find(|a| a.name == req.name).cloned() else {
            let names: Vec<_> = state.artifacts.iter().map(|a| a.name.as_str()).collect();
            return Err(Error::ArtifactNotFound {
                run: run.id.clone(),
                name: req.name,
                known: names.join(", "),
            }
            .into());
        };
        if req.offset > artifact.size {
            return Err(Error::InvalidArgument(format!(
                "offset {} is past the end of artifact {:?} ({} bytes)",
                req.offset, artifact.name, artifact.size
            ))
            .into());
        }
        let data = self
            .0
            .artifacts
            .open(&run.uid, &artifact.name, req.offset)
            .await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(crate::collect::send_artifact(
            artifact, req.offset, data, tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let req = request.into_inner();
        let run = self.0.start(&req).await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        use pb::run_event::Event;
        let event = |e: Event| pb::RunEvent { event: Some(e) };
        let accepted = event(Event::Accepted(pb::Accepted {
            run: Some(run.to_proto()),
        }));
        // Queued before the response exists, so the HTTP/2 layer sends the
        // headers and both events in one write: one wake-up of the client
        // instead of two (the channel is new and has room for both).
        let _ = tx.try_send(Ok(accepted));
        if req.detach {
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        let st = run.state();
        let started = event(Event::Started(pb::Started {
            pid: st.pid,
            started_at: st.started_at.map(kruntimes_proto::time::to_timestamp),
        }));
        let _ = tx.try_send(Ok(started));
        tokio::spawn(async move {
            let wrap = |i| match i {
                Item::Output(o) => event(Event::Output(o)),
                Item::Truncated(t) => event(Event::Truncated(t)),
            };
            if let Some(Followed::Complete) = pump(&run, 0, true, None, &tx, wrap).await {
                run.finished().await;
                let exited = event(Event::Exited(pb::Exited {
                    run: Some(run.to_proto()),
                }));
                let _ = tx.send(Ok(exited)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        let run = self.0.runs.get(&req.run_id)?;
        let only = stream_filter(req.stream)?;
        if run.spool.is_evicted() {
            return Err(Error::LogEvicted(run.id.clone()).into());
        }
        let offset = self.0.start_offset(&run, &req, only)?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            use pb::logs_response::Event;
            let wrap = |i| pb::LogsResponse {
                event: Some(match i {
                    Item::Output(o) => Event::Output(o),
                    Item::Truncated(t) => Event::Truncated(t),
                }),
            };
            if let Some(Followed::Complete) = pump(&run, offset, req.follow, only, &tx, wrap).await
            {
                run.finished().await;
                let end = pb::LogsResponse {
                    event: Some(Event::End(pb::LogEnd {
                        run: Some(run.to_proto()),
                    })),
                };
                let _ = tx.send(Ok(end)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let id = request.into_inner().run_id;
        let run = self.0.runs.get(&id)?;
        let phase = run.state().phase;
        if !phase.is_terminal() {
            return Err(Error::RunNotFinished {
                id,
                phase: phase.as_str().into(),
            }
            .into());
        }
        self.0.runs.remove(&id);
        run.forget();
        Ok(Response::new(pb::ForgetResponse {}))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Run>, Status> {
        let run = self.0.runs.get(&request.into_inner().run_id)?;
        Ok(Response::new(run.to_proto()))
    }

    async fn list(
        &self,
        _request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let runs = self.0.runs.list().iter().map(|r| r.to_proto()).collect();
        Ok(Response::new(pb::ListResponse { runs }))
    }

    async fn wait(&self, request: Request<pb::WaitRequest>) -> Result<Response<pb::Run>, Status> {
        let req = request.into_inner();
        let run = self.0.runs.get(&req.run_id)?;
        if req.timeout_ms == 0 {
            run.finished().await;
        } else if tokio::time::timeout(Duration::from_millis(req.timeout_ms), run.finished())
            .await
            .is_err()
        {
            return Err(Error::WaitTimeout(req.timeout_ms).into());
        }
        Ok(Response::new(run.to_proto()))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let req = request.into_inner();
        let run = self.0.runs.get(&req.run_id)?;
        if !run.state().phase.is_terminal() {
            let server = self.0.runtime(&run.runtime)?;
            let grace = if req.grace_period_ms == 0 {
                self.0.grace_period_ms
            } else {
                req.grace_period_ms
            };
            tracing::info!(run = %run.id, grace_ms = grace, "cancel requested");
            server
                .client()
                .cancel(rpb::CancelRequest {
                    execution_id: run.id.clone(),
                    grace_period_ms: grace,
                })
                .await
                .map_err(|status| Error::RuntimeServer {
                    runtime: server.name.clone(),
                    status,
                })?;
        }
        Ok(Response::new(run.to_proto()))
    }
}
