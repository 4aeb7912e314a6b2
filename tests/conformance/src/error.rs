//! How a conformance check fails: a setup problem, an unexpected gRPC error,
//! or a violation of the protocol contract (with what was expected and seen).
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The server could not be started or reached.
    #[error("setup: {0}")]
    Setup(String),

    /// A call failed that should have succeeded.
    #[error("{context}: unexpected gRPC error: {code:?}: {message}", code = status.code(), message = status.message())]
    Rpc { context: String, status: Status },

    /// The server broke the contract.
    #[error("{0}")]
    Violation(String),
}

impl Failure {
    pub fn rpc(context: impl Into<String>) -> impl FnOnce(Status) -> Failure {
        let context = context.into();
        move |status| Failure::Rpc { context, status }
    }
}

/// `ensure!(cond, "format", args…)`: fail the check with a Violation unless
/// `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::Failure::Violation(format!($($arg)+)));
        }
    };
}
