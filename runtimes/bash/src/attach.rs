//! The event stream of one reader (the Start stream, or an Attach): output
//! chunks from its offsets, then the Exit, and the end. A newer Attach to the
//! same execution ends it with ABORTED.
//!
//! The stream is polled by the gRPC encoder itself (no task, no channel in
//! between): a chunk is taken from the buffer only when the transport asks
//! for the next message, so each chunk carries everything produced meanwhile
//! (coalescing) and the client's pace back-pressures the pumps. Coalescing of
//! a chatty child's small writes happens in the pump (`pump.rs`), so nothing
//! here waits on a timer: output and the Exit go out as soon as they exist.
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use kruntimes_proto::runtime::v1::{ExecutionEvent, execution_event};
use tonic::Status;

use crate::execution::{Execution, Next, ReaderState};

pub type EventStream = Pin<Box<dyn Stream<Item = Result<ExecutionEvent, Status>> + Send>>;

struct Reader {
    exec: Arc<Execution>,
    generation: u64,
    state: ReaderState,
    /// Sent before anything else (`started` on a Start stream).
    first: Option<ExecutionEvent>,
    done: bool,
}

/// The events for the reader of `generation`, after `first` if given.
pub fn stream(exec: Arc<Execution>, generation: u64, first: Option<ExecutionEvent>) -> EventStream {
    let reader = Reader {
        exec,
        generation,
        state: ReaderState::default(),
        first,
        done: false,
    };
    Box::pin(futures::stream::unfold(reader, |mut r| async move {
        if r.done {
            return None;
        }
        if let Some(ev) = r.first.take() {
            return Some((Ok(ev), r));
        }
        let item = r.next().await;
        Some((item, r))
    }))
}

impl Reader {
    async fn next(&mut self) -> Result<ExecutionEvent, Status> {
        loop {
            let notified = self.exec.changed().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.exec.next_event(self.generation, &mut self.state) {
                Next::Event(ev) => return Ok(ev),
                Next::Exited(exit) => {
                    self.done = true;
                    return Ok(ExecutionEvent {
                        event: Some(execution_event::Event::Exited(exit)),
                    });
                }
                Next::Superseded => {
                    self.done = true;
                    return Err(Status::aborted(format!(
                        "execution {:?}: replaced by a newer Attach",
                        self.exec.id
                    )));
                }
                Next::Pending => notified.await,
            }
        }
    }
}
