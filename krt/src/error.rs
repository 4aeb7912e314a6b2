//! krt's errors: what went wrong talking to runtimed, said plainly.

/// Exit code when krt itself fails (cannot connect, bad flags, ...), as
/// distinct from a Run's own exit code.
pub const KRT_ERROR_EXIT: u8 = 125;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach runtimed at {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{}", describe(.0))]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Local(String),
}

fn describe(s: &tonic::Status) -> String {
    format!("{} ({:?})", s.message(), s.code())
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
