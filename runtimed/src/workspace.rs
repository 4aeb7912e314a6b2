//! Where a Run's files live in the workspace shared with the Runtime Server:
//! `<root>/<run-id>/` is its working directory (created by the server),
//! `<root>/.kruntimes/artifacts/<run-id>/` the artifacts directory and
//! `<root>/.kruntimes/outputs/<run-id>.env` the outputs file runtimed hands the
//! Run through env vars (one mkdir per Run: starting a Run is a hot path).
//! Run ids never start with '.', so they cannot collide.

use std::path::{Path, PathBuf};

/// Env var naming the file a Run writes `KEY=VALUE` outputs to.
pub const OUTPUTS_ENV: &str = "KRUNTIMES_OUTPUTS";
/// Env var naming the directory a Run leaves artifacts in.
pub const ARTIFACTS_ENV: &str = "KRUNTIMES_ARTIFACTS";
/// Env var with the Run's id.
pub const RUN_ID_ENV: &str = "KRUNTIMES_RUN_ID";

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
}

impl Workspace {
    pub fn new(root: PathBuf) -> Workspace {
        Workspace { root }
    }

    fn outputs(root: &Path, id: &str) -> PathBuf {
        root.join(".kruntimes")
            .join("outputs")
            .join(format!("{id}.env"))
    }

    fn artifacts(root: &Path, id: &str) -> PathBuf {
        root.join(".kruntimes").join("artifacts").join(id)
    }

    pub fn outputs_file(&self, id: &str) -> PathBuf {
        Self::outputs(&self.root, id)
    }

    pub fn artifacts_dir(&self, id: &str) -> PathBuf {
        Self::artifacts(&self.root, id)
    }

    /// Scratch space for packing artifacts, outside what the Run can see.
    pub fn scratch_dir(&self, id: &str) -> PathBuf {
        self.root.join(".kruntimes").join("scratch").join(id)
    }

    /// Creates the Run's artifacts directory and returns the env vars that
    /// name its files, as the Runtime Server (whose workspace root may be
    /// mounted elsewhere) sees them.
    pub fn prepare(&self, id: &str, server_root: &str) -> std::io::Result<Vec<(String, String)>> {
        let dir = self.artifacts_dir(id);
        match std::fs::create_dir(&dir) {
            // First Run, or someone removed the parents: create them once.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)?;
                if let Some(parent) = self.outputs_file(id).parent() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            r => r?,
        }
        let theirs = if server_root.is_empty() {
            self.root.clone()
        } else {
            PathBuf::from(server_root)
        };
        Ok(vec![
            (RUN_ID_ENV.to_string(), id.to_string()),
            (
                OUTPUTS_ENV.to_string(),
                Self::outputs(&theirs, id).to_string_lossy().into_owned(),
            ),
            (
                ARTIFACTS_ENV.to_string(),
                Self::artifacts(&theirs, id).to_string_lossy().into_owned(),
            ),
        ])
    }

    /// Removes what the finished Run left in the workspace: its working
    /// directory and its outputs/artifacts directory (artifacts are in the
    /// store by now). Errors are logged: cleanup must not fail a Run.
    pub fn cleanup(&self, id: &str) {
        if let Err(e) = std::fs::remove_file(self.outputs_file(id))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(run = %id, error = %e, "cannot remove the run's outputs file");
        }
        for dir in [
            self.root.join(id),
            self.artifacts_dir(id),
            self.scratch_dir(id),
        ] {
            // Most are empty: one rmdir, the tree walk only when needed.
            let r = match std::fs::remove_dir(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                    std::fs::remove_dir_all(&dir)
                }
                r => r,
            };
            if let Err(e) = r
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(run = %id, dir = %dir.display(), error = %e, "cannot clean up the run's workspace");
            }
        }
    }
}
