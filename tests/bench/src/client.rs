//! The gRPC client side of a Run: build an Execute request, drive its event
//! stream until the Exited event, and count what arrived.

use crate::error::{BenchError, Result};
use kruntimes_proto::runtimed::v1 as pb;
use pb::runtimed_client::RuntimedClient;
use tonic::transport::Channel;

pub type Client = RuntimedClient<Channel>;

pub fn command(runtime: &str, argv: &[&str]) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        runtime: runtime.into(),
        program: Some(pb::execute_request::Program::Command(pb::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
        })),
        ..Default::default()
    }
}

/// What one Execute stream delivered.
#[derive(Debug, Default)]
pub struct Outcome {
    pub run: Option<pb::Run>,
    /// Output messages received (to show output is coalesced).
    pub output_messages: u64,
    pub output_bytes: u64,
    /// stdout, when asked to keep it.
    pub stdout: Vec<u8>,
}

impl Outcome {
    /// Err unless the Run exited with code 0.
    pub fn require_success(&self, what: &str) -> Result<()> {
        match &self.run {
            Some(r) if r.exit_code == Some(0) => Ok(()),
            Some(r) => Err(BenchError::Unexpected(format!(
                "{what}: Run {} ended in phase {} with exit code {:?}, signal {:?}: {}",
                r.run_id, r.phase, r.exit_code, r.signal, r.message
            ))),
            None => Err(BenchError::Unexpected(format!(
                "{what}: the Execute stream ended without an Exited event"
            ))),
        }
    }
}

/// Executes `req` and consumes its events up to and including Exited.
pub async fn execute(
    c: &mut Client,
    req: pb::ExecuteRequest,
    keep_stdout: bool,
) -> Result<Outcome> {
    let mut stream = c
        .execute(req)
        .await
        .map_err(|s| BenchError::grpc("Execute", s))?
        .into_inner();
    let mut out = Outcome::default();
    while let Some(ev) = stream
        .message()
        .await
        .map_err(|s| BenchError::grpc("Execute stream", s))?
    {
        match ev.event {
            Some(pb::run_event::Event::Output(o)) => {
                out.output_messages += 1;
                out.output_bytes += o.data.len() as u64;
                if keep_stdout && o.stream == pb::Stream::Stdout as i32 {
                    out.stdout.extend_from_slice(&o.data);
                }
            }
            Some(pb::run_event::Event::Exited(e)) => {
                out.run = e.run;
                break;
            }
            Some(pb::run_event::Event::Truncated(t)) => {
                return Err(BenchError::Unexpected(format!(
                    "runtimed truncated the Run's log at offset {} ({} bytes dropped): raise its --log-cap-bytes",
                    t.offset, t.dropped_bytes
                )));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Starts a detached Run and returns its id once runtimed accepted it.
pub async fn execute_detached(c: &mut Client, mut req: pb::ExecuteRequest) -> Result<String> {
    req.detach = true;
    let mut stream = c
        .execute(req)
        .await
        .map_err(|s| BenchError::grpc("Execute (detached)", s))?
        .into_inner();
    while let Some(ev) = stream
        .message()
        .await
        .map_err(|s| BenchError::grpc("Execute stream", s))?
    {
        if let Some(pb::run_event::Event::Accepted(a)) = ev.event
            && let Some(run) = a.run
        {
            return Ok(run.run_id);
        }
    }
    Err(BenchError::Unexpected(
        "detached Execute ended without Accepted".into(),
    ))
}
