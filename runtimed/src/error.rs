//! runtimed's error type and its one mapping to gRPC status codes.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; the message names the field, value and limit.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("run {0:?} not found")]
    RunNotFound(String),
    #[error("unknown runtime {name:?}; this runtimed serves: {known}")]
    UnknownRuntime { name: String, known: String },
    #[error("run {id:?} already exists (phase {phase})")]
    RunExists { id: String, phase: String },
    #[error(
        "runtimed is already running {limit} Runs, its configured maximum (--max-runs {limit}); retry later"
    )]
    TooManyRuns { limit: usize },
    #[error("runtime {runtime:?} is not ready: {reason}")]
    RuntimeNotReady { runtime: String, reason: String },
    /// The Runtime Server answered with an error; its code is kept.
    #[error("runtime server {runtime:?}: {status}", status = .status.message())]
    RuntimeServer { runtime: String, status: Status },
    #[error("timed out after {0} ms waiting for the run to finish")]
    WaitTimeout(u64),
    #[error("log offset {offset} is past the end of run {id:?}'s log ({length} bytes)")]
    OffsetOutOfRange {
        id: String,
        offset: u64,
        length: u64,
    },
    #[error("the log of run {0:?} was evicted to keep the spool within its budget")]
    LogEvicted(String),
    #[error("run {id:?} is still {phase}; only finished runs can be forgotten")]
    RunNotFinished { id: String, phase: String },
    #[error("run {run:?} has no artifact {name:?}; it has: [{known}]")]
    ArtifactNotFound {
        run: String,
        name: String,
        known: String,
    },
    #[error("artifact store: {0}")]
    ArtifactStore(#[from] kruntimes_artifacts::StoreError),
    #[error("spool: {0}")]
    Spool(#[from] std::io::Error),
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::RunNotFound(_)
            | Error::UnknownRuntime { .. }
            | Error::ArtifactNotFound { .. } => Code::NotFound,
            Error::ArtifactStore(_) => Code::Unavailable,
            Error::RunExists { .. } => Code::AlreadyExists,
            Error::TooManyRuns { .. } => Code::ResourceExhausted,
            Error::RuntimeNotReady { .. } => Code::Unavailable,
            Error::RuntimeServer { status, .. } => status.code(),
            Error::WaitTimeout(_) => Code::DeadlineExceeded,
            Error::OffsetOutOfRange { .. } => Code::OutOfRange,
            Error::LogEvicted(_) | Error::RunNotFinished { .. } => Code::FailedPrecondition,
            Error::Spool(_) => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
