//! Where a Run's files live in the workspace shared with the Runtime Server:
//! `<root>/<run-id>/` is its working directory (created by the server),
//! `<root>/.kruntimes/artifacts/<run-id>/` the artifacts directory and
//! `<root>/.kruntimes/outputs/<run-id>.env` the outputs file runtimed hands the
//! Run through env vars. Starting a Run is a hot path: artifacts and working
//! directories left empty are kept in `<root>/.kruntimes/spare/` and renamed
//! into place for the next Runs, instead of a mkdir and an rmdir each per Run
//! (an inode allocated and freed each time, which some filesystems make slow
//! under churn: ext4 without a journal skips every inode freed in the last
//! minute). A working directory is only ever handed back to the server as a
//! working directory, and only if it has runtimed's owner: a server running
//! as another user keeps making its own.
//! The next Run that runtimed names itself (no `run_id` given) has its
//! directories renamed into place ahead, between Runs (`prename`), so its
//! Start waits for no rename at all. A pair nobody took is removed at
//! shutdown (`discard_prenamed`), or at the next start if runtimed was
//! killed (`remove_unclaimed`).
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

/// Most empty directories kept for reuse, of each kind.
const MAX_SPARES: usize = 32;

/// What a spare directory was, and may only be again.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Artifacts = 0,
    WorkingDir = 1,
}

#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    spares: Arc<Mutex<Spares>>,
}

/// Empty directories ready to become a Run's artifacts directory.
#[derive(Debug, Default)]
struct Spares {
    /// Names (numbers) of the directories in the spare directory, by kind.
    ready: [Vec<u64>; 2],
    next: u64,
    /// Mode and owner a reusable directory must have: those of a fresh one.
    fresh: Option<(u32, u32)>,
    /// The id whose directories are in place for the next Run runtimed
    /// names itself (see `next_id`).
    prenamed: Option<String>,
    /// Set while `prename` renames, so two cannot both do it.
    prenaming: bool,
}

/// A new Run's id, and whether its directories are already in place.
pub struct NewId {
    pub id: String,
    placed: bool,
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

    /// An id for a Run that comes without one: the pre-named one when there
    /// is one (its directories are in place), else a fresh one.
    pub fn next_id(&self) -> NewId {
        match self.lock().prenamed.take() {
            Some(id) => NewId { id, placed: true },
            None => NewId {
                id: uuid::Uuid::new_v4().to_string(),
                placed: false,
            },
        }
    }

    /// An id the client chose: its directories are made by `prepare`.
    pub fn given_id(id: String) -> NewId {
        NewId { id, placed: false }
    }

    /// Off a Run's path: names the next self-named Run and renames spare
    /// directories into place for it (see the module doc). Nothing when
    /// that is done already or there is no spare artifacts directory.
    pub fn prename(&self) {
        {
            let mut s = self.lock();
            if s.prenamed.is_some() || s.prenaming || s.ready[Kind::Artifacts as usize].is_empty() {
                return;
            }
            s.prenaming = true;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let placed = self.take_spare(Kind::Artifacts, &self.artifacts_dir(&id));
        if placed {
            // Without it the server makes the working directory, as when no
            // spare is left.
            self.take_spare(Kind::WorkingDir, &self.root.join(&id));
        }
        let mut s = self.lock();
        s.prenaming = false;
        if placed {
            s.prenamed = Some(id);
        }
    }

    /// At shutdown: removes the pre-named directories nobody took.
    pub fn discard_prenamed(&self) {
        let Some(id) = self.lock().prenamed.take() else {
            return;
        };
        for dir in [self.artifacts_dir(&id), self.root.join(&id)] {
            // Empty unless something wrote into them since; then the next
            // start leaves them too (see `remove_unclaimed`).
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// At start-up, before any Run: removes the empty directories of Runs
    /// that have no record (`known` says which have one). Only runtimed
    /// makes directories in the artifacts directory, and only `rmdir` is
    /// used, so nothing with content is ever touched. Returns how many
    /// Runs' directories were removed.
    pub fn remove_unclaimed(&self, known: impl Fn(&str) -> bool) -> usize {
        let Ok(entries) = std::fs::read_dir(self.root.join(".kruntimes").join("artifacts")) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str() else { continue };
            if known(id) || std::fs::remove_dir(entry.path()).is_err() {
                continue;
            }
            // The working directory too, if empty (the server may never
            // have been asked to use it).
            let _ = std::fs::remove_dir(self.root.join(id));
            removed += 1;
        }
        removed
    }

    /// Creates the Run's artifacts directory (unless `id` came with its
    /// directories in place) and returns the env vars that name its files,
    /// as the Runtime Server (whose workspace root may be mounted
    /// elsewhere) sees them.
    pub fn prepare(
        &self,
        new: &NewId,
        server_root: &str,
    ) -> std::io::Result<Vec<(String, String)>> {
        let id = new.id.as_str();
        let dir = self.artifacts_dir(id);
        if !new.placed && !self.take_spare(Kind::Artifacts, &dir) {
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
        // Last, once nothing above can fail (a failed prepare cleans nothing
        // up). The server makes the directory when there is no spare.
        if !new.placed {
            self.take_spare(Kind::WorkingDir, &self.root.join(id));
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
        let (working, artifacts) = (self.root.join(id), self.artifacts_dir(id));
        let kept = [
            self.keep_spare(Kind::WorkingDir, &working),
            self.keep_spare(Kind::Artifacts, &artifacts),
        ];
        for dir in [working, artifacts, self.scratch_dir(id)] {
            if kept.iter().flatten().any(|k| *k == dir) {
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
    /// Renames a spare directory of `kind` to `dir`, never replacing what is
    /// there (`RENAME_NOREPLACE`); false when none was used.
    fn take_spare(&self, kind: Kind, dir: &Path) -> bool {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        let Some(n) = self.lock().ready[kind as usize].pop() else {
            return false;
        };
        let spare = self.spare_dir().join(n.to_string());
        match renameat2(
            AT_FDCWD,
            &spare,
            AT_FDCWD,
            dir,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => true,
            Err(nix::errno::Errno::EEXIST) => {
                self.lock().ready[kind as usize].push(n);
                false
            }
            Err(_) => false,
        }
    }

    /// Keeps a finished Run's directory for reuse as the same `kind` when it
    /// is a plain, empty directory with the mode and owner of one runtimed
    /// makes (a Run may have changed it). Checked after the rename into the
    /// spare directory, where the Run's path no longer leads. Returns `dir`
    /// when it was moved away (kept, or removed as unfit).
    fn keep_spare(&self, kind: Kind, dir: &Path) -> Option<PathBuf> {
        let (n, fresh) = {
            let mut s = self.lock();
            let fresh = s.fresh?;
            if s.ready[kind as usize].len() >= MAX_SPARES {
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
            self.lock().ready[kind as usize].push(n);
        } else if let Err(e) = std::fs::remove_dir_all(&spare) {
            tracing::warn!(dir = %spare.display(), error = %e, "cannot remove a run's directory");
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

    fn given(id: &str) -> NewId {
        Workspace::given_id(id.to_string())
    }

    fn ino(p: &Path) -> u64 {
        std::fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn an_empty_artifacts_directory_is_reused_and_a_changed_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::new(tmp.path().join("ws"));
        let spares = || std::fs::read_dir(ws.spare_dir()).unwrap().count();
        ws.prepare(&given("a"), "").unwrap();
        let first = ino(&ws.artifacts_dir("a"));
        ws.cleanup("a");
        assert!(!ws.artifacts_dir("a").exists());
        assert_eq!(spares(), 1);
        ws.prepare(&given("b"), "").unwrap();
        assert_eq!(spares(), 0);
        assert_eq!(ino(&ws.artifacts_dir("b")), first, "the spare was reused");

        // Left with a file: removed, not kept.
        std::fs::write(ws.artifacts_dir("b").join("left"), b"x").unwrap();
        ws.cleanup("b");
        assert_eq!(spares(), 0);
        ws.prepare(&given("c"), "").unwrap();
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
        ws.prepare(&given("d"), "").unwrap();
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
        ws.prepare(&given("e"), "").unwrap();
        let e = std::fs::symlink_metadata(ws.artifacts_dir("e")).unwrap();
        assert!(e.is_dir() && !e.file_type().is_symlink());
        assert!(outside.is_dir());
    }

    #[test]
    fn an_empty_working_directory_is_reused_as_one_and_never_replaces_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::new(tmp.path().join("ws"));
        let spares = || std::fs::read_dir(ws.spare_dir()).unwrap().count();
        let working = |id: &str| ws.root.join(id);
        ws.prepare(&given("a"), "").unwrap();
        assert!(!working("a").exists(), "no spare yet: the server makes it");
        std::fs::create_dir(working("a")).unwrap(); // as the server does
        let first = ino(&working("a"));
        std::fs::remove_dir(ws.artifacts_dir("a")).unwrap();
        ws.cleanup("a");
        assert_eq!(spares(), 1, "the working directory was kept");
        ws.prepare(&given("b"), "").unwrap();
        assert_eq!(spares(), 0);
        assert_eq!(ino(&working("b")), first, "reused as a working directory");
        assert_ne!(ino(&ws.artifacts_dir("b")), first);

        // Something already at the Run's path is left alone.
        ws.cleanup("b");
        assert_eq!(spares(), 2);
        std::os::unix::fs::symlink(tmp.path(), working("c")).unwrap();
        ws.prepare(&given("c"), "").unwrap();
        assert!(
            std::fs::symlink_metadata(working("c"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(spares(), 1, "only the artifacts spare was used");
        std::fs::remove_file(working("c")).unwrap();
        ws.prepare(&given("d"), "").unwrap();
        assert!(std::fs::symlink_metadata(working("d")).unwrap().is_dir());
        assert_eq!(spares(), 0);
    }

    #[test]
    fn spares_of_an_earlier_runtimed_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        let ws = Workspace::new(root.clone());
        ws.prepare(&given("a"), "").unwrap();
        std::fs::write(ws.spare_dir().join("stale"), b"x").unwrap();
        ws.cleanup("a");
        drop(ws);
        let ws = Workspace::new(root);
        assert!(std::fs::read_dir(ws.spare_dir()).unwrap().next().is_none());
        ws.prepare(&given("b"), "").unwrap();
        assert!(ws.artifacts_dir("b").is_dir());
    }

    #[test]
    fn the_next_self_named_run_finds_its_directories_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::new(tmp.path().join("ws"));
        ws.prename();
        assert!(
            ws.lock().prenamed.is_none(),
            "no spare yet: nothing to rename"
        );
        let first = ws.next_id();
        assert!(!first.placed);
        ws.prepare(&first, "").unwrap();
        std::fs::create_dir(ws.root.join(&first.id)).unwrap(); // as the server does
        let (artifacts, working) = (
            ino(&ws.artifacts_dir(&first.id)),
            ino(&ws.root.join(&first.id)),
        );
        ws.cleanup(&first.id);

        ws.prename();
        let next = ws.next_id();
        assert!(next.placed);
        assert_ne!(next.id, first.id);
        // In place before prepare, which renames nothing more.
        assert_eq!(ino(&ws.artifacts_dir(&next.id)), artifacts);
        assert_eq!(ino(&ws.root.join(&next.id)), working);
        assert_eq!(std::fs::read_dir(ws.spare_dir()).unwrap().count(), 0);
        let vars = ws.prepare(&next, "").unwrap();
        assert!(vars.contains(&(RUN_ID_ENV.to_string(), next.id.clone())));
        assert_eq!(ino(&ws.artifacts_dir(&next.id)), artifacts);
        // Handed out once: the Run after it gets a fresh id.
        let after = ws.next_id();
        assert!(!after.placed);
        assert_ne!(after.id, next.id);
        // A given id never takes the pre-named directories.
        ws.cleanup(&next.id);
        ws.prename();
        let given_run = given("mine");
        ws.prepare(&given_run, "").unwrap();
        let pending = ws.lock().prenamed.clone().unwrap();
        assert!(ws.artifacts_dir(&pending).is_dir());
        assert!(ws.artifacts_dir("mine").is_dir());
        // Shutdown: the pair nobody took goes.
        ws.discard_prenamed();
        assert!(!ws.artifacts_dir(&pending).exists());
        assert!(!ws.root.join(&pending).exists());
        assert!(!ws.next_id().placed);
    }

    #[test]
    fn directories_of_runs_without_a_record_are_removed_if_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        let ws = Workspace::new(root.clone());
        for id in ["known", "unclaimed", "kept-files"] {
            ws.prepare(&given(id), "").unwrap();
            std::fs::create_dir(ws.root.join(id)).unwrap();
        }
        std::fs::write(ws.artifacts_dir("kept-files").join("a"), b"x").unwrap();
        // A user's own empty directory in the workspace root, without an
        // artifacts directory: never runtimed's to remove.
        std::fs::create_dir(ws.root.join("users")).unwrap();
        drop(ws);

        let ws = Workspace::new(root);
        assert_eq!(ws.remove_unclaimed(|id| id == "known"), 1);
        assert!(!ws.artifacts_dir("unclaimed").exists());
        assert!(!ws.root.join("unclaimed").exists());
        assert!(ws.artifacts_dir("known").is_dir() && ws.root.join("known").is_dir());
        assert!(ws.artifacts_dir("kept-files").join("a").is_file());
        assert!(ws.root.join("kept-files").is_dir());
        assert!(ws.root.join("users").is_dir());
    }
}
