//! Starting a process: merge the env, resolve the program through PATH, and
//! spawn it in a new session (its own process group) with stdin from
//! /dev/null and stdout/stderr on pipes, registered with the reaper.
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::unistd::{AccessFlags, access};
use tokio::sync::oneshot;

use crate::error::RuntimeError;
use crate::reaper::{ProcessExit, Reaper};

/// PATH used when neither the server nor the request sets one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A process ready to spawn.
#[derive(Debug)]
pub struct Launch {
    /// Resolved path of the executable.
    pub program: PathBuf,
    /// argv[0] as the process sees it.
    pub arg0: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: PathBuf,
}

/// A running process and the ends the server keeps.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub exit: oneshot::Receiver<ProcessExit>,
}

/// The server's environment overlaid by the request's.
pub fn merged_env(overrides: &[(String, String)]) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (k, v) in overrides {
        env.insert(k.into(), v.into());
    }
    env.into_iter().collect()
}

/// Finds the executable for `argv0`: a name with '/' is taken relative to
/// `cwd`; a bare name is searched in `path` (the merged env's PATH).
pub fn resolve_program(
    argv0: &str,
    path: Option<&OsStr>,
    cwd: &Path,
) -> Result<PathBuf, RuntimeError> {
    if argv0.contains('/') {
        let p = cwd.join(argv0);
        return check_executable(&p).map(|()| p);
    }
    let path = path.unwrap_or(OsStr::new(DEFAULT_PATH));
    for dir in std::env::split_paths(path) {
        // POSIX: an empty PATH element means the current directory.
        let dir = if dir.as_os_str().is_empty() {
            cwd.to_path_buf()
        } else {
            cwd.join(dir)
        };
        let candidate = dir.join(argv0);
        if candidate.is_file() && check_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(RuntimeError::ProgramUnavailable(format!(
        "program {argv0:?} not found in PATH {:?}",
        String::from_utf8_lossy(path.as_bytes())
    )))
}

fn check_executable(p: &Path) -> Result<(), RuntimeError> {
    let meta = std::fs::metadata(p).map_err(|e| {
        RuntimeError::ProgramUnavailable(format!("program {} cannot be run: {e}", p.display()))
    })?;
    if meta.is_dir() {
        return Err(RuntimeError::ProgramUnavailable(format!(
            "program {} is a directory",
            p.display()
        )));
    }
    access(p, AccessFlags::X_OK).map_err(|e| {
        RuntimeError::ProgramUnavailable(format!("program {} is not executable: {e}", p.display()))
    })
}

/// Spawns the process in its own session and registers it with the reaper.
pub fn spawn(reaper: &Reaper, launch: &Launch) -> Result<Spawned, RuntimeError> {
    let mut cmd = Command::new(&launch.program);
    cmd.arg0(&launch.arg0)
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let (mut child, exit) = reaper
        .spawn(&mut cmd)
        .map_err(|e| spawn_error(&launch.program, e))?;
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(RuntimeError::io(
            format!("spawning {}", launch.program.display()),
            std::io::Error::other("child pipes missing"),
        ));
    };
    // Dropping `child` does not wait for it: the reaper owns the exit status.
    Ok(Spawned {
        pid,
        stdout: stdout.into(),
        stderr: stderr.into(),
        exit,
    })
}

fn spawn_error(program: &Path, e: std::io::Error) -> RuntimeError {
    use std::io::ErrorKind;
    let is_exec_problem = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied)
        || e.raw_os_error() == Some(libc::ENOEXEC);
    let is_resource = matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN | libc::EMFILE | libc::ENFILE | libc::ENOMEM)
    );
    if is_exec_problem {
        RuntimeError::ProgramUnavailable(format!("cannot execute {}: {e}", program.display()))
    } else if is_resource {
        RuntimeError::ResourceExhausted(format!(
            "cannot start {}: system resource limit: {e}",
            program.display()
        ))
    } else {
        RuntimeError::io(format!("spawning {}", program.display()), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_env_overrides_server_env() {
        let server_path = std::env::var_os("PATH");
        let env = merged_env(&[
            ("PATH".into(), "/only/here".into()),
            ("NEW_VAR".into(), "x".into()),
        ]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("PATH"), Some("/only/here".into()));
        assert_eq!(get("NEW_VAR"), Some("x".into()));
        assert_eq!(
            std::env::var_os("PATH"),
            server_path,
            "server env untouched"
        );
    }

    #[test]
    fn resolves_through_the_given_path() {
        let tmp = tempfile::tempdir().unwrap();
        let sh = resolve_program(
            "sh",
            Some(OsStr::new("/nonexistent:/bin:/usr/bin")),
            tmp.path(),
        )
        .unwrap();
        assert!(sh.ends_with("sh"));
        let e = resolve_program("sh", Some(OsStr::new("/nonexistent")), tmp.path()).unwrap_err();
        assert!(
            matches!(e, RuntimeError::ProgramUnavailable(ref m) if m.contains("/nonexistent")),
            "{e}"
        );

        std::fs::write(tmp.path().join("data.txt"), "x").unwrap();
        let e = resolve_program("./data.txt", None, tmp.path()).unwrap_err();
        assert!(e.to_string().contains("not executable"), "{e}");
        let e = resolve_program("./missing", None, tmp.path()).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
