//! A Runtime Server's event stream read one event at a time, whether the
//! server sent each event in a message of its own or several together in an
//! `EventBatch`.

use crate::runtime::v1::{ExecutionEvent, execution_event::Event};
use std::collections::VecDeque;
use tonic::{Status, Streaming};

/// Most events one `EventBatch` may hold (the protocol's bound).
pub const BATCH_MAX_EVENTS: usize = 64;

/// The events of a Start or Attach stream, batches unpacked in order.
#[derive(Debug)]
pub struct Events {
    stream: Streaming<ExecutionEvent>,
    queued: VecDeque<ExecutionEvent>,
}

impl Events {
    pub fn new(stream: Streaming<ExecutionEvent>) -> Self {
        Self {
            stream,
            queued: VecDeque::new(),
        }
    }

    /// The next event (never a batch); `None` once the stream has ended. A
    /// batch that breaks the protocol fails with INTERNAL, naming the bound.
    pub async fn message(&mut self) -> Result<Option<ExecutionEvent>, Status> {
        loop {
            if let Some(ev) = self.queued.pop_front() {
                return Ok(Some(ev));
            }
            let Some(ev) = self.stream.message().await? else {
                return Ok(None);
            };
            let Some(Event::Batch(batch)) = ev.event else {
                return Ok(Some(ev));
            };
            check(&batch.events)?;
            self.queued.extend(batch.events);
        }
    }
}

fn check(events: &[ExecutionEvent]) -> Result<(), Status> {
    let broke = |what: String| {
        Status::internal(format!(
            "the runtime server broke the protocol: EventBatch {what}"
        ))
    };
    if events.is_empty() {
        return Err(broke("with no events (1 to 64 allowed)".into()));
    }
    if events.len() > BATCH_MAX_EVENTS {
        return Err(broke(format!(
            "with {} events (1 to {BATCH_MAX_EVENTS} allowed)",
            events.len()
        )));
    }
    if events
        .iter()
        .any(|e| matches!(e.event, Some(Event::Batch(_))))
    {
        return Err(broke("inside an EventBatch".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::v1::{EventBatch, Exit};

    fn exited() -> ExecutionEvent {
        ExecutionEvent {
            event: Some(Event::Exited(Exit::default())),
        }
    }

    #[test]
    fn batches_are_bounded_and_flat() {
        assert!(check(&[exited()]).is_ok());
        assert!(check(&vec![exited(); BATCH_MAX_EVENTS]).is_ok());
        let e = check(&vec![exited(); BATCH_MAX_EVENTS + 1]).unwrap_err();
        assert!(e.message().contains("65 events (1 to 64 allowed)"), "{e:?}");
        assert!(check(&[]).unwrap_err().message().contains("no events"));
        let nested = ExecutionEvent {
            event: Some(Event::Batch(EventBatch {
                events: vec![exited()],
            })),
        };
        let e = check(&[exited(), nested]).unwrap_err();
        assert!(e.message().contains("inside an EventBatch"), "{e:?}");
    }
}
