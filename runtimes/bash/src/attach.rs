//! One Attach stream: sends output chunks from the requested offsets, then the
//! Exit, and ends. A newer Attach to the same execution ends this one.
//! A chunk is taken from the buffer only when the channel to the client has
//! room, so each chunk carries everything produced meanwhile (coalescing)
//! and the client's pace back-pressures the pumps. After a small chunk, while
//! the process still runs, the stream lingers briefly before taking the next:
//! a chatty child's many small writes then travel as a few larger messages
//! (at most LINGER of added latency, and none under load, when chunks are big).
use std::sync::Arc;

use kruntimes_proto::runtime::v1::{ExecutionEvent, execution_event};
use tokio::sync::mpsc;
use tonic::Status;

use crate::execution::{Execution, Next};

/// Messages queued towards the client beyond the one being written.
pub const CHANNEL_DEPTH: usize = 2;

/// Pause after a small chunk, to let more output accumulate.
const LINGER: std::time::Duration = std::time::Duration::from_millis(1);
/// Chunks smaller than this are "small".
const SMALL_CHUNK: usize = 64 * 1024;

fn is_small(ev: &ExecutionEvent) -> bool {
    matches!(&ev.event, Some(execution_event::Event::Output(o)) if o.data.len() < SMALL_CHUNK)
}

pub type EventSender = mpsc::Sender<Result<ExecutionEvent, Status>>;

pub async fn stream(exec: Arc<Execution>, generation: u64, tx: EventSender) {
    let mut prefer_stderr = false;
    let mut last_small = false;
    loop {
        let Ok(permit) = tx.reserve().await else {
            return; // client gone
        };
        if last_small && exec.is_running() {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = tx.closed() => return,
            }
        }
        let next = loop {
            let notified = exec.changed().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match exec.next_event(generation, &mut prefer_stderr) {
                Next::Pending => {}
                other => break other,
            }
            tokio::select! {
                _ = notified => {}
                _ = tx.closed() => return,
            }
        };
        match next {
            Next::Event(ev) => {
                last_small = is_small(&ev);
                permit.send(Ok(ev))
            }
            Next::Exited(exit) => {
                permit.send(Ok(ExecutionEvent {
                    event: Some(execution_event::Event::Exited(exit)),
                }));
                return;
            }
            Next::Superseded => {
                permit.send(Err(Status::aborted(format!(
                    "execution {:?}: replaced by a newer Attach",
                    exec.id
                ))));
                return;
            }
            Next::Pending => {}
        }
    }
}
