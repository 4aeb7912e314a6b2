//! Typed errors: collecting (validation, bounds, packing, upload), the stores,
//! and parsing a store configuration. Each names the path or field, the value
//! and the rule or limit it broke.

use std::io;
use std::path::PathBuf;

/// Why collecting a Run's artifacts failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("artifacts directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: invalid artifact name {name:?}: {rule}")]
    InvalidName {
        path: PathBuf,
        name: String,
        rule: String,
    },
    #[error(
        "{path}: is a {kind}; artifacts may only contain regular files and directories \
         (symlinks, devices, sockets and FIFOs are rejected)"
    )]
    Forbidden { path: PathBuf, kind: &'static str },
    #[error("{path}: more than {limit} artifacts; the limit is {limit} top-level entries")]
    TooMany { path: PathBuf, limit: usize },
    #[error(
        "{path}: {what} is more than {limit} bytes (read {seen} bytes so far); the limit is {limit} bytes"
    )]
    TooLarge {
        path: PathBuf,
        what: String,
        seen: u64,
        limit: u64,
    },
    #[error("{path}: directory nesting deeper than {limit} levels; the limit is {limit}")]
    TooDeep { path: PathBuf, limit: usize },
    #[error(
        "{path}: directory artifact {name:?} has more than {limit} entries; the limit is {limit}"
    )]
    TooManyEntries {
        path: PathBuf,
        name: String,
        limit: usize,
    },
    #[error("{path}: path inside the archive is {len} bytes; the limit is {limit} bytes")]
    PathTooLong {
        path: PathBuf,
        len: usize,
        limit: usize,
    },
    #[error("{path}: changed while being collected: {detail}")]
    Changed { path: PathBuf, detail: String },
    #[error("artifacts {first:?} and {second:?} would both be stored as {name:?}")]
    Duplicate {
        first: String,
        second: String,
        name: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid Run key: {0}")]
    Key(String),
    #[error("uploading artifact {name:?} failed after {attempts} attempt(s): {source}")]
    Upload {
        name: String,
        attempts: u32,
        #[source]
        source: Box<StoreError>,
    },
    #[error("artifact collection task failed: {0}")]
    Task(String),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid artifact key: {0}")]
    InvalidKey(String),
    #[error("artifact {name:?} of Run {run} not found in {store}")]
    NotFound {
        store: String,
        run: String,
        name: String,
    },
    #[error("offset {offset} is beyond the end of artifact {name:?} ({size} bytes)")]
    InvalidOffset {
        name: String,
        offset: u64,
        size: u64,
    },
    #[error(
        "{store}: access denied ({detail}); check the credentials \
         (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN) and the bucket policy"
    )]
    Denied { store: String, detail: String },
    #[error("{store}: bucket {bucket:?} does not exist ({detail})")]
    BucketMissing {
        store: String,
        bucket: String,
        detail: String,
    },
    #[error("{store}: {path} is not a regular file ({detail})")]
    NotAFile {
        store: String,
        path: PathBuf,
        detail: String,
    },
    #[error("{store}: {path}: {source}")]
    Io {
        store: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{store}: {op} {key}: {detail}")]
    S3 {
        store: String,
        op: &'static str,
        key: String,
        /// HTTP status, when the server answered.
        status: Option<u16>,
        /// The server's error code and message, or the client's error, in brief.
        detail: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{store}: run {run} has more than {limit} stored objects; the limit is {limit}")]
    TooManyObjects {
        store: String,
        run: String,
        limit: usize,
    },
    #[error("{store}: store task failed: {detail}")]
    Task { store: String, detail: String },
}

impl StoreError {
    /// Whether trying again may succeed (network trouble, a busy server, a
    /// full disk freed meanwhile); configuration and permission problems and
    /// bad input are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Io { .. } | Self::Task { .. } => true,
            // No answer (connection trouble) or a server-side/throttling status.
            Self::S3 { status, .. } => status.is_none_or(|s| s >= 500 || s == 429 || s == 408),
            Self::InvalidKey(_)
            | Self::NotFound { .. }
            | Self::InvalidOffset { .. }
            | Self::Denied { .. }
            | Self::BucketMissing { .. }
            | Self::NotAFile { .. }
            | Self::TooManyObjects { .. } => false,
        }
    }
}

/// Why a store configuration string or its settings are not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("artifact store {input:?}: {field} {value:?}: {rule}")]
    Invalid {
        input: String,
        field: &'static str,
        value: String,
        rule: String,
    },
    #[error("artifact store {config}: {source}")]
    Build {
        config: String,
        #[source]
        source: object_store::Error,
    },
}
