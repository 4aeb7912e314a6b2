//! Run artifacts: what a Run leaves in its artifacts directory is validated,
//! packed deterministically (files as they are, directories as tar), hashed
//! and bounded while being copied, then uploaded to an [`ArtifactStore`]
//! (a filesystem root or an S3-compatible bucket) under
//! `[prefix/]namespaces/<namespace>/runs/<run-uid>/<name>`.
//!
//! runtimed calls [`collect`] after a Run and serves downloads with
//! [`ArtifactStore::get`]; the runtime maintainer calls
//! [`ArtifactStore::delete_run`] using the store config snapshot
//! ([`StoreConfig`]'s `Display` form) recorded in the Run.

mod artifact;
mod collect;
mod config;
mod content_type;
mod error;
mod fs_store;
mod key;
mod limits;
mod name;
mod pack;
mod retry;
mod s3_store;
mod sink;
mod store;
mod tree;

pub use artifact::{ArtifactKind, ArtifactRef};
pub use collect::{CollectOptions, collect};
pub use config::{Credentials, S3Credentials, StoreConfig};
pub use content_type::content_type_for;
pub use error::{CollectError, ConfigError, StoreError};
pub use fs_store::FilesystemStore;
pub use key::RunKey;
pub use limits::{Limits, MAX_NAME_BYTES, MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_PATH_BYTES};
pub use name::validate_name;
pub use retry::RetryPolicy;
pub use s3_store::S3Store;
pub use store::{ArtifactStore, ByteStream};
