//! Reads a handed-off output pipe (see `Handoff` in the Runtime Server
//! protocol) into the Run's spool until EOF: a fast writer's bytes go from
//! the pipe to the spool file by `splice(2)`, never through the Runtime
//! Server and never through our memory.
//!
//! A drain is a blocking loop on a thread of its own (tokio's blocking
//! pool): only fast writers are handed off, and copying their bytes into
//! fresh page-cache pages is most of runtimed's work for them, so it runs
//! beside the event loop that serves the Run's followers instead of taking
//! turns with it. Each wake moves what the pipe holds (`FIONREAD`) in one
//! splice; after a small one, while the process runs, the drain pauses
//! [`LINGER`] so a chatty writer's lines are taken together (as the bash
//! server's pump does). Past the per-Run cap the pipe is still read to EOF
//! and the bytes are dropped and counted. Once the execution exited, a pipe
//! silent for [`DRAIN_TIMEOUT`] is held open by an escaped process: the
//! drain gives up on it. It also stops when the attempt is gone (the
//! `exited` sender dropped), checked at least every [`POLL_TICK`] ms.

use crate::run::Run;
use crate::spool::{Spool, StreamKind};
use bytes::Bytes;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most bytes moved by one splice. A splice holds the pipe's lock while it
/// copies (the writer waits) and followers hear of bytes only after it:
/// 256 KiB moved more than 1 MiB did (interleaved, follow ~855 vs ~585 MB/s).
const MAX_SPLICE: usize = 256 << 10;
/// Splices smaller than this mean a slow or chatty writer: pause.
const SMALL: usize = 16 * 1024;
/// The pause after a small splice while the process runs.
const LINGER: Duration = Duration::from_millis(1);
/// After the exit, how long a pipe may stay silent before it is abandoned.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest wait (ms) for the pipe before the flags are checked again.
const POLL_TICK: u16 = 100;

/// How a drain ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainEnd {
    Eof,
    /// Still open [`DRAIN_TIMEOUT`] after the exit: later output not read.
    Abandoned,
    /// Reading the pipe or writing the spool failed.
    Failed(String),
}

nix::ioctl_read_bad!(fionread, nix::libc::FIONREAD, nix::libc::c_int);

/// Bytes the pipe holds now.
fn available(fd: &OwnedFd) -> std::io::Result<usize> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer, which is valid.
    unsafe { fionread(fd.as_raw_fd(), &mut n) }.map_err(std::io::Error::from)?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// True once every writer closed the pipe (it may still hold bytes).
fn hung_up(fd: &OwnedFd) -> std::io::Result<bool> {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).map_err(std::io::Error::from)?;
    Ok(fds[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLHUP)))
}

/// Drains `fd` into the Run's spool as `stream` until EOF; blocks (run it
/// with `spawn_blocking`). `exited` turns true once the execution's Exit
/// arrived: from then on waits are bounded.
pub fn drain(
    run: Arc<Run>,
    stream: StreamKind,
    fd: OwnedFd,
    exited: watch::Receiver<bool>,
) -> DrainEnd {
    match drain_into(&run.spool, stream, &fd, exited) {
        Ok(end) => end,
        Err(e) => DrainEnd::Failed(e.to_string()),
    }
}

fn drain_into(
    spool: &Spool,
    stream: StreamKind,
    fd: &OwnedFd,
    exited: watch::Receiver<bool>,
) -> std::io::Result<DrainEnd> {
    // Blocking waits are poll(2) with a timeout; the reads never block.
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(std::io::Error::from)?;
    // When the exit was first seen, and when the pipe last gave bytes.
    let mut exit_seen: Option<Instant> = None;
    let mut last_bytes = Instant::now();
    loop {
        if exited.has_changed().is_err() {
            // The attempt is gone: nobody waits for this.
            return Ok(DrainEnd::Abandoned);
        }
        let done = *exited.borrow();
        if done && exit_seen.is_none() {
            exit_seen = Some(Instant::now());
        }
        let n = available(fd)?;
        if n > 0 {
            let n = n.min(MAX_SPLICE);
            if spool.at_cap() {
                discard(spool, stream, fd, n)?;
            } else if spool.splice_from(stream, fd.as_fd(), n)? == 0 {
                // Never spin on a pipe that says it holds bytes but gives none.
                return Err(std::io::Error::other(format!(
                    "the pipe holds {n} bytes but splice moved none"
                )));
            }
            last_bytes = Instant::now();
            if n < SMALL && !done {
                std::thread::sleep(LINGER);
            }
            continue;
        }
        if hung_up(fd)? && available(fd)? == 0 {
            return Ok(DrainEnd::Eof);
        }
        if let Some(seen) = exit_seen
            && last_bytes.max(seen).elapsed() >= DRAIN_TIMEOUT
        {
            return Ok(DrainEnd::Abandoned);
        }
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, POLL_TICK) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Past the cap: reads `n` bytes and hands them to the spool, which drops
/// and counts them.
fn discard(spool: &Spool, stream: StreamKind, fd: &OwnedFd, n: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; n.min(64 * 1024)];
    let got = nix::unistd::read(fd, &mut buf).map_err(std::io::Error::from)?;
    buf.truncate(got);
    let at = match stream {
        StreamKind::Stdout => spool.stream_lengths().0,
        StreamKind::Stderr => spool.stream_lengths().1,
    };
    spool.append(stream, at, Bytes::from(buf))?;
    Ok(())
}
