//! Bounds on what a Run may leave behind as artifacts.

/// Longest artifact name (bytes), as most filesystems allow for one component.
pub const MAX_NAME_BYTES: usize = 255;
/// Deepest nesting of directories inside a directory artifact.
pub const MAX_TREE_DEPTH: usize = 64;
/// Most entries (files and directories) inside one directory artifact.
pub const MAX_TREE_ENTRIES: usize = 100_000;
/// Longest path of an entry inside a directory artifact (bytes).
pub const MAX_TREE_PATH_BYTES: usize = 4096;

/// Per-Run bounds, enforced while copying (never after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most top-level entries in the artifacts directory.
    pub max_count: usize,
    /// Most bytes of one stored artifact (for gzip directories, also of the
    /// uncompressed tar stream).
    pub max_artifact_bytes: u64,
    /// Most bytes of all stored artifacts of one Run together.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_count: 64,
            max_artifact_bytes: 1 << 30,
            max_total_bytes: 4 << 30,
        }
    }
}
