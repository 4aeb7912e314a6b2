//! The workspace root on disk: per-execution working directories
//! (`<root>/<execution_id>/<working_dir>`) and the server's own script files
//! (`<root>/.kruntimes/scripts/<execution_id>/<filename>`, outside every Run's
//! directory since execution ids cannot start with '.').
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::RuntimeError;
use crate::validate::InvalidArgument;

const PRIVATE_DIR: &str = ".kruntimes";

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
}

impl Workspace {
    /// Creates the root if missing and resolves it to a canonical path.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        let root = fs::canonicalize(dir)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join(PRIVATE_DIR).join("scripts"))?;
        Ok(Self { root })
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
        let mut linked = !make_level(&dir)?;
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
