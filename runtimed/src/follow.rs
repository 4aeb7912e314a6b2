//! Reads a Run's spool from an offset and hands the output to a gRPC response
//! stream, optionally following until the Run ends. Shared by Execute and Logs.

use crate::error::Error;
use crate::run::Run;
use crate::spool::{Chunk, StreamKind};
use kruntimes_proto::runtimed::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;

/// Largest Output message: big enough to amortise per-message cost, small
/// enough to keep latency and memory per follower low.
pub const MAX_CHUNK: usize = 256 * 1024;

/// What a follower sends: output, or the in-band truncation marker.
pub enum Item {
    Output(pb::Output),
    Truncated(pb::Truncated),
}

pub enum Followed {
    /// Everything up to the end of a finished Run's log was sent.
    Complete,
    /// Not following, and everything spooled so far was sent.
    CaughtUp,
}

pub fn to_output(c: Chunk) -> pb::Output {
    pb::Output {
        stream: match c.stream {
            StreamKind::Stdout => pb::Stream::Stdout,
            StreamKind::Stderr => pb::Stream::Stderr,
        }
        .into(),
        offset: c.offset,
        data: c.data,
    }
}

/// Sends output from `offset` to `tx`, each message wrapped by `wrap`.
/// Returns `None` when the receiver went away (client disconnected).
pub async fn pump<T>(
    run: &Run,
    mut offset: u64,
    follow: bool,
    only: Option<StreamKind>,
    tx: &mpsc::Sender<Result<T, Status>>,
    wrap: impl Fn(Item) -> T,
) -> Option<Followed> {
    let mut progress = run.spool.subscribe();
    let mut marker_sent = false;
    loop {
        let p = *progress.borrow_and_update();
        if run.spool.is_evicted() {
            let _ = tx.send(Err(Error::LogEvicted(run.id.clone()).into())).await;
            return None;
        }
        if offset > p.len && p.closed {
            let e = Error::OffsetOutOfRange {
                id: run.id.clone(),
                offset,
                length: p.len,
            };
            let _ = tx.send(Err(e.into())).await;
            return None;
        }
        while offset < p.len {
            match run.spool.read(offset, MAX_CHUNK, only) {
                Ok((chunk, next)) => {
                    if let Some(c) = chunk {
                        tx.send(Ok(wrap(Item::Output(to_output(c))))).await.ok()?;
                    }
                    offset = next;
                }
                Err(e) => {
                    let _ = tx.send(Err(Error::Spool(e).into())).await;
                    return None;
                }
            }
        }
        if !marker_sent
            && let Some(t) = run.spool.truncation()
            && offset >= t.offset
        {
            marker_sent = true;
            let marker = pb::Truncated {
                offset: t.offset,
                dropped_bytes: t.dropped,
            };
            tx.send(Ok(wrap(Item::Truncated(marker)))).await.ok()?;
        }
        if p.closed {
            return Some(Followed::Complete);
        }
        if !follow {
            return Some(Followed::CaughtUp);
        }
        tokio::select! {
            r = progress.changed() => if r.is_err() { return Some(Followed::Complete) },
            _ = tx.closed() => return None,
        }
    }
}
