//! Typed errors of the bench: what failed while setting up or driving a figure.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is missing: build it first with `{hint}`")]
    MissingBinary { path: PathBuf, hint: &'static str },

    #[error("runtimed did not start: {reason}\n--- runtimed log (tail) ---\n{log}")]
    Startup { reason: String, log: String },

    #[error("gRPC {call} failed: {code:?}: {message}")]
    Grpc {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },

    #[error("{0}")]
    Unexpected(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }

    pub fn grpc(call: &'static str, status: tonic::Status) -> BenchError {
        BenchError::Grpc {
            call,
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;
