//! The output handoff socket of the Runtime Server protocol (see `Handoff`
//! in runtime.proto): a Runtime Server hands the read end of an execution's
//! output pipe to runtimed as an `SCM_RIGHTS` message, so a fast writer's
//! bytes go from the pipe to runtimed's spool without passing through the
//! server. Both ends live here so they cannot drift apart.
//!
//! Wire: the client connects and writes `"<execution_id> stdout\n"` (or
//! `stderr`); the server answers one byte `0` carrying the descriptor, or a
//! byte `1` followed by an error message, and closes.

use crate::runtime::v1::Stream;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::io::{Error, ErrorKind, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Longest request line (an execution id is at most 128 bytes).
const MAX_REQUEST: usize = 256;
/// Longest error message read back.
const MAX_ANSWER: usize = 4096;
/// How long either side waits for the other.
const TIMEOUT: Duration = Duration::from_secs(5);

fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Stderr => "stderr",
        _ => "stdout",
    }
}

/// A parsed request: which execution, which stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub execution_id: String,
    pub stream: Stream,
}

impl Request {
    fn parse(line: &[u8]) -> Result<Request, String> {
        let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_string())?;
        let (id, stream) = text
            .split_once(' ')
            .ok_or_else(|| format!("request {text:?} is not \"<execution_id> stdout|stderr\""))?;
        let stream = match stream {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            other => return Err(format!("stream {other:?} is neither stdout nor stderr")),
        };
        Ok(Request {
            execution_id: id.to_string(),
            stream,
        })
    }
}

/// Server side of one connection: reads the request, asks `lookup` for the
/// descriptor and sends it (or the error `lookup` gives).
pub async fn answer<F>(mut conn: UnixStream, lookup: F) -> std::io::Result<()>
where
    F: FnOnce(&Request) -> Result<OwnedFd, String>,
{
    let line = tokio::time::timeout(TIMEOUT, read_line(&mut conn))
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, "no request within 5s"))??;
    let fd = Request::parse(&line).and_then(|r| lookup(&r));
    match fd {
        Ok(fd) => {
            let raw = [fd.as_raw_fd()];
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let iov = [IoSlice::new(&[0u8])];
            tokio::time::timeout(TIMEOUT, async {
                loop {
                    conn.writable().await?;
                    match conn.try_io(Interest::WRITABLE, || {
                        sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                            .map_err(Error::from)
                    }) {
                        Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                        r => return r.map(|_| ()),
                    }
                }
            })
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "client did not read within 5s"))?
        }
        Err(msg) => {
            let mut out = vec![1u8];
            out.extend_from_slice(msg.as_bytes());
            conn.write_all(&out).await
        }
    }
}

async fn read_line(conn: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8; MAX_REQUEST];
    loop {
        let n = conn.read(&mut byte).await?;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before the request's end of line",
            ));
        }
        line.extend_from_slice(&byte[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok(line);
        }
        if line.len() > MAX_REQUEST {
            return Err(Error::new(
                ErrorKind::InvalidData,
                format!("request longer than {MAX_REQUEST} bytes"),
            ));
        }
    }
}

/// Client side: takes the read end of `stream` of `execution_id` from the
/// handoff socket at `path`. The descriptor is close-on-exec. Errors name
/// the socket and say what the server answered.
pub async fn take(path: &Path, execution_id: &str, stream: Stream) -> std::io::Result<OwnedFd> {
    let ctx = |e: Error| {
        Error::new(
            e.kind(),
            format!(
                "taking {} of execution {execution_id} from handoff socket {}: {e}",
                stream_name(stream),
                path.display()
            ),
        )
    };
    tokio::time::timeout(TIMEOUT, take_inner(path, execution_id, stream))
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, "no answer within 5s"))
        .and_then(|r| r)
        .map_err(ctx)
}

async fn take_inner(path: &Path, execution_id: &str, stream: Stream) -> std::io::Result<OwnedFd> {
    let mut conn = UnixStream::connect(path).await?;
    conn.write_all(format!("{execution_id} {}\n", stream_name(stream)).as_bytes())
        .await?;
    let mut first = [0u8; 1];
    let fd = loop {
        conn.readable().await?;
        match conn.try_io(Interest::READABLE, || receive(conn.as_raw_fd(), &mut first)) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            r => break r?,
        }
    };
    match (first[0], fd) {
        (0, Some(fd)) => Ok(fd),
        (0, None) => Err(Error::other("the answer carried no descriptor")),
        (_, fd) => {
            drop(fd);
            let mut msg = Vec::new();
            (&mut conn)
                .take(MAX_ANSWER as u64)
                .read_to_end(&mut msg)
                .await?;
            Err(Error::other(format!(
                "the server refused: {}",
                String::from_utf8_lossy(&msg)
            )))
        }
    }
}

/// One `recvmsg` of the answer's first byte and its descriptor, if any.
fn receive(sock: RawFd, first: &mut [u8; 1]) -> std::io::Result<Option<OwnedFd>> {
    let mut iov = [IoSliceMut::new(first)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(Error::from)?;
    if msg.bytes == 0 {
        return Err(Error::new(ErrorKind::UnexpectedEof, "no answer"));
    }
    let mut fd = None;
    for c in msg.cmsgs().map_err(Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: the kernel just installed `raw` in our table for
                // us; nothing else owns it.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    Ok(fd)
}

/// A duplicate of `fd` to send (the sender keeps its own).
pub fn duplicate(fd: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    fd.try_clone_to_owned()
        .map_err(|e| format!("duplicating the pipe descriptor: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn requests_parse_and_bad_ones_say_why() {
        assert_eq!(
            Request::parse(b"run-1 stderr").unwrap(),
            Request {
                execution_id: "run-1".into(),
                stream: Stream::Stderr
            }
        );
        assert!(
            Request::parse(b"run-1")
                .unwrap_err()
                .contains("stdout|stderr")
        );
        assert!(
            Request::parse(b"run-1 stdin")
                .unwrap_err()
                .contains("stdin")
        );
    }

    /// A pipe's read end crosses the socket and reads what the writer wrote;
    /// a refusal comes back as the server's message.
    #[tokio::test]
    async fn a_pipe_read_end_crosses_and_refusals_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handoff.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (conn, _) = listener.accept().await.unwrap();
                answer(conn, |req| {
                    if req.execution_id == "known" && req.stream == Stream::Stdout {
                        duplicate(r.as_fd())
                    } else {
                        Err(format!("execution {:?} is unknown", req.execution_id))
                    }
                })
                .await
                .unwrap();
            }
        });
        let fd = take(&path, "known", Stream::Stdout).await.unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"through the socket").unwrap();
        drop(w);
        let mut got = String::new();
        std::fs::File::from(fd).read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the socket");
        let err = take(&path, "other", Stream::Stdout).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"other\" is unknown"), "{msg}");
        assert!(msg.contains("handoff.sock"), "{msg}");
        server.await.unwrap();
    }
}
