//! The workspace root on disk: per-execution working directories
//! (`<root>/<execution_id>/<working_dir>`) and the server's own script files
//! (`<root>/.kruntimes/scripts/<execution_id>/<filename>`, outside every Run's
//! directory since execution ids cannot start with '.').
//!
//! Execution directories are made ahead of need in
//! `<root>/.kruntimes/bash-spare/` and renamed into place on Start: making a
//! directory allocates an inode, which costs 0.2-0.9 ms on some filesystems
//! under churn (ext4 without a journal), a rename ~0.03 ms.
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::RuntimeError;
use crate::validate::InvalidArgument;

const PRIVATE_DIR: &str = ".kruntimes";
const SPARE_DIR: &str = "bash-spare";
/// Execution directories kept ready: enough for a burst of Starts between
/// two refills.
const SPARES: usize = 4;

/// Makes one directory level. True when it is now a real directory (created,
/// or already there and not a symlink); false when it is a symlink (to be
/// resolved by the caller).
fn make_level(dir: &Path) -> Result<bool, RuntimeError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(dir)
                .map_err(|e| RuntimeError::io(format!("inspecting {}", dir.display()), e))?;
            if meta.file_type().is_symlink() {
                Ok(false)
            } else if meta.is_dir() {
                Ok(true)
            } else {
                Err(RuntimeError::io(
                    format!("creating working directory {}", dir.display()),
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a file that is not a directory is in the way",
                    ),
                ))
            }
        }
        Err(e) => Err(RuntimeError::io(
            format!("creating working directory {}", dir.display()),
            e,
        )),
    }
}

#[derive(Debug)]
pub struct Workspace {
    /// Canonical absolute path.
    root: PathBuf,
    spares: Mutex<Vec<PathBuf>>,
    spare_names: AtomicU64,
    refilling: AtomicBool,
}

impl Workspace {
    /// Creates the root if missing and resolves it to a canonical path.
    /// Spare directories of an earlier server are removed, new ones made.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let root = fs::canonicalize(dir)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join(PRIVATE_DIR).join("scripts"))?;
        let ws = Self {
            root,
            spares: Mutex::default(),
            spare_names: AtomicU64::new(0),
            refilling: AtomicBool::new(false),
        };
        match fs::remove_dir_all(ws.spare_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fs::DirBuilder::new().mode(0o700).create(ws.spare_dir())?;
        ws.refill_spares();
        Ok(ws)
    }

    fn spare_dir(&self) -> PathBuf {
        self.root.join(PRIVATE_DIR).join(SPARE_DIR)
    }

    /// Makes spare execution directories until [`SPARES`] are ready. Best
    /// effort (a Start without a spare makes its directory itself); one
    /// refill at a time.
    pub fn refill_spares(&self) {
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        while self.lock_spares().len() < SPARES {
            let n = self.spare_names.fetch_add(1, Ordering::Relaxed);
            let dir = self.spare_dir().join(n.to_string());
            if let Err(e) = fs::create_dir(&dir) {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot make a spare execution directory");
                break;
            }
            self.lock_spares().push(dir);
        }
        self.refilling.store(false, Ordering::Release);
    }

    /// Whether a refill would make directories.
    pub fn spares_low(&self) -> bool {
        self.lock_spares().len() < SPARES
    }

    /// Renames a spare to `exec_dir` unless something is there already
    /// (`RENAME_NOREPLACE`); false when none was used.
    fn take_spare(&self, exec_dir: &Path) -> bool {
        use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
        let Some(spare) = self.lock_spares().pop() else {
            return false;
        };
        match renameat2(
            AT_FDCWD,
            &spare,
            AT_FDCWD,
            exec_dir,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => true,
            Err(nix::errno::Errno::EEXIST) => {
                self.lock_spares().push(spare);
                false
            }
            Err(_) => false,
        }
    }

    fn lock_spares(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        // A list of paths: a panic elsewhere cannot leave it inconsistent.
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates and returns `<root>/<id>/<rel>`; `rel` is already validated as
    /// relative without `..`. No symlink may lead outside the execution
    /// directory. Fast path: each level is created with one `mkdir`; a level
    /// that already existed is checked with one `lstat`, and only a symlink
    /// found that way costs a full resolution (then the link must stay inside
    /// the execution directory).
    pub fn working_dir(&self, id: &str, rel: &Path) -> Result<PathBuf, RuntimeError> {
        let exec_dir = self.root.join(id);
        let mut dir = exec_dir.clone();
        // In local mode runtimed has put a directory there already: one
        // lstat instead of a failed rename, a failed mkdir and an lstat.
        let mut linked = match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => false,
            _ => !(self.take_spare(&dir) || make_level(&dir)?),
        };
        for part in rel.components() {
            dir.push(part);
            if !linked {
                linked = !make_level(&dir)?;
            }
        }
        if linked {
            self.resolve_inside(&exec_dir, rel)?;
        }
        Ok(dir)
    }

    /// Slow path: walks `rel` on the resolved paths, creating what is
    /// missing one level at a time, and checks after every level that it
    /// resolves inside the resolved execution directory, so nothing is ever
    /// created outside it.
    fn resolve_inside(&self, exec_dir: &Path, rel: &Path) -> Result<(), RuntimeError> {
        let outside = |real: &Path| -> RuntimeError {
            InvalidArgument {
                field: "working_dir".into(),
                value: format!("{:?}", rel.display().to_string()),
                problem: format!(
                    "resolves to {} through a symlink, outside the execution directory {}",
                    real.display(),
                    exec_dir.display()
                ),
            }
            .into()
        };
        let resolve = |p: &Path| {
            fs::canonicalize(p)
                .map_err(|e| RuntimeError::io(format!("resolving {}", p.display()), e))
        };
        let real_exec = resolve(exec_dir)?;
        if !real_exec.starts_with(&self.root) || real_exec == self.root {
            return Err(outside(&real_exec));
        }
        let mut real = real_exec.clone();
        for part in rel.components() {
            let next = real.join(part);
            match fs::create_dir(&next) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(RuntimeError::io(
                        format!("creating working directory {}", next.display()),
                        e,
                    ));
                }
            }
            real = resolve(&next)?;
            if !real.starts_with(&real_exec) {
                return Err(outside(&real));
            }
        }
        if !real.is_dir() {
            return Err(RuntimeError::io(
                format!("using working directory {}", real.display()),
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        Ok(())
    }

    fn script_dir(&self, id: &str) -> PathBuf {
        self.root.join(PRIVATE_DIR).join("scripts").join(id)
    }

    /// Writes a script's source to a file of the server's own.
    pub fn write_script(
        &self,
        id: &str,
        filename: &str,
        source: &[u8],
    ) -> Result<PathBuf, RuntimeError> {
        let dir = self.script_dir(id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(filename);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))?;
        f.write_all(source)
            .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }

    /// Removes an execution's script files (on Forget); best effort.
    pub fn remove_scripts(&self, id: &str) {
        let dir = self.script_dir(id);
        if let Err(e) = fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove script directory");
        }
    }

    /// Proves the workspace is writable by creating and removing a file.
    pub fn check_writable(&self) -> Result<(), String> {
        let probe = self
            .root
            .join(PRIVATE_DIR)
            .join(format!("probe-{}", std::process::id()));
        fs::write(&probe, b"ok")
            .and_then(|()| fs::remove_file(&probe))
            .map_err(|e| format!("workspace {} is not writable: {e}", self.root.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spares_on_disk(ws: &Workspace) -> usize {
        fs::read_dir(ws.spare_dir()).unwrap().count()
    }

    #[test]
    fn execution_dirs_come_from_the_spares_and_are_refilled() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        fs::create_dir_all(root.join(PRIVATE_DIR).join(SPARE_DIR).join("stale")).unwrap();
        let ws = Workspace::open(&root).unwrap();
        assert!(
            !ws.spare_dir().join("stale").exists(),
            "an earlier server's spares are removed"
        );
        assert_eq!(spares_on_disk(&ws), SPARES);
        let a = ws.working_dir("a", Path::new("")).unwrap();
        assert!(fs::symlink_metadata(&a).unwrap().is_dir());
        assert!(fs::read_dir(&a).unwrap().next().is_none());
        assert_eq!(
            spares_on_disk(&ws),
            SPARES - 1,
            "a spare was renamed into place"
        );
        assert!(ws.spares_low());
        ws.refill_spares();
        assert_eq!(spares_on_disk(&ws), SPARES);
        assert!(!ws.spares_low());
    }

    #[test]
    fn a_spare_never_replaces_what_is_at_the_execution_path() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(&tmp.path().join("ws")).unwrap();
        // An empty directory already there (a rename would replace it).
        let kept = ws.root().join("kept");
        fs::create_dir(&kept).unwrap();
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(p).unwrap());
        let before = ino(&kept);
        assert_eq!(ws.working_dir("kept", Path::new("")).unwrap(), kept);
        assert_eq!(ino(&kept), before);
        // A symlink out of the workspace is still refused, not replaced.
        std::os::unix::fs::symlink(tmp.path(), ws.root().join("link")).unwrap();
        let e = ws.working_dir("link", Path::new("")).unwrap_err();
        assert!(
            matches!(e, RuntimeError::InvalidArgument(ref i) if i.field == "working_dir"),
            "{e}"
        );
        assert!(
            fs::symlink_metadata(ws.root().join("link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(
            spares_on_disk(&ws),
            SPARES,
            "the spares went back to the pool"
        );
    }

    #[test]
    fn working_dirs_are_per_execution_and_created() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(&tmp.path().join("ws")).unwrap();
        let a = ws.working_dir("a", Path::new("x/y")).unwrap();
        assert!(a.is_dir());
        assert_eq!(a, ws.root().join("a/x/y"));
        assert_eq!(
            ws.working_dir("b", Path::new("")).unwrap(),
            ws.root().join("b")
        );
        ws.check_writable().unwrap();
    }

    #[test]
    fn symlink_out_of_the_execution_dir_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(&tmp.path().join("ws")).unwrap();
        ws.working_dir("a", Path::new("")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), ws.root().join("a/out")).unwrap();
        let e = ws.working_dir("a", Path::new("out")).unwrap_err();
        assert!(
            matches!(e, RuntimeError::InvalidArgument(ref i) if i.field == "working_dir"),
            "{e}"
        );
        let e = ws.working_dir("a", Path::new("out/deeper")).unwrap_err();
        assert!(
            matches!(e, RuntimeError::InvalidArgument(ref i) if i.field == "working_dir"),
            "{e}"
        );
        assert!(
            !tmp.path().join("deeper").exists(),
            "nothing created outside"
        );
    }

    #[test]
    fn symlinks_inside_the_execution_dir_are_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(&tmp.path().join("ws")).unwrap();
        ws.working_dir("a", Path::new("real")).unwrap();
        std::os::unix::fs::symlink("real", ws.root().join("a/link")).unwrap();
        assert_eq!(
            ws.working_dir("a", Path::new("link/sub")).unwrap(),
            ws.root().join("a/link/sub")
        );
        assert!(ws.root().join("a/real/sub").is_dir());
        // An execution directory that is itself a link out is refused.
        std::os::unix::fs::symlink(tmp.path(), ws.root().join("b")).unwrap();
        assert!(ws.working_dir("b", Path::new("")).is_err());
        // A regular file in the way is an error, not a working directory.
        std::fs::write(ws.root().join("a/file"), "x").unwrap();
        assert!(ws.working_dir("a", Path::new("file")).is_err());
    }

    #[test]
    fn scripts_live_outside_execution_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = Workspace::open(&tmp.path().join("ws")).unwrap();
        let p = ws.write_script("a", "run.sh", b"echo hi").unwrap();
        assert!(!p.starts_with(ws.root().join("a")));
        assert_eq!(fs::read(&p).unwrap(), b"echo hi");
        ws.remove_scripts("a");
        assert!(!p.exists());
    }
}
