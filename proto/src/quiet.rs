//! A Unix stream socket that wakes its process only to read: the connection
//! between runtimed and a Runtime Server, on both ends.
//!
//! Why: tokio registers a stream for reading and writing at once,
//! edge-triggered. A Unix socket tells its writer "writable" each time the
//! peer consumes a message (the kernel frees the sent buffer and wakes the
//! writer's waiters), so every reply runtimed read from the bash server woke
//! that server for nothing, and every request the server read woke runtimed:
//! a pair of context switches on a Run's path at its start and again at its
//! exit (`perf sched timehist`). Registered for readability only, the stream
//! asks to hear about room to write only after a write found none, through a
//! second registration (on a duplicate of the descriptor) that is dropped as
//! soon as a write goes through again.
//!
//! Small writes are also held until a flush that has waited two scheduler
//! rounds: h2 flushes each frame as the task that made it runs, so a Start
//! (HEADERS, then DATA, then the end of the stream from hyper's body task)
//! went out in three writes, each waking the bash server (whose short
//! scheduler slice lets it preempt runtimed for each), and an exit's DATA
//! and trailers in two. Held for two rounds, they go out in one write.
use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::libc;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

pub struct QuietUnixStream {
    stream: AsyncFd<UnixStream>,
    /// Registered for writability while a write waits for room.
    congested: Option<AsyncFd<OwnedFd>>,
    /// Bytes written but not sent yet (at most [`MAX_HELD`]).
    held: Vec<u8>,
    /// Scheduler rounds a flush of `held` has waited so far.
    waited: u8,
}

/// Most bytes held back; larger writes go out at once (after what is held).
const MAX_HELD: usize = 64 << 10;
/// Rounds a flush waits: hyper's body task sends a request's DATA one
/// round after its HEADERS and the end of the stream one more round later
/// (it waits for h2 to grant it send capacity again).
const ROUNDS: u8 = 2;

impl QuietUnixStream {
    /// Takes over a connected stream (its tokio registration is replaced).
    /// Needs a tokio runtime.
    pub fn new(stream: tokio::net::UnixStream) -> io::Result<QuietUnixStream> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(true)?;
        Ok(QuietUnixStream {
            stream: register(stream, Interest::READABLE)?,
            congested: None,
            held: Vec::new(),
            waited: 0,
        })
    }

    /// Sends what is held, waiting for room as needed.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let held = std::mem::take(&mut self.held);
            let sent = self.poll_write_with(cx, |mut s| s.write(&held));
            self.held = held;
            match ready!(sent)? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => drop(self.held.drain(..n)),
            }
        }
        self.waited = 0;
        Poll::Ready(Ok(()))
    }

    /// Runs a non-blocking write until it goes through or there is no room,
    /// then waits for room.
    fn poll_write_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&UnixStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match write(self.stream.get_ref()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => {
                    self.congested = None;
                    return Poll::Ready(done);
                }
            }
            let congested = match &self.congested {
                Some(c) => c,
                // Registering reports room that is already there at once.
                None => self.congested.insert(register(
                    self.stream.get_ref().as_fd().try_clone_to_owned()?,
                    Interest::WRITABLE,
                )?),
            };
            ready!(congested.poll_write_ready(cx))?.clear_ready();
        }
    }
}

/// Registers a descriptor this process owns with tokio's reactor.
fn register<T: AsRawFd>(owner: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `owner` (a UnixStream or an OwnedFd) owns its descriptor,
    // which stays open and the same until the AsyncFd, holding `owner`, is
    // dropped.
    unsafe { AsyncFd::register_with_interest(owner, interest) }.map_err(io::Error::from)
}

impl AsyncRead for QuietUnixStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.stream.poll_read_ready(cx))?;
            // Read into the buffer's uninitialised part, as tokio's own
            // streams do: zeroing it first would cost a memset of the whole
            // spare capacity (up to a frame's size) on every read.
            // SAFETY: only `recv` writes to it, and only the `n` bytes it
            // reports are then marked initialised.
            let unfilled = unsafe { buf.unfilled_mut() };
            let len = unfilled.len();
            match guard.try_io(|s| {
                // SAFETY: the pointer and length describe `unfilled`.
                let n = unsafe { libc::recv(s.as_raw_fd(), unfilled.as_mut_ptr().cast(), len, 0) };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            }) {
                Ok(Ok(n)) => {
                    // A short read emptied the socket: wait for the next
                    // edge instead of trying a read that finds nothing (as
                    // tokio's own streams do).
                    if n > 0 && n < len {
                        guard.clear_ready();
                    }
                    // SAFETY: `recv` initialised the first `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for QuietUnixStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() + buf.len() <= MAX_HELD {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_send_held(cx))?;
        this.poll_write_with(cx, |mut s| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.held.len() + len <= MAX_HELD {
            bufs.iter().for_each(|b| this.held.extend_from_slice(b));
            return Poll::Ready(Ok(len));
        }
        ready!(this.poll_send_held(cx))?;
        this.poll_write_with(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if this.waited < ROUNDS {
            // A round for the tasks already woken to add their frames.
            this.waited += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.poll_send_held(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Poll::Ready(this.stream.get_ref().shutdown(Shutdown::Write))
    }
}

impl Drop for QuietUnixStream {
    /// Best effort for bytes written and never flushed (h2 always flushes).
    fn drop(&mut self) {
        if !self.held.is_empty() {
            let _ = self.stream.get_ref().write(&self.held);
        }
    }
}

impl tonic::transport::server::Connected for QuietUnixStream {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both ways, and more than the socket buffers hold, so the writer has
    /// to wait for room (the path through the second registration).
    #[tokio::test]
    async fn carries_bytes_both_ways_and_waits_for_room() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (mut a, mut b) = (
            QuietUnixStream::new(a).unwrap(),
            QuietUnixStream::new(b).unwrap(),
        );
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            let mut reply = Vec::new();
            a.read_to_end(&mut reply).await.unwrap();
            reply
        });
        // Let the writer fill the socket before anyone reads.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut got = Vec::new();
        let read = b.read_to_end(&mut got);
        tokio::time::timeout(std::time::Duration::from_secs(20), read)
            .await
            .expect("the writer stalled")
            .unwrap();
        assert!(got == data, "{} bytes back of {}", got.len(), data.len());
        let bufs = [IoSlice::new(b"one "), IoSlice::new(b"reply")];
        let n = b.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 9);
        b.flush().await.unwrap();
        drop(b);
        assert_eq!(writer.await.unwrap(), b"one reply");
    }

    /// Small writes wait for a flush, which sends them together two
    /// scheduler rounds later.
    #[tokio::test]
    async fn small_writes_go_out_together_at_the_flush() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let mut a = QuietUnixStream::new(a).unwrap();
        a.write_all(b"HEADERS ").await.unwrap();
        a.write_all(b"DATA ").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            b.try_read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing sent before the flush"
        );
        a.write_all(b"END").await.unwrap();
        a.flush().await.unwrap();
        b.readable().await.unwrap();
        let n = b.try_read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"HEADERS DATA END", "one write");
        // A write larger than what is held goes out at once, after it.
        a.write_all(b"small ").await.unwrap();
        let big = vec![b'z'; MAX_HELD + 1];
        a.write_all(&big).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 6 + big.len() {
            b.readable().await.unwrap();
            match b.try_read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(&got[..6], b"small ");
        assert!(got[6..] == big[..]);
    }
}
