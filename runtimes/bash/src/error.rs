//! The server's error type and its one mapping to gRPC status codes.
use tonic::{Code, Status};

use crate::validate::InvalidArgument;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    InvalidArgument(#[from] InvalidArgument),

    #[error("execution {0:?} already exists")]
    AlreadyExists(String),

    #[error("execution {0:?} not found")]
    NotFound(String),

    /// A server limit was reached; the message names it and its value.
    #[error("{0}")]
    ResourceExhausted(String),

    /// The program cannot be run (not found, not executable); names the path.
    #[error("{0}")]
    ProgramUnavailable(String),

    #[error("execution {0:?} is still running; only finished executions can be forgotten")]
    StillRunning(String),

    /// An Attach offset the server cannot serve.
    #[error("{field} {offset} is out of range: {reason}")]
    OffsetOutOfRange {
        field: &'static str,
        offset: u64,
        reason: String,
    },

    #[error("the server is shutting down and accepts no new executions")]
    ShuttingDown,

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Self {
        let code = match &e {
            RuntimeError::InvalidArgument(_) => Code::InvalidArgument,
            RuntimeError::AlreadyExists(_) => Code::AlreadyExists,
            RuntimeError::NotFound(_) => Code::NotFound,
            RuntimeError::ResourceExhausted(_) => Code::ResourceExhausted,
            RuntimeError::ProgramUnavailable(_) => Code::FailedPrecondition,
            RuntimeError::StillRunning(_) => Code::FailedPrecondition,
            RuntimeError::OffsetOutOfRange { .. } => Code::OutOfRange,
            RuntimeError::ShuttingDown => Code::Unavailable,
            RuntimeError::Io { .. } => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}
