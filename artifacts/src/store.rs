//! The artifact store interface shared by the filesystem and S3 stores.

use crate::error::StoreError;
use crate::key::RunKey;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::path::Path;

/// An artifact's bytes, in order, from the requested offset.
pub type ByteStream = BoxStream<'static, Result<Bytes, StoreError>>;

/// Where a Run's artifacts are kept: `[prefix/]namespaces/<ns>/runs/<uid>/<name>`.
/// Every method validates the key and name before touching storage.
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync + std::fmt::Debug {
    /// `"filesystem"` or `"s3"`.
    fn driver(&self) -> &'static str;

    /// Stores the file at `path` as `name` (replacing an earlier one whole,
    /// never leaving a partial object visible); returns its location.
    async fn put_file(
        &self,
        key: &RunKey,
        name: &str,
        path: &Path,
        size_hint: u64,
    ) -> Result<String, StoreError>;

    /// The stored bytes from `offset` (equal to the size: an empty stream;
    /// beyond it: [`StoreError::InvalidOffset`]).
    async fn get(&self, key: &RunKey, name: &str, offset: u64) -> Result<ByteStream, StoreError>;

    /// Names and sizes of the Run's stored artifacts, sorted by name.
    async fn list(&self, key: &RunKey) -> Result<Vec<(String, u64)>, StoreError>;

    /// Deletes everything stored for the Run; returns how many objects went.
    /// Idempotent: a Run with nothing stored gives 0.
    async fn delete_run(&self, key: &RunKey) -> Result<usize, StoreError>;
}
