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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic::{Request, Response, Status};

type Events = Pin<Box<dyn Stream<Item = Result<rpb::ExecutionEvent, Status>> + Send>>;

/// Starts every execution as `started`, then its exit, then ends the stream
/// after a pause, noting whether the stream was read to its end (a client
/// that drops it early resets the call, which the server sees as cancelled).
#[derive(Default)]
struct Lingering {
    read_to_end: Arc<AtomicBool>,
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

    async fn start(&self, _: Request<rpb::StartRequest>) -> Result<Response<Events>, Status> {
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
        _: Request<rpb::ForgetRequest>,
    ) -> Result<Response<rpb::ForgetResponse>, Status> {
        Ok(Response::new(rpb::ForgetResponse::default()))
    }
}

/// After the exit runtimed reads the rest of the execution's stream (the
/// server's trailers may follow in a write of their own, as grpcio's do)
/// rather than dropping it: the server's call ends cleanly, not cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executions_stream_is_read_to_its_end_after_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lingering.sock");
    let server = Lingering::default();
    let read_to_end = server.read_to_end.clone();
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RuntimeServerServer::new(server))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let runtime = format!("lingering=unix:{}", sock.display());
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
