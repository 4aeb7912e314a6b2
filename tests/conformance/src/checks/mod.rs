//! The checks, one module per part of the contract. Every check states in its
//! doc comment what it verifies and fails with a message saying what was
//! expected and what the server did.
pub mod attach;
pub mod back_pressure;
pub mod bad_input;
pub mod cancel;
pub mod concurrency;
pub mod env;
pub mod exit;
pub mod handoff;
pub mod handshake;
pub mod lifecycle;
pub mod output;
pub mod reaping;
pub mod script;
pub mod shutdown;
pub mod timeout;
pub mod workdir;

use std::time::{Duration, Instant};

use kruntimes_proto::runtime::v1::{ExecutionState, ExecutionStatus, StatusRequest};

use crate::Failure;
use crate::client::{Client, STEP_TIMEOUT};

/// Polls Status until the execution is EXITED (bounded by [`STEP_TIMEOUT`]).
pub async fn wait_exited(client: &mut Client, id: &str) -> Result<ExecutionStatus, Failure> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let st = status(client, id).await?;
        if st.state == ExecutionState::Exited as i32 {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            return Err(Failure::Violation(format!(
                "{id}: still {:?} after {STEP_TIMEOUT:?}",
                ExecutionState::try_from(st.state)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn status(client: &mut Client, id: &str) -> Result<ExecutionStatus, Failure> {
    Ok(client
        .status(StatusRequest {
            execution_id: id.to_string(),
        })
        .await
        .map_err(Failure::rpc(format!("Status {id}")))?
        .into_inner())
}

/// Parses the first line of `out` as a pid (printed by a test child).
pub fn first_line_pid(id: &str, out: &[u8]) -> Result<i32, Failure> {
    let text = String::from_utf8_lossy(out);
    text.lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            Failure::Violation(format!(
                "{id}: expected a pid on the first line, got {text:?}"
            ))
        })
}
