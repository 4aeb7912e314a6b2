//! One execution: identity, the two bounded output streams (or the pipe a
//! stream was handed off with), the current Attach, cancel orders and the
//! final Exit. Shared by the pumps (writers of output), the supervisor (exit,
//! cancel), Attach streams (readers) and the handoff socket.
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use kruntimes_proto::runtime::v1::{
    ExecutionEvent, ExecutionState, ExecutionStatus, Exit, Handoff, OutputChunk, Stream,
    execution_event,
};
use kruntimes_proto::time::to_timestamp;
use tokio::sync::{Notify, watch};

use crate::error::RuntimeError;
use crate::output::{MAX_CHUNK_BYTES, SeekError, StreamBuffer};

/// Reader generation of the Start stream, which reads from offsets 0/0.
pub const START_GENERATION: u64 = 1;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Stdout,
    Stderr,
}

impl Which {
    fn index(self) -> usize {
        match self {
            Which::Stdout => 0,
            Which::Stderr => 1,
        }
    }

    fn proto(self) -> Stream {
        match self {
            Which::Stdout => Stream::Stdout,
            Which::Stderr => Stream::Stderr,
        }
    }
}

/// A request to stop the execution: SIGTERM now, SIGKILL at `kill_at`.
#[derive(Debug, Clone, Copy)]
pub struct CancelOrder {
    pub kill_at: Instant,
    pub grace: Duration,
    pub why: StopReason,
}

/// Why an execution is stopped: the Exit says `timed_out` for a timeout and
/// `cancelled` for the other two; its message tells those apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancel,
    Timeout,
    /// The server itself is stopping.
    Shutdown,
}

/// A reader's own progress: which stream it serves first next time, and
/// whether it was told of each stream's handoff.
#[derive(Debug, Default)]
pub struct ReaderState {
    prefer_stderr: bool,
    handoff_sent: [bool; 2],
}

/// What an Attach stream should do next.
#[derive(Debug)]
pub enum Next {
    Event(ExecutionEvent),
    Exited(Exit),
    /// A newer Attach took over.
    Superseded,
    /// Nothing to send yet; wait for a change.
    Pending,
}

struct State {
    stdout: StreamBuffer,
    stderr: StreamBuffer,
    /// Generation of the current reader (the Start stream is generation
    /// [`START_GENERATION`], each Attach the next); older ones end.
    attach_gen: u64,
    /// Per stream: the pipe's read end once handed off, and the offset from
    /// which the client reads it itself. Kept until Forget, for re-Attaches.
    handoffs: [Option<(u64, OwnedFd)>; 2],
    /// Set once the leader exited: a Cancel after that has nothing to stop.
    leader_exited: bool,
    exit: Option<Exit>,
}

impl State {
    fn stream(&mut self, which: Which) -> &mut StreamBuffer {
        match which {
            Which::Stdout => &mut self.stdout,
            Which::Stderr => &mut self.stderr,
        }
    }
}

pub struct Execution {
    pub id: String,
    pub pid: i32,
    pub started_at: SystemTime,
    pub started: Instant,
    /// Grace for timeout and shutdown; a Cancel brings its own.
    pub grace: Duration,
    /// Whether the client takes over fast output pipes.
    pub handoff: bool,
    state: Mutex<State>,
    /// Woken on every change of `state` (output, room, exit, attach).
    changed: Notify,
    cancel: watch::Sender<Option<CancelOrder>>,
}

impl Execution {
    pub fn new(
        id: String,
        pid: i32,
        started_at: SystemTime,
        started: Instant,
        grace: Duration,
        buffer: usize,
        handoff: bool,
    ) -> Self {
        Self {
            id,
            pid,
            started_at,
            started,
            grace,
            handoff,
            state: Mutex::new(State {
                stdout: StreamBuffer::new(buffer),
                stderr: StreamBuffer::new(buffer),
                handoffs: [None, None],
                attach_gen: START_GENERATION,
                leader_exited: false,
                exit: None,
            }),
            changed: Notify::new(),
            cancel: watch::Sender::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notified on every state change. Create the `Notified` future (and
    /// `enable` it) before checking state, so no wake-up is missed.
    pub fn changed(&self) -> &Notify {
        &self.changed
    }

    fn wake(&self) {
        self.changed.notify_waiters();
    }

    pub fn cancel_orders(&self) -> watch::Receiver<Option<CancelOrder>> {
        self.cancel.subscribe()
    }

    /// Asks the supervisor to stop the process group. A second order can only
    /// shorten the grace; the first order's reason stays.
    pub fn request_cancel(&self, grace: Duration, why: StopReason) {
        if self.lock().leader_exited {
            return;
        }
        let kill_at = Instant::now() + grace;
        self.cancel.send_if_modified(|cur| match cur {
            None => {
                *cur = Some(CancelOrder {
                    kill_at,
                    grace,
                    why,
                });
                true
            }
            Some(o) if kill_at < o.kill_at => {
                o.kill_at = kill_at;
                true
            }
            Some(_) => false,
        });
    }

    pub fn mark_leader_exited(&self) {
        self.lock().leader_exited = true;
    }

    pub fn is_running(&self) -> bool {
        self.lock().exit.is_none()
    }

    pub fn status(&self) -> ExecutionStatus {
        let s = self.lock();
        ExecutionStatus {
            execution_id: self.id.clone(),
            state: if s.exit.is_some() {
                ExecutionState::Exited
            } else {
                ExecutionState::Running
            } as i32,
            pid: self.pid,
            started_at: Some(to_timestamp(self.started_at)),
            exit: s.exit.clone(),
            stdout_length: s.stdout.end(),
            stderr_length: s.stderr.end(),
        }
    }

    /// Starts a new Attach at the given offsets, replacing the previous one.
    /// Returns the new Attach's generation.
    pub fn attach(&self, stdout_offset: u64, stderr_offset: u64) -> Result<u64, RuntimeError> {
        let mut s = self.lock();
        // Past a handoff the client has read the pipe itself: nothing of
        // that stream is left to replay.
        let clamp = |s: &State, which: Which, offset: u64| match &s.handoffs[which.index()] {
            Some((at, _)) => offset.min(*at),
            None => offset,
        };
        let stdout_offset = clamp(&s, Which::Stdout, stdout_offset);
        let stderr_offset = clamp(&s, Which::Stderr, stderr_offset);
        // Check both before moving either cursor.
        let check = |field: &'static str, b: &StreamBuffer, offset: u64| {
            b.check_offset(offset)
                .map_err(|e| RuntimeError::OffsetOutOfRange {
                    field,
                    offset,
                    reason: match e {
                        SeekError::Evicted { oldest } => {
                            format!("older than the oldest offset still buffered, {oldest}")
                        }
                        SeekError::Beyond { end } => {
                            format!("beyond the {end} bytes produced so far")
                        }
                    },
                })
        };
        check("stdout_offset", &s.stdout, stdout_offset)?;
        check("stderr_offset", &s.stderr, stderr_offset)?;
        s.stdout
            .seek(stdout_offset)
            .map_err(|_| offset_race("stdout_offset", stdout_offset))?;
        s.stderr
            .seek(stderr_offset)
            .map_err(|_| offset_race("stderr_offset", stderr_offset))?;
        s.attach_gen += 1;
        let generation = s.attach_gen;
        drop(s);
        self.wake();
        Ok(generation)
    }

    /// The next event for the Attach of generation `generation`: a chunk of
    /// everything available on one stream (alternating when both have data),
    /// a stream's handoff once its chunks before it went out, or the exit
    /// once all output was handed out.
    pub fn next_event(&self, generation: u64, reader: &mut ReaderState) -> Next {
        let mut s = self.lock();
        if s.attach_gen != generation {
            return Next::Superseded;
        }
        let order = if reader.prefer_stderr {
            [Which::Stderr, Which::Stdout]
        } else {
            [Which::Stdout, Which::Stderr]
        };
        for which in order {
            if let Some((offset, data)) = s.stream(which).next_chunk(MAX_CHUNK_BYTES) {
                reader.prefer_stderr = which == Which::Stdout;
                drop(s);
                // The cursor moved: the pump may read again.
                self.wake();
                return Next::Event(ExecutionEvent {
                    event: Some(execution_event::Event::Output(OutputChunk {
                        stream: which.proto() as i32,
                        offset,
                        data,
                    })),
                });
            }
        }
        for which in order {
            let i = which.index();
            let drained = s.stream(which).is_drained();
            if let Some((offset, _)) = &s.handoffs[i]
                && !reader.handoff_sent[i]
                && drained
            {
                reader.handoff_sent[i] = true;
                return Next::Event(ExecutionEvent {
                    event: Some(execution_event::Event::Handoff(Handoff {
                        stream: which.proto() as i32,
                        offset: *offset,
                    })),
                });
            }
        }
        let told = |w: Which| s.handoffs[w.index()].is_none() || reader.handoff_sent[w.index()];
        match &s.exit {
            Some(exit)
                if s.stdout.is_drained()
                    && s.stderr.is_drained()
                    && told(Which::Stdout)
                    && told(Which::Stderr) =>
            {
                Next::Exited(exit.clone())
            }
            _ => Next::Pending,
        }
    }

    /// Bytes of `which` produced so far.
    pub fn produced(&self, which: Which) -> u64 {
        self.lock().stream(which).end()
    }

    /// Bytes the pump of `which` may read now.
    pub fn room(&self, which: Which) -> usize {
        self.lock().stream(which).room()
    }

    pub fn push(&self, which: Which, data: bytes::Bytes) {
        self.lock().stream(which).push(data);
        self.wake();
    }

    /// The pump stops reading `which`: from the bytes produced so far on,
    /// the client reads `fd` itself.
    pub fn hand_off(&self, which: Which, fd: OwnedFd) {
        let mut s = self.lock();
        let at = s.stream(which).end();
        s.stream(which).set_eof();
        s.handoffs[which.index()] = Some((at, fd));
        drop(s);
        self.wake();
    }

    /// A duplicate of the handed-off read end of `which`, for the client.
    pub fn handoff_fd(&self, which: Which) -> Result<OwnedFd, String> {
        let s = self.lock();
        match &s.handoffs[which.index()] {
            Some((_, fd)) => kruntimes_proto::handoff::duplicate(fd.as_fd()),
            None => Err(format!(
                "{which:?} of execution {:?} was not handed off",
                self.id
            )),
        }
    }

    pub fn set_eof(&self, which: Which) {
        self.lock().stream(which).set_eof();
        self.wake();
    }

    /// Records the final exit (stream lengths filled in here).
    pub fn finish(&self, mut exit: Exit) {
        let mut s = self.lock();
        exit.stdout_length = s.stdout.end();
        exit.stderr_length = s.stderr.end();
        s.exit = Some(exit);
        drop(s);
        self.wake();
    }
}

fn offset_race(field: &'static str, offset: u64) -> RuntimeError {
    RuntimeError::OffsetOutOfRange {
        field,
        offset,
        reason: "no longer buffered".into(),
    }
}
