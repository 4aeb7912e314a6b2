//! Where a Run's files live in the workspace shared with the Runtime Server:
//! `<root>/<run-id>/` is its working directory (created by the server), and
//! `<root>/.kruntimes/runs/<run-id>/` holds the outputs file and the
//! artifacts directory runtimed hands the Run through env vars. Run ids never
//! start with '.', so the two cannot collide.

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

    fn meta(root: &Path, id: &str) -> PathBuf {
        root.join(".kruntimes").join("runs").join(id)
    }

    pub fn outputs_file(&self, id: &str) -> PathBuf {
        Self::meta(&self.root, id).join("outputs.env")
    }

    pub fn artifacts_dir(&self, id: &str) -> PathBuf {
        Self::meta(&self.root, id).join("artifacts")
    }

    /// Scratch space for packing artifacts, outside what the Run can see.
    pub fn scratch_dir(&self, id: &str) -> PathBuf {
        self.root.join(".kruntimes").join("scratch").join(id)
    }

    /// Creates the Run's artifacts directory and returns the env vars that
    /// name its files, as the Runtime Server (whose workspace root may be
    /// mounted elsewhere) sees them.
    pub fn prepare(&self, id: &str, server_root: &str) -> std::io::Result<Vec<(String, String)>> {
        std::fs::create_dir_all(self.artifacts_dir(id))?;
        let theirs = if server_root.is_empty() {
            self.root.clone()
        } else {
            PathBuf::from(server_root)
        };
        let meta = Self::meta(&theirs, id);
        Ok(vec![
            (RUN_ID_ENV.to_string(), id.to_string()),
            (
                OUTPUTS_ENV.to_string(),
                meta.join("outputs.env").to_string_lossy().into_owned(),
            ),
            (
                ARTIFACTS_ENV.to_string(),
                meta.join("artifacts").to_string_lossy().into_owned(),
            ),
        ])
    }

    /// Removes what the finished Run left in the workspace: its working
    /// directory and its outputs/artifacts directory (artifacts are in the
    /// store by now). Errors are logged: cleanup must not fail a Run.
    pub fn cleanup(&self, id: &str) {
        for dir in [
            self.root.join(id),
            Self::meta(&self.root, id),
            self.scratch_dir(id),
        ] {
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(run = %id, dir = %dir.display(), error = %e, "cannot clean up the run's workspace");
            }
        }
    }
}
