//! Where a Run's files live in the workspace shared with the Runtime Server:
//! `<root>/<run-id>/` is its working directory (created by the server),
//! `<root>/.kruntimes/artifacts/<run-id>/` the artifacts directory and
//! `<root>/.kruntimes/outputs/<run-id>.env` the outputs file runtimed hands the
//! Run through env vars. Starting a Run is a hot path: artifacts directories
//! left empty are kept in `<root>/.kruntimes/spare/` and renamed into place
//! for the next Runs, instead of one mkdir and one rmdir per Run (an inode
//! allocated and freed each time, which some filesystems make slow under
//! churn: ext4 without a journal skips every inode freed in the last minute).
//! Run ids never start with '.', so they cannot collide.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Env var naming the file a Run writes `KEY=VALUE` outputs to.
pub const OUTPUTS_ENV: &str = "KRUNTIMES_OUTPUTS";
/// Env var naming the directory a Run leaves artifacts in.
pub const ARTIFACTS_ENV: &str = "KRUNTIMES_ARTIFACTS";
/// Env var with the Run's id.
pub const RUN_ID_ENV: &str = "KRUNTIMES_RUN_ID";

/// Most empty artifacts directories kept for reuse.
const MAX_SPARES: usize = 32;

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    spares: Arc<Mutex<Spares>>,
}

/// Empty directories ready to become a Run's artifacts directory.
#[derive(Debug, Default)]
struct Spares {
    /// Names (numbers) of the directories in the spare directory.
    ready: Vec<u64>,
    next: u64,
    /// Mode and owner a reusable directory must have: those of a fresh one.
    fresh: Option<(u32, u32)>,
}

impl Workspace {
    /// Spares left by an earlier runtimed are not trusted: they are removed.
    pub fn new(root: PathBuf) -> Workspace {
        let ws = Workspace {
            root,
            spares: Default::default(),
        };
        let dir = ws.spare_dir();
        let fresh = match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => std::fs::create_dir_all(&dir).and_then(|()| std::fs::symlink_metadata(&dir)),
        };
        match fresh {
            // Made like any directory runtimed makes: its mode and owner are
            // what a reusable one must have.
            Ok(m) => ws.lock().fresh = Some((m.permissions().mode() & 0o7777, m.uid())),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot set up the spare directories; artifacts directories are not reused")
            }
        }
        ws
    }

    fn spare_dir(&self) -> PathBuf {
        self.root.join(".kruntimes").join("spare")
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
        if !self.take_spare(&dir) {
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
        let artifacts = self.artifacts_dir(id);
        let kept = self.keep_spare(&artifacts);
        for dir in [self.root.join(id), artifacts, self.scratch_dir(id)] {
            if kept.as_deref() == Some(dir.as_path()) {
                continue;
            }
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

impl Workspace {
    /// Renames a spare directory to `dir`; false when there is none (or it
    /// has gone), and the caller creates `dir`.
    fn take_spare(&self, dir: &Path) -> bool {
        let Some(n) = self.lock().ready.pop() else {
            return false;
        };
        std::fs::rename(self.spare_dir().join(n.to_string()), dir).is_ok()
    }

    /// Keeps the finished Run's artifacts directory for reuse when it is a
    /// plain, empty directory with the mode and owner of a fresh one (a Run
    /// may have changed it). Checked after the rename into the spare
    /// directory, where the Run's path no longer leads. Returns `dir` when it
    /// was moved away (kept, or removed as unfit).
    fn keep_spare(&self, dir: &Path) -> Option<PathBuf> {
        let (n, fresh) = {
            let mut s = self.lock();
            let fresh = s.fresh?;
            if s.ready.len() >= MAX_SPARES {
                return None;
            }
            s.next += 1;
            (s.next, fresh)
        };
        let spare = self.spare_dir().join(n.to_string());
        std::fs::rename(dir, &spare).ok()?;
        let fit = std::fs::symlink_metadata(&spare)
            .is_ok_and(|m| m.is_dir() && (m.permissions().mode() & 0o7777, m.uid()) == fresh)
            && std::fs::read_dir(&spare).is_ok_and(|mut d| d.next().is_none());
        if fit {
            self.lock().ready.push(n);
        } else if let Err(e) = std::fs::remove_dir_all(&spare) {
            tracing::warn!(dir = %spare.display(), error = %e, "cannot remove a run's artifacts directory");
        }
        Some(dir.to_path_buf())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        // The pool holds plain numbers: a panic elsewhere cannot corrupt it.
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ino(p: &Path) -> u64 {
        std::fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn an_empty_artifacts_directory_is_reused_and_a_changed_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::new(tmp.path().join("ws"));
        let spares = || std::fs::read_dir(ws.spare_dir()).unwrap().count();
        ws.prepare("a", "").unwrap();
        let first = ino(&ws.artifacts_dir("a"));
        ws.cleanup("a");
        assert!(!ws.artifacts_dir("a").exists());
        assert_eq!(spares(), 1);
        ws.prepare("b", "").unwrap();
        assert_eq!(spares(), 0);
        assert_eq!(ino(&ws.artifacts_dir("b")), first, "the spare was reused");

        // Left with a file: removed, not kept.
        std::fs::write(ws.artifacts_dir("b").join("left"), b"x").unwrap();
        ws.cleanup("b");
        assert_eq!(spares(), 0);
        ws.prepare("c", "").unwrap();
        assert!(
            std::fs::read_dir(ws.artifacts_dir("c"))
                .unwrap()
                .next()
                .is_none()
        );

        // Made world-writable: not kept.
        std::fs::set_permissions(
            ws.artifacts_dir("c"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        ws.cleanup("c");
        assert_eq!(spares(), 0);
        ws.prepare("d", "").unwrap();
        let mode = std::fs::metadata(ws.artifacts_dir("d"))
            .unwrap()
            .permissions()
            .mode();
        assert_ne!(mode & 0o777, 0o777);

        // Replaced by a symlink: the link is removed, its target untouched.
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::remove_dir(ws.artifacts_dir("d")).unwrap();
        std::os::unix::fs::symlink(&outside, ws.artifacts_dir("d")).unwrap();
        ws.cleanup("d");
        assert_eq!(spares(), 0);
        ws.prepare("e", "").unwrap();
        let e = std::fs::symlink_metadata(ws.artifacts_dir("e")).unwrap();
        assert!(e.is_dir() && !e.file_type().is_symlink());
        assert!(outside.is_dir());
    }

    #[test]
    fn spares_of_an_earlier_runtimed_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        let ws = Workspace::new(root.clone());
        ws.prepare("a", "").unwrap();
        std::fs::write(ws.spare_dir().join("stale"), b"x").unwrap();
        ws.cleanup("a");
        drop(ws);
        let ws = Workspace::new(root);
        assert!(std::fs::read_dir(ws.spare_dir()).unwrap().next().is_none());
        ws.prepare("b", "").unwrap();
        assert!(ws.artifacts_dir("b").is_dir());
    }
}
