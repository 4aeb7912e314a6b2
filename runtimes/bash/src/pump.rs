//! Moves one output pipe of an execution into its bounded stream buffer.
//!
//! The pipe is read only while the buffer has room for unsent bytes, so a
//! child nobody reads from blocks on write instead of growing server memory.
//!
//! Few wake-ups: reads are plain non-blocking `read(2)`s into a large
//! buffer; only when the pipe is empty is it registered with the event loop
//! for one readiness wait (and deregistered after), so a writer does not wake
//! the server while it is not waiting. After a small read, while the process
//! runs, the pump pauses [`LINGER`] before reading again: a chatty child's
//! lines pile up in the pipe and are taken by one read (bounded delay; the
//! pause ends at once when the process exits, so the last output and the
//! Exit are not delayed). A pipe that fills its default size is enlarged once
//! to [`BIG_PIPE_BYTES`] (best effort), so a fast writer is read in large
//! chunks. Bytes go from the read buffer to the messages without copies.
//!
//! Handoff: when the client allows it, a stream that has produced
//! [`HANDOFF_AFTER`] bytes and still fills large reads is handed to the
//! client (see `Handoff` in the protocol): the pump stops and the pipe's
//! read end goes to the execution, from which the client takes it. A fast,
//! plentiful writer's bytes then go from the pipe to the client's spool
//! without passing through this server; short and chatty Runs stay here.
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::execution::{Execution, Which};

/// Most bytes taken by one read, and the largest read buffer.
const READ_BYTES: usize = 1024 * 1024;
/// The first read buffer. Buffers double (up to [`READ_BYTES`]) while reads
/// fill them, so a quiet process costs no large allocation (a 1 MiB buffer
/// per pipe per Run showed up as heap growing and trimming, `brk`, per Run)
/// and a fast writer soon gets large reads.
const FIRST_BUFFER: usize = 16 * 1024;
/// Reads smaller than this mean a slow or chatty writer: pause before the
/// next read.
const SMALL_READ: usize = 16 * 1024;
/// The pause after a small read while the process runs.
pub const LINGER: Duration = Duration::from_millis(1);
/// Linux's default pipe capacity: a read this large found the pipe full.
const DEFAULT_PIPE_BYTES: usize = 64 * 1024;
/// Capacity a full pipe is enlarged to (bounded by the kernel's
/// pipe-max-size and per-user pipe limits; failure keeps the default).
const BIG_PIPE_BYTES: libc::c_int = 1024 * 1024;
/// Bytes a stream produces through the server before it may be handed off.
pub const HANDOFF_AFTER: u64 = 4 * 1024 * 1024;
/// A read at least this large shows a writer fast enough to hand off.
const HANDOFF_READ: usize = 256 * 1024;
/// After the leader exited and its group was killed, how long a pipe may stay
/// silent before it is considered held open by an escaped process.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    Eof,
    /// The client reads the pipe from now on.
    HandedOff,
    /// Stopped reading: the pipe stayed open after the process group was gone
    /// (an escaped process holds it), or reading failed.
    Abandoned,
}

/// Pumps `fd` into `which` until EOF. `leader_done` becomes true once the
/// leader exited and its group is gone: from then on waits are bounded.
pub async fn pump(
    exec: Arc<Execution>,
    which: Which,
    fd: OwnedFd,
    leader_done: watch::Receiver<bool>,
) -> PumpEnd {
    let end = run(&exec, which, &fd, leader_done).await;
    if end == PumpEnd::HandedOff {
        exec.hand_off(which, fd);
    } else {
        exec.set_eof(which);
    }
    end
}

async fn run(
    exec: &Execution,
    which: Which,
    fd: &OwnedFd,
    mut leader_done: watch::Receiver<bool>,
) -> PumpEnd {
    if let Err(e) = set_nonblocking(fd) {
        tracing::warn!(id = %exec.id, ?which, error = %e, "cannot read output pipe");
        return PumpEnd::Abandoned;
    }
    let mut buf = BytesMut::new();
    // Size of the next buffer allocation.
    let mut alloc = FIRST_BUFFER;
    let mut enlarged = false;
    loop {
        let room = wait_for_room(exec, which).await;
        // Reads share one allocation until less than a useful read is left
        // of it; `reserve` reuses it when every chunk read into it is gone.
        if buf.capacity() < (alloc / 4).min(room) {
            buf.reserve(alloc);
        }
        let limit = room.min(buf.capacity()).min(READ_BYTES);
        match read_into(fd, &mut buf, limit) {
            Ok(0) => return PumpEnd::Eof,
            Ok(n) => {
                if n == limit && n >= alloc / 2 {
                    alloc = (alloc * 2).min(READ_BYTES);
                }
                exec.push(which, buf.split().freeze());
                if exec.handoff && n >= HANDOFF_READ && exec.produced(which) >= HANDOFF_AFTER {
                    return PumpEnd::HandedOff;
                }
                if !enlarged && n >= DEFAULT_PIPE_BYTES {
                    enlarged = true;
                    enlarge(fd);
                }
                if n < SMALL_READ {
                    linger(&mut leader_done).await;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                match wait_readable(fd, &mut leader_done).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            id = %exec.id, ?which,
                            "output pipe still open {DRAIN_TIMEOUT:?} after the process group ended; an escaped process holds it"
                        );
                        return PumpEnd::Abandoned;
                    }
                    Err(e) => {
                        tracing::warn!(id = %exec.id, ?which, error = %e, "waiting on output pipe failed");
                        return PumpEnd::Abandoned;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(id = %exec.id, ?which, error = %e, "reading output pipe failed");
                return PumpEnd::Abandoned;
            }
        }
    }
}

/// The server's fresh read end has no other status flags to keep (the
/// access mode is ignored by F_SETFL), so one call does it.
fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok(())
}

/// One non-blocking read of at most `limit` bytes into `buf`'s spare capacity.
fn read_into(fd: &OwnedFd, buf: &mut BytesMut, limit: usize) -> std::io::Result<usize> {
    let spare = buf.chunk_mut();
    let limit = limit.min(spare.len());
    // SAFETY: read(2) writes at most `limit` bytes to the spare capacity,
    // which is valid for writes of `spare.len() >= limit` bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), limit) };
    let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
    // SAFETY: the kernel initialised the first `n <= limit` spare bytes.
    unsafe { buf.advance_mut(n) };
    Ok(n)
}

fn enlarge(fd: &OwnedFd) {
    // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, BIG_PIPE_BYTES) };
    if r < 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "pipe kept at its default size");
    }
}

/// Pauses after a small read, unless (or until) the leader is done.
async fn linger(leader_done: &mut watch::Receiver<bool>) {
    if *leader_done.borrow() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(LINGER) => {}
        _ = leader_done.changed() => {}
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

/// Waits until the pipe is readable (data or EOF). Once the leader is done
/// the wait is bounded by [`DRAIN_TIMEOUT`]: `Ok(false)` when it expires.
async fn wait_readable(
    fd: &OwnedFd,
    leader_done: &mut watch::Receiver<bool>,
) -> std::io::Result<bool> {
    // Registered only for this wait; dropping `afd` deregisters it and does
    // not close the fd (a BorrowedFd owns nothing).
    // SAFETY: the fd is borrowed from `fd`, which outlives `afd` (both live
    // in this call), stays open and is not replaced meanwhile.
    let afd = unsafe { AsyncFd::register_with_interest(fd.as_fd(), Interest::READABLE) }
        .map_err(std::io::Error::from)?;
    loop {
        if *leader_done.borrow() {
            return match tokio::time::timeout(DRAIN_TIMEOUT, afd.readable()).await {
                Ok(r) => r.map(|_| true),
                Err(_) => Ok(false),
            };
        }
        tokio::select! {
            r = afd.readable() => return r.map(|_| true),
            changed = leader_done.changed() => {
                if changed.is_err() {
                    // Supervisor gone without saying: bound the wait anyway.
                    return match tokio::time::timeout(DRAIN_TIMEOUT, afd.readable()).await {
                        Ok(r) => r.map(|_| true),
                        Err(_) => Ok(false),
                    };
                }
            }
        }
    }
}
