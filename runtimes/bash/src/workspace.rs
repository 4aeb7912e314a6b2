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
    /// relative without `..`, and the result is checked again after symlinks
    /// are resolved so a link left in the directory cannot lead outside it.
    pub fn working_dir(&self, id: &str, rel: &Path) -> Result<PathBuf, RuntimeError> {
        let exec_dir = self.root.join(id);
        let dir = exec_dir.join(rel);
        fs::create_dir_all(&dir).map_err(|e| {
            RuntimeError::io(format!("creating working directory {}", dir.display()), e)
        })?;
        let real_exec = fs::canonicalize(&exec_dir)
            .map_err(|e| RuntimeError::io(format!("resolving {}", exec_dir.display()), e))?;
        let real_dir = fs::canonicalize(&dir)
            .map_err(|e| RuntimeError::io(format!("resolving {}", dir.display()), e))?;
        if !real_exec.starts_with(&self.root) || !real_dir.starts_with(&real_exec) {
            return Err(InvalidArgument {
                field: "working_dir".into(),
                value: format!("{:?}", rel.display().to_string()),
                problem: format!(
                    "resolves to {} through a symlink, outside the execution directory {}",
                    real_dir.display(),
                    exec_dir.display()
                ),
            }
            .into());
        }
        Ok(dir)
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
