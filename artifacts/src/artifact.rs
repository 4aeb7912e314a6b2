//! What a collected artifact is: its kind and the ref recorded in the Run.

use std::fmt;

/// How a top-level entry of the artifacts directory was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    /// A regular file, stored byte for byte.
    File,
    /// A directory, stored as a deterministic tar (optionally gzip).
    Directory,
}

impl ArtifactKind {
    /// The wire form used in the runtimed API (`"file"` / `"directory"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Directory => "directory",
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored artifact, as recorded in the Run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRef {
    /// The stored name: the entry's name, plus `.tar` / `.tar.gz` for directories.
    pub name: String,
    pub kind: ArtifactKind,
    pub content_type: String,
    /// Stored bytes.
    pub size: u64,
    /// `sha256:<hex>` of the stored bytes.
    pub digest: String,
    /// The store's driver: `"filesystem"` or `"s3"`.
    pub driver: String,
    /// Where the store keeps it: a path or `s3://bucket/key`.
    pub location: String,
}
