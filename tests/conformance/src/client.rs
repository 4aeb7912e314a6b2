//! The client side used by the checks: connecting over a Unix socket or TCP,
//! building requests, and reading an Attach stream while checking the
//! invariants every stream must keep (contiguous per-stream offsets, valid
//! stream tags, nothing after Exited, final lengths matching what was sent),
//! and taking over handed-off output pipes when a reader allows it.
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use kruntimes_proto::events::Events;
use kruntimes_proto::runtime::v1::runtime_server_client::RuntimeServerClient;
use kruntimes_proto::runtime::v1::{
    AttachRequest, Command, ExecutionEvent, Exit, Handoff, OutputChunk, StartRequest, Started,
    Stream, execution_event, exit, start_request,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use crate::Failure;
use crate::ensure;

pub type Client = RuntimeServerClient<Channel>;

/// How long one step (one message, one RPC) may take before the check fails
/// as hung. Generous: the machine may be loaded; this is not a speed test.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest message the suite accepts from a server.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    Unix(PathBuf),
    Tcp(String),
}

impl FromStr for Addr {
    type Err = Failure;

    fn from_str(s: &str) -> Result<Self, Failure> {
        match s.strip_prefix("unix:") {
            Some("") => Err(Failure::Setup(format!("address {s:?}: empty socket path"))),
            Some(p) => Ok(Addr::Unix(PathBuf::from(p))),
            None if s.contains(':') => Ok(Addr::Tcp(s.to_string())),
            None => Err(Failure::Setup(format!(
                "address {s:?} is neither unix:/path nor host:port"
            ))),
        }
    }
}

pub async fn connect(addr: &Addr) -> Result<Client, Failure> {
    let channel = match addr {
        Addr::Unix(path) => {
            let path = path.clone();
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
                .await
        }
        Addr::Tcp(hostport) => {
            Endpoint::from_shared(format!("http://{hostport}"))
                .map_err(|e| Failure::Setup(format!("address {hostport:?}: {e}")))?
                .connect()
                .await
        }
    }
    .map_err(|e| Failure::Setup(format!("connecting to {addr:?}: {e}")))?;
    Ok(RuntimeServerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A fresh execution id, unique across runs against a long-lived server.
pub fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// A Command StartRequest.
pub fn command(id: &str, argv: &[&str]) -> StartRequest {
    StartRequest {
        execution_id: id.to_string(),
        program: Some(start_request::Program::Command(Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
        })),
        ..Default::default()
    }
}

/// `["sh", "-c", script]` as a Command StartRequest.
pub fn sh(id: &str, script: &str) -> StartRequest {
    command(id, &["sh", "-c", script])
}

/// Calls Start and reads its first event, which must be `started`. Errors
/// are returned as the server sent them, whether it failed the call or the
/// stream's first message (both are allowed for a server-streaming RPC).
pub async fn start_raw(
    client: &mut Client,
    req: StartRequest,
) -> Result<(Started, Events), Status> {
    let id = req.execution_id.clone();
    let late = || Status::deadline_exceeded(format!("Start {id}: no answer in {STEP_TIMEOUT:?}"));
    let mut stream = Events::new(
        tokio::time::timeout(STEP_TIMEOUT, client.start(req))
            .await
            .map_err(|_| late())??
            .into_inner(),
    );
    match tokio::time::timeout(STEP_TIMEOUT, stream.message())
        .await
        .map_err(|_| late())??
    {
        Some(ExecutionEvent {
            event: Some(execution_event::Event::Started(s)),
        }) => Ok((s, stream)),
        Some(other) => Err(Status::internal(format!(
            "Start {id}: the first event must be `started`, got {other:?}"
        ))),
        None => Err(Status::internal(format!(
            "Start {id}: the stream ended without any event"
        ))),
    }
}

/// A started execution: its pid, and its Start stream read with the same
/// invariants as an Attach from 0/0. Dropping `events` leaves it running.
pub struct StartedExecution {
    pub pid: i32,
    pub events: AttachReader,
}

pub async fn start(client: &mut Client, req: StartRequest) -> Result<StartedExecution, Failure> {
    let id = req.execution_id.clone();
    let (started, stream) = start_raw(client, req)
        .await
        .map_err(Failure::rpc(format!("Start {id}")))?;
    ensure!(
        started.pid > 0,
        "Start {id}: pid {} is not a process id",
        started.pid
    );
    ensure!(
        started.started_at.is_some(),
        "Start {id}: `started` has no started_at"
    );
    Ok(StartedExecution {
        pid: started.pid,
        events: AttachReader::from_stream(&id, stream, 0, 0),
    })
}

/// The status of an Exit, or a Violation if neither code nor signal is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

pub fn ended(exit: &Exit) -> Result<Ended, Failure> {
    match exit.status {
        Some(exit::Status::Code(c)) => Ok(Ended::Code(c)),
        Some(exit::Status::Signal(s)) => Ok(Ended::Signal(s)),
        None => Err(Failure::Violation(format!(
            "Exit has neither code nor signal: {exit:?}"
        ))),
    }
}

/// Everything an Attach delivered.
#[derive(Debug, Clone)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Exit,
    /// OutputChunk messages received.
    pub messages: usize,
}

impl Collected {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// The task reading a taken pipe to EOF.
type PipeReader = tokio::task::JoinHandle<std::io::Result<Vec<u8>>>;

/// Reads one Attach stream, checking the invariants as it goes.
pub struct AttachReader {
    pub id: String,
    stream: Events,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Offsets the next chunk of each stream must start at.
    next_out: u64,
    next_err: u64,
    pub messages: usize,
    pub exit: Option<Exit>,
    /// The handoff socket, when this reader takes over output pipes (a
    /// Start with `output_handoff`); a Handoff event is a violation otherwise.
    handoff_socket: Option<PathBuf>,
    /// Per stream (stdout, stderr): the Handoff's offset and the task
    /// reading the taken pipe to EOF.
    taken: [Option<(u64, PipeReader)>; 2],
    /// Handoff events received (one per stream).
    pub handoffs: usize,
}

impl AttachReader {
    pub async fn open(
        client: &mut Client,
        id: &str,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<Self, Failure> {
        let stream = attach_raw(client, id, stdout_offset, stderr_offset)
            .await
            .map_err(Failure::rpc(format!(
                "Attach {id} at ({stdout_offset}, {stderr_offset})"
            )))?;
        Ok(Self::from_stream(id, stream, stdout_offset, stderr_offset))
    }

    /// Reads an already open event stream (Attach, or Start after `started`).
    pub fn from_stream(id: &str, stream: Events, stdout_offset: u64, stderr_offset: u64) -> Self {
        Self {
            id: id.to_string(),
            stream,
            stdout: Vec::new(),
            stderr: Vec::new(),
            next_out: stdout_offset,
            next_err: stderr_offset,
            messages: 0,
            exit: None,
            handoff_socket: None,
            taken: [None, None],
            handoffs: 0,
        }
    }

    /// Takes over handed-off pipes from the server's handoff socket.
    pub fn with_handoff(mut self, socket: PathBuf) -> Self {
        self.handoff_socket = Some(socket);
        self
    }

    /// A Handoff: checks it follows every chunk before it, takes the pipe
    /// and reads it to EOF in the background.
    async fn take_over(&mut self, h: Handoff) -> Result<(), Failure> {
        let id = self.id.clone();
        let Some(socket) = self.handoff_socket.clone() else {
            return Err(Failure::Violation(format!(
                "{id}: Handoff event without output_handoff in the Start: {h:?}"
            )));
        };
        let (i, next, name, stream) = match Stream::try_from(h.stream) {
            Ok(Stream::Stdout) => (0, self.next_out, "stdout", Stream::Stdout),
            Ok(Stream::Stderr) => (1, self.next_err, "stderr", Stream::Stderr),
            _ => {
                return Err(Failure::Violation(format!(
                    "{id}: Handoff with invalid stream tag {}",
                    h.stream
                )));
            }
        };
        ensure!(
            self.taken[i].is_none(),
            "{id}: a second Handoff of {name} on one stream"
        );
        ensure!(
            h.offset <= next,
            "{id}: {name} Handoff at offset {} but only {next} bytes were delivered before it",
            h.offset
        );
        let fd = kruntimes_proto::handoff::take(&socket, &id, stream)
            .await
            .map_err(|e| Failure::Violation(format!("{id}: {e}")))?;
        let reader = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = std::fs::File::from(fd);
            let mut out = Vec::new();
            loop {
                match file.read_to_end(&mut out) {
                    Ok(_) => return Ok(out),
                    // The server's descriptor is non-blocking.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(e),
                }
            }
        });
        self.handoffs += 1;
        self.taken[i] = Some((h.offset, reader));
        Ok(())
    }

    /// Appends what the taken pipes held to what the chunks delivered.
    async fn join_taken(&mut self) -> Result<(), Failure> {
        for i in 0..2 {
            let Some((_, reader)) = self.taken[i].take() else {
                continue;
            };
            let data = tokio::time::timeout(STEP_TIMEOUT, reader)
                .await
                .map_err(|_| {
                    Failure::Violation(format!(
                        "{}: a handed-off pipe did not reach EOF within {STEP_TIMEOUT:?}",
                        self.id
                    ))
                })?
                .map_err(|e| Failure::Setup(format!("pipe reader task: {e}")))?
                .map_err(|e| {
                    Failure::Violation(format!("{}: reading a handed-off pipe: {e}", self.id))
                })?;
            let (buf, next) = if i == 0 {
                (&mut self.stdout, &mut self.next_out)
            } else {
                (&mut self.stderr, &mut self.next_err)
            };
            *next += data.len() as u64;
            buf.extend_from_slice(&data);
        }
        Ok(())
    }

    /// The next event, bounded by [`STEP_TIMEOUT`]; a stream that ends is a
    /// violation (every stream must end with Exited).
    async fn receive(&mut self) -> Result<Option<execution_event::Event>, Failure> {
        let id = &self.id;
        let msg = tokio::time::timeout(STEP_TIMEOUT, self.stream.message())
            .await
            .map_err(|_| Failure::Violation(format!("{id}: no Attach event in {STEP_TIMEOUT:?}")))?
            .map_err(Failure::rpc(format!("Attach {id} stream")))?;
        match msg {
            Some(ev) => Ok(ev.event),
            None => Err(Failure::Violation(format!(
                "{id}: Attach stream ended without an Exited event"
            ))),
        }
    }

    /// Appends one chunk, checking its tag and that it continues its stream.
    fn take_chunk(&mut self, chunk: OutputChunk) -> Result<(), Failure> {
        let id = &self.id;
        self.messages += 1;
        let (buf, next, name) = match Stream::try_from(chunk.stream) {
            Ok(Stream::Stdout) => (&mut self.stdout, &mut self.next_out, "stdout"),
            Ok(Stream::Stderr) => (&mut self.stderr, &mut self.next_err, "stderr"),
            _ => {
                return Err(Failure::Violation(format!(
                    "{id}: OutputChunk with invalid stream tag {}",
                    chunk.stream
                )));
            }
        };
        ensure!(
            chunk.offset == *next,
            "{id}: {name} chunk at offset {} but {} bytes were delivered before it (gap, overlap or reordering)",
            chunk.offset,
            *next
        );
        ensure!(
            !chunk.data.is_empty(),
            "{id}: empty {name} OutputChunk at offset {}",
            chunk.offset
        );
        *next += chunk.data.len() as u64;
        buf.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// Receives one event; false when the exit was received (stream checked
    /// to end right after it).
    pub async fn step(&mut self) -> Result<bool, Failure> {
        let id = self.id.clone();
        ensure!(self.exit.is_none(), "{id}: reading past Exited");
        match self.receive().await? {
            Some(execution_event::Event::Output(chunk)) => {
                self.take_chunk(chunk)?;
                Ok(true)
            }
            Some(execution_event::Event::Handoff(h)) => {
                self.take_over(h).await?;
                Ok(true)
            }
            Some(execution_event::Event::Exited(exit)) => {
                ended(&exit)?;
                // A handed-off stream's length is where the handoff was.
                let length = |taken: &Option<(u64, _)>, next: u64| {
                    taken.as_ref().map_or(next, |(at, _)| *at)
                };
                let (out_len, err_len) = (
                    length(&self.taken[0], self.next_out),
                    length(&self.taken[1], self.next_err),
                );
                self.join_taken().await?;
                ensure!(
                    exit.stdout_length == out_len && exit.stderr_length == err_len,
                    "{id}: Exited says stdout/stderr lengths {}/{} but {}/{} bytes were delivered before it",
                    exit.stdout_length,
                    exit.stderr_length,
                    out_len,
                    err_len
                );
                let after = tokio::time::timeout(STEP_TIMEOUT, self.stream.message())
                    .await
                    .map_err(|_| {
                        Failure::Violation(format!("{id}: Attach stream stays open after Exited"))
                    })?;
                ensure!(
                    matches!(after, Ok(None)),
                    "{id}: Attach stream must end right after Exited, got {after:?}"
                );
                self.exit = Some(exit);
                Ok(false)
            }
            Some(execution_event::Event::Started(_)) => Err(Failure::Violation(format!(
                "{id}: `started` is only allowed as the first event of a Start stream"
            ))),
            // `Events` unpacks batches and rejects nested ones.
            Some(execution_event::Event::Batch(_)) => Err(Failure::Violation(format!(
                "{id}: an EventBatch was not unpacked"
            ))),
            None => Err(Failure::Violation(format!(
                "{id}: ExecutionEvent without event"
            ))),
        }
    }

    /// Reads chunks until a stdout Handoff, without taking the pipe;
    /// returns the Handoff's offset.
    pub async fn next_handoff(&mut self) -> Result<u64, Failure> {
        loop {
            match self.receive().await? {
                Some(execution_event::Event::Handoff(h)) if h.stream == Stream::Stdout as i32 => {
                    ensure!(
                        h.offset == self.next_out,
                        "{}: stdout Handoff at {} after {} bytes of chunks",
                        self.id,
                        h.offset,
                        self.next_out
                    );
                    return Ok(h.offset);
                }
                Some(execution_event::Event::Output(chunk)) => self.take_chunk(chunk)?,
                other => {
                    return Err(Failure::Violation(format!(
                        "{}: expected chunks then a stdout Handoff, got {other:?}",
                        self.id
                    )));
                }
            }
        }
    }

    /// Reads until `pred(stdout so far)` holds.
    pub async fn read_stdout_until(&mut self, pred: impl Fn(&[u8]) -> bool) -> Result<(), Failure> {
        while !pred(&self.stdout) {
            if !self.step().await? {
                return Err(Failure::Violation(format!(
                    "{}: exited before the expected output; stdout was {:?}",
                    self.id,
                    String::from_utf8_lossy(&self.stdout)
                )));
            }
        }
        Ok(())
    }

    /// Reads to the end.
    pub async fn finish(mut self) -> Result<Collected, Failure> {
        while self.step().await? {}
        let exit = self
            .exit
            .ok_or_else(|| Failure::Violation(format!("{}: no exit", self.id)))?;
        Ok(Collected {
            stdout: self.stdout,
            stderr: self.stderr,
            exit,
            messages: self.messages,
        })
    }
}

pub async fn attach_raw(
    client: &mut Client,
    id: &str,
    stdout_offset: u64,
    stderr_offset: u64,
) -> Result<Events, Status> {
    let req = AttachRequest {
        execution_id: id.to_string(),
        stdout_offset,
        stderr_offset,
    };
    match tokio::time::timeout(STEP_TIMEOUT, client.attach(req)).await {
        Ok(r) => r.map(|r| Events::new(r.into_inner())),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "Attach {id}: no answer in {STEP_TIMEOUT:?}"
        ))),
    }
}

/// Attaches from offset 0 and reads everything.
pub async fn collect(client: &mut Client, id: &str) -> Result<Collected, Failure> {
    AttachReader::open(client, id, 0, 0).await?.finish().await
}

/// Starts and reads everything from the Start stream.
pub async fn run(client: &mut Client, req: StartRequest) -> Result<Collected, Failure> {
    start(client, req).await?.events.finish().await
}

/// Checks that `r` failed with `code` and that the message mentions every
/// one of `needles` (case-insensitive), e.g. the field name.
pub fn expect_error<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, Status>,
    code: Code,
    needles: &[&str],
) -> Result<Status, Failure> {
    let status = match r {
        Ok(v) => {
            return Err(Failure::Violation(format!(
                "{what}: expected {code:?}, but the call succeeded: {v:?}"
            )));
        }
        Err(s) => s,
    };
    ensure!(
        status.code() == code,
        "{what}: expected {code:?}, got {:?}: {}",
        status.code(),
        status.message()
    );
    let msg = status.message().to_lowercase();
    for n in needles {
        ensure!(
            msg.contains(&n.to_lowercase()),
            "{what}: the {code:?} message must name {n:?}, got {:?}",
            status.message()
        );
    }
    Ok(status)
}
