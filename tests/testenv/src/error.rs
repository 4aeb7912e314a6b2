//! Typed errors of the test environment: control plane, kubelet and helpers.

use std::path::PathBuf;

/// Everything that can go wrong while starting or driving the test environment.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required binary is not installed; names the script that builds it.
    #[error(
        "control-plane binary {name:?} not found at {path}; build the binaries with \
         `tests/controlplane/build.sh` (or set KRUNTIMES_K8S_BIN to their directory)"
    )]
    MissingBinary { name: &'static str, path: PathBuf },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::Error,
    },

    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),

    #[error("kubernetes API: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: Box<kube::Error>,
    },

    #[error("kubeconfig: {0}")]
    Kubeconfig(String),

    #[error("{what} exited before becoming ready ({status}); last log lines of {log}:\n{tail}")]
    ProcessExited {
        what: String,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("timed out after {seconds}s waiting for {what}")]
    Timeout { what: String, seconds: u64 },

    /// Bad configuration or input; the message names the field, the value and the limit.
    #[error("invalid {field} {value:?}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn sys(context: impl Into<String>, source: nix::Error) -> Self {
        Error::Sys {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// An [`Error::Invalid`] naming the field, the value and the limit/rule.
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            field: field.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
