//! `kruntimes-bench-chain`: the bare shape of a Run's path, for the bash
//! figure's floor. Two processes stand in for runtimed and the bash Runtime
//! Server with nothing but their transport: a proxy (gRPC over TCP on
//! 127.0.0.1, as runtimed's API) that turns each Execute into a Start to a
//! spawner (gRPC over a Unix socket, as a Runtime Server), which spawns the
//! command (`posix_spawn`, stdio on /dev/null, as the bench's baseline) and
//! streams Started and its exit back. No validation, records, logs,
//! workspace, metrics or output: what a Run costs on this machine with only
//! the three processes and two HTTP/2 hops the architecture has. The Unix
//! connection is set up as runtimed's and the bash server's are
//! (`Address::channel`, `QuietUnixStream`), so the floor is not held back by
//! what ours avoid.
//!
//! `kruntimes-bench-chain spawner <socket>` and
//! `kruntimes-bench-chain proxy <socket>`; each prints `ready <address>` on
//! stdout once it accepts connections and runs until killed (or its
//! parent thread ends).

use kruntimes_proto::address::Address;
use kruntimes_proto::quiet::QuietUnixStream;
use kruntimes_proto::runtime::v1 as rpb;
use kruntimes_proto::runtimed::v1 as pb;
use kruntimes_proto::time;
use rpb::runtime_server_client::RuntimeServerClient;
use rpb::runtime_server_server::{RuntimeServer, RuntimeServerServer};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

type Events<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented(
        "the bench's bare chain only has Execute and Start",
    ))
}

/// The Runtime Server stand-in: Start spawns and reports; nothing is kept.
struct Spawner;

#[tonic::async_trait]
impl RuntimeServer for Spawner {
    type StartStream = Events<rpb::ExecutionEvent>;
    type AttachStream = Events<rpb::ExecutionEvent>;

    async fn start(
        &self,
        req: Request<rpb::StartRequest>,
    ) -> Result<Response<Self::StartStream>, Status> {
        let Some(rpb::start_request::Program::Command(c)) = req.into_inner().program else {
            return Err(Status::invalid_argument("program: only a command"));
        };
        let Some((program, args)) = c.argv.split_first() else {
            return Err(Status::invalid_argument("command.argv: empty"));
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| Status::failed_precondition(format!("spawning {program}: {e}")))?;
        let started = rpb::ExecutionEvent {
            event: Some(rpb::execution_event::Event::Started(rpb::Started {
                pid: child.id().map_or(0, |p| p as i32),
                started_at: Some(time::now()),
            })),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let _ = tx.try_send(Ok(started));
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(c), _) => Some(rpb::exit::Status::Code(c)),
                    (None, Some(sig)) => Some(rpb::exit::Status::Signal(sig)),
                    (None, None) => None,
                },
                Err(e) => {
                    let _ = tx.send(Err(Status::internal(format!("wait: {e}")))).await;
                    return;
                }
            };
            let exited = rpb::Exit {
                status,
                finished_at: Some(time::now()),
                ..Default::default()
            };
            let _ = tx
                .send(Ok(rpb::ExecutionEvent {
                    event: Some(rpb::execution_event::Event::Exited(exited)),
                }))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn handshake(
        &self,
        _: Request<rpb::HandshakeRequest>,
    ) -> Result<Response<rpb::HandshakeResponse>, Status> {
        unimplemented()
    }
    async fn attach(
        &self,
        _: Request<rpb::AttachRequest>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        unimplemented()
    }
    async fn cancel(
        &self,
        _: Request<rpb::CancelRequest>,
    ) -> Result<Response<rpb::CancelResponse>, Status> {
        unimplemented()
    }
    async fn status(
        &self,
        _: Request<rpb::StatusRequest>,
    ) -> Result<Response<rpb::ExecutionStatus>, Status> {
        unimplemented()
    }
    async fn list(
        &self,
        _: Request<rpb::ListRequest>,
    ) -> Result<Response<rpb::ListResponse>, Status> {
        unimplemented()
    }
    async fn forget(
        &self,
        _: Request<rpb::ForgetRequest>,
    ) -> Result<Response<rpb::ForgetResponse>, Status> {
        unimplemented()
    }
}

/// The runtimed stand-in: Execute becomes a Start, its events are mapped.
struct Proxy {
    spawner: RuntimeServerClient<Channel>,
    next_id: AtomicU64,
}

/// A Runtime Server event as the Run event a client sees; None for the rest.
fn run_event(ev: rpb::ExecutionEvent) -> Option<pb::RunEvent> {
    let event = match ev.event? {
        rpb::execution_event::Event::Started(s) => pb::run_event::Event::Started(pb::Started {
            pid: s.pid,
            started_at: s.started_at,
        }),
        rpb::execution_event::Event::Exited(e) => {
            let (exit_code, signal) = match e.status {
                Some(rpb::exit::Status::Code(c)) => (Some(c), None),
                Some(rpb::exit::Status::Signal(s)) => (None, Some(s)),
                None => (None, None),
            };
            pb::run_event::Event::Exited(pb::Exited {
                run: Some(pb::Run {
                    exit_code,
                    signal,
                    finished_at: e.finished_at,
                    ..Default::default()
                }),
            })
        }
        _ => return None,
    };
    Some(pb::RunEvent { event: Some(event) })
}

#[tonic::async_trait]
impl pb::runtimed_server::Runtimed for Proxy {
    type ExecuteStream = Events<pb::RunEvent>;
    type LogsStream = Events<pb::LogsResponse>;
    type DownloadArtifactStream = Events<pb::DownloadArtifactResponse>;

    async fn execute(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let Some(pb::execute_request::Program::Command(c)) = req.into_inner().program else {
            return Err(Status::invalid_argument("program: only a command"));
        };
        let start = rpb::StartRequest {
            execution_id: self.next_id.fetch_add(1, Ordering::Relaxed).to_string(),
            program: Some(rpb::start_request::Program::Command(rpb::Command {
                argv: c.argv,
            })),
            ..Default::default()
        };
        let events = self.spawner.clone().start(start).await?.into_inner();
        let events = events.filter_map(|ev| ev.map(run_event).transpose());
        Ok(Response::new(Box::pin(events)))
    }

    async fn logs(
        &self,
        _: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        unimplemented()
    }
    async fn get(&self, _: Request<pb::GetRequest>) -> Result<Response<pb::Run>, Status> {
        unimplemented()
    }
    async fn list(
        &self,
        _: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        unimplemented()
    }
    async fn wait(&self, _: Request<pb::WaitRequest>) -> Result<Response<pb::Run>, Status> {
        unimplemented()
    }
    async fn cancel(&self, _: Request<pb::CancelRequest>) -> Result<Response<pb::Run>, Status> {
        unimplemented()
    }
    async fn forget(
        &self,
        _: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        unimplemented()
    }
    async fn list_artifacts(
        &self,
        _: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        unimplemented()
    }
    async fn download_artifact(
        &self,
        _: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        unimplemented()
    }
}

async fn spawner(socket: PathBuf) -> Result<(), String> {
    let listener = kruntimes_proto::listen::bind_private_unix(&socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    println!("ready unix:{}", socket.display());
    // As the bash server's listener: read-only registrations.
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|conn| conn.and_then(QuietUnixStream::new));
    Server::builder()
        .add_service(RuntimeServerServer::new(Spawner))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| format!("spawner: {e}"))
}

async fn proxy(socket: PathBuf) -> Result<(), String> {
    let channel = Address::Unix(socket)
        .channel()
        .map_err(|e| format!("spawner channel: {e}"))?;
    let proxy = Proxy {
        spawner: RuntimeServerClient::new(channel),
        next_id: AtomicU64::new(0),
    };
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:0: {e}"))?;
    let addr = tcp.local_addr().map_err(|e| e.to_string())?;
    println!("ready {addr}");
    // As runtimed's API server: no Nagle, the same windows.
    let incoming = tonic::transport::server::TcpIncoming::from(tcp).with_nodelay(Some(true));
    Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .add_service(pb::runtimed_server::RuntimedServer::new(proxy))
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| format!("proxy: {e}"))
}

fn main() -> ExitCode {
    // Dies with the bench thread that started it, even if the bench is killed.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [role, socket] if role == "spawner" => block_on(spawner(PathBuf::from(socket))),
        [role, socket] if role == "proxy" => block_on(proxy(PathBuf::from(socket))),
        _ => {
            eprintln!("usage: kruntimes-bench-chain spawner|proxy <unix socket path>");
            ExitCode::from(2)
        }
    }
}

/// Both sides run single-threaded, as runtimed does by default.
fn block_on(f: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kruntimes-bench-chain: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kruntimes-bench-chain: {e}");
            ExitCode::FAILURE
        }
    }
}
