//! runtimed as a client of a custom Runtime Server written here with tonic:
//! what a server author sees of runtimed's calls.

mod common;

use common::{Daemon, cmd, execute};
use futures::Stream;
use kruntimes_proto::runtime::v1 as rpb;
use kruntimes_proto::runtimed::v1 as pb;
use rpb::runtime_server_server::{RuntimeServer, RuntimeServerServer};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

type Events = Pin<Box<dyn Stream<Item = Result<rpb::ExecutionEvent, Status>> + Send>>;

/// Starts every execution as `started`, then its exit, then ends the stream
/// after a pause, noting whether the stream was read to its end (a client
/// that drops it early resets the call, which the server sees as cancelled).
#[derive(Default)]
struct Lingering {
    read_to_end: Arc<AtomicBool>,
    started: Arc<Mutex<Vec<String>>>,
    /// The ids of each Forget call, in order.
    forgets: Arc<Mutex<Vec<Vec<String>>>>,
    /// The first Forget is answered only once this is notified.
    release_first_forget: Arc<Notify>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap()
}

/// Serves `server` on a Unix socket in `dir`; returns runtimed's `--runtime`.
fn serve(server: Lingering, dir: &std::path::Path) -> String {
    let sock = dir.join("lingering.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RuntimeServerServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    format!("lingering=unix:{}", sock.display())
}

fn event(e: rpb::execution_event::Event) -> Result<rpb::ExecutionEvent, Status> {
    Ok(rpb::ExecutionEvent { event: Some(e) })
}

#[tonic::async_trait]
impl RuntimeServer for Lingering {
    async fn handshake(
        &self,
        _: Request<rpb::HandshakeRequest>,
    ) -> Result<Response<rpb::HandshakeResponse>, Status> {
        Ok(Response::new(rpb::HandshakeResponse {
            protocol_version: rpb::ProtocolVersion::V1.into(),
            runtime: "lingering".into(),
            ready: true,
            ..Default::default()
        }))
    }

    type StartStream = Events;

    async fn start(&self, req: Request<rpb::StartRequest>) -> Result<Response<Events>, Status> {
        lock(&self.started).push(req.into_inner().execution_id);
        let done = self.read_to_end.clone();
        let now = kruntimes_proto::time::now();
        let events = futures::stream::unfold(0, move |step| {
            let (done, now) = (done.clone(), now);
            async move {
                use rpb::execution_event::Event;
                match step {
                    0 => Some((
                        event(Event::Started(rpb::Started {
                            pid: 1,
                            started_at: Some(now),
                        })),
                        1,
                    )),
                    1 => Some((
                        event(Event::Exited(rpb::Exit {
                            status: Some(rpb::exit::Status::Code(0)),
                            started_at: Some(now),
                            finished_at: Some(now),
                            ..Default::default()
                        })),
                        2,
                    )),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        done.store(true, Ordering::SeqCst);
                        None
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(events)))
    }

    type AttachStream = Events;

    async fn attach(&self, _: Request<rpb::AttachRequest>) -> Result<Response<Events>, Status> {
        Err(Status::not_found("no such execution"))
    }

    async fn cancel(
        &self,
        _: Request<rpb::CancelRequest>,
    ) -> Result<Response<rpb::CancelResponse>, Status> {
        Err(Status::unimplemented("cancel"))
    }

    async fn status(
        &self,
        _: Request<rpb::StatusRequest>,
    ) -> Result<Response<rpb::ExecutionStatus>, Status> {
        Err(Status::unimplemented("status"))
    }

    async fn list(
        &self,
        _: Request<rpb::ListRequest>,
    ) -> Result<Response<rpb::ListResponse>, Status> {
        Ok(Response::new(rpb::ListResponse::default()))
    }

    async fn forget(
        &self,
        req: Request<rpb::ForgetRequest>,
    ) -> Result<Response<rpb::ForgetResponse>, Status> {
        let req = req.into_inner();
        let first = {
            let mut forgets = lock(&self.forgets);
            forgets.push([vec![req.execution_id], req.more_execution_ids].concat());
            forgets.len() == 1
        };
        if first {
            self.release_first_forget.notified().await;
        }
        Ok(Response::new(rpb::ForgetResponse::default()))
    }
}

/// After the exit runtimed reads the rest of the execution's stream (the
/// server's trailers may follow in a write of their own, as grpcio's do)
/// rather than dropping it: the server's call ends cleanly, not cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executions_stream_is_read_to_its_end_after_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Lingering::default();
    let read_to_end = server.read_to_end.clone();
    let runtime = serve(server, dir.path());
    let d = Daemon::start(&["--runtime", &runtime]).await;
    d.wait_ready("lingering").await;
    let mut c = d.client();
    let out = execute(&mut c, cmd("lingering", &["anything"])).await;
    let run = out.run.expect("exited");
    assert_eq!(
        (run.phase, run.exit_code),
        (pb::Phase::Succeeded as i32, Some(0)),
        "{}",
        run.message
    );
    assert!(
        !read_to_end.load(Ordering::SeqCst),
        "the result came before the stream's end"
    );
    for _ in 0..100 {
        if read_to_end.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("runtimed dropped the stream after the exit: the server's call was cancelled");
}

/// Finished executions are forgotten in batches, one Forget call at a time:
/// while the server holds the first call, the Runs that finish meanwhile
/// wait and go in one more call. Every execution is forgotten exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_executions_are_forgotten_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let server = Lingering::default();
    let (started, forgets) = (server.started.clone(), server.forgets.clone());
    let release = server.release_first_forget.clone();
    let runtime = serve(server, dir.path());
    let d = Daemon::start(&["--runtime", &runtime]).await;
    d.wait_ready("lingering").await;
    let mut c = d.client();
    const RUNS: usize = 6;
    for _ in 0..RUNS {
        let out = execute(&mut c, cmd("lingering", &["anything"])).await;
        assert_eq!(out.run.expect("exited").phase, pb::Phase::Succeeded as i32);
    }
    // The first call, held by the server until released.
    for _ in 0..500 {
        if !lock(&forgets).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.notify_one();
    let mut forgotten: Vec<String> = Vec::new();
    for _ in 0..500 {
        forgotten = lock(&forgets).concat();
        if forgotten.len() >= RUNS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = lock(&forgets).clone();
    assert!(
        calls.len() <= 2,
        "{RUNS} finished executions took {} Forget calls: {calls:?}",
        calls.len()
    );
    forgotten.sort();
    let mut started = lock(&started).clone();
    started.sort();
    assert_eq!(forgotten, started, "each execution forgotten exactly once");
}

/// At shutdown runtimed sends an external server the Forgets it has queued,
/// rather than leaving those executions to the server until its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_forgets_are_sent_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = Lingering::default();
    let (started, forgets) = (server.started.clone(), server.forgets.clone());
    server.release_first_forget.notify_one();
    let runtime = serve(server, dir.path());
    let d = Daemon::start(&["--runtime", &runtime]).await;
    d.wait_ready("lingering").await;
    let out = execute(&mut d.client(), cmd("lingering", &["anything"])).await;
    assert_eq!(out.run.expect("exited").phase, pb::Phase::Succeeded as i32);
    // Queued (the Run is tidied 1 ms after its result), not yet sent: a
    // batch waits 50 ms for others.
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(d); // SIGTERM, and waits for runtimed to exit
    assert_eq!(lock(&forgets).concat(), lock(&started).clone());
}
