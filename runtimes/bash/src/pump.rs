//! Moves one output pipe of an execution into its bounded stream buffer.
//! The pipe is read only while the buffer has room for unsent bytes, so a
//! child nobody reads from blocks on write instead of growing server memory.
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::execution::{Execution, Which};
use crate::output::MAX_CHUNK_BYTES;

/// Bytes read per pump iteration (one read plus follow-up non-blocking reads).
const READ_BYTES: usize = MAX_CHUNK_BYTES;
/// After the leader exited and its group was killed, how long a pipe may stay
/// silent before it is considered held open by an escaped process.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    Eof,
    /// Stopped reading: the pipe stayed open after the process group was gone
    /// (an escaped process holds it), or reading failed.
    Abandoned,
}

/// Pumps `fd` into `which` until EOF. `leader_done` becomes true once the
/// leader exited and its group is gone: from then on reads are bounded.
pub async fn pump(
    exec: Arc<Execution>,
    which: Which,
    fd: OwnedFd,
    leader_done: watch::Receiver<bool>,
) -> PumpEnd {
    let end = run(&exec, which, fd, leader_done).await;
    exec.set_eof(which);
    end
}

async fn run(
    exec: &Execution,
    which: Which,
    fd: OwnedFd,
    mut leader_done: watch::Receiver<bool>,
) -> PumpEnd {
    let mut rx = match pipe::Receiver::from_owned_fd(fd) {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(id = %exec.id, ?which, error = %e, "cannot read output pipe");
            return PumpEnd::Abandoned;
        }
    };
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let room = wait_for_room(exec, which).await;
        let limit = room.min(buf.len());
        let mut filled = match read_bounded(&mut rx, &mut buf[..limit], &mut leader_done).await {
            Some(Ok(0)) => return PumpEnd::Eof,
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                tracing::warn!(id = %exec.id, ?which, error = %e, "reading output pipe failed");
                return PumpEnd::Abandoned;
            }
            None => {
                tracing::warn!(
                    id = %exec.id, ?which,
                    "output pipe still open {DRAIN_TIMEOUT:?} after the process group ended; an escaped process holds it"
                );
                return PumpEnd::Abandoned;
            }
        };
        // Take whatever else is already in the pipe, so a chatty child gives
        // few large pushes rather than one per write.
        let mut eof = false;
        while filled < limit {
            match rx.try_read(&mut buf[filled..limit]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(_) => break,
            }
        }
        exec.push(which, &buf[..filled]);
        if eof {
            return PumpEnd::Eof;
        }
    }
}

async fn wait_for_room(exec: &Execution, which: Which) -> usize {
    loop {
        let notified = exec.changed().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let room = exec.room(which);
        if room > 0 {
            return room;
        }
        notified.await;
    }
}

/// One read; once the leader is done, a read waits at most [`DRAIN_TIMEOUT`]
/// (None when it expires).
async fn read_bounded(
    rx: &mut pipe::Receiver,
    buf: &mut [u8],
    leader_done: &mut watch::Receiver<bool>,
) -> Option<std::io::Result<usize>> {
    loop {
        let done = *leader_done.borrow();
        if done {
            return tokio::time::timeout(DRAIN_TIMEOUT, rx.read(buf)).await.ok();
        }
        tokio::select! {
            r = rx.read(&mut *buf) => return Some(r),
            changed = leader_done.changed() => {
                if changed.is_err() {
                    // Supervisor gone without saying: bound the read anyway.
                    return tokio::time::timeout(DRAIN_TIMEOUT, rx.read(buf)).await.ok();
                }
            }
        }
    }
}
