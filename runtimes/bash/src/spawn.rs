//! Starting a process: merge the env, resolve the program through PATH, and
//! spawn it with `posix_spawn` in a new session (its own process group) with
//! all signals at their default disposition and unblocked, stdin from
//! /dev/null and stdout/stderr on pipes, registered with the reaper.
//!
//! Why `posix_spawn` and not `fork`: the server is multi-threaded and large;
//! glibc's `posix_spawn` clones with `CLONE_VM | CLONE_VFORK` (no page-table
//! copy) and reports exec failures itself, with no extra pipe. std's
//! `Command` can do the same but not with `setsid`, which needs a `pre_exec`
//! closure and so a real fork; glibc's `POSIX_SPAWN_SETSID` does it in the
//! spawn.
use std::ffi::{CString, OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::fcntl::OFlag;
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
    pub env: Env,
    pub cwd: PathBuf,
}

/// A running process and the ends the server keeps.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The server's own copies of the pipes' write ends (close-on-exec, so
    /// no other process gets them). Held until the process group is gone:
    /// the Run's exit then wakes the server once, with its exit signal,
    /// instead of once more for each pipe it closes on the way out.
    pub writers: [OwnedFd; 2],
    pub exit: oneshot::Receiver<ProcessExit>,
}

/// One variable of the server's own environment, also as the `KEY=VALUE`
/// string a process gets.
#[derive(Debug)]
struct Inherited {
    key: OsString,
    value: OsString,
    entry: CString,
}

/// The server's environment, read once: it never changes it, and turning
/// it into a map and C strings per Run cost 7-8 µs of a Run's start here
/// (35 variables).
fn inherited() -> &'static [Inherited] {
    static ENV: OnceLock<Vec<Inherited>> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(key, value)| {
                let entry = CString::new(env_entry(&key, &value)).ok()?;
                Some(Inherited { key, value, entry })
            })
            .collect()
    })
}

fn env_entry(key: &OsStr, value: &OsStr) -> Vec<u8> {
    let mut kv = Vec::with_capacity(key.len() + value.len() + 1);
    kv.extend_from_slice(key.as_bytes());
    kv.push(b'=');
    kv.extend_from_slice(value.as_bytes());
    kv
}

/// A process's environment: the server's overlaid by the request's.
#[derive(Debug, Default)]
pub struct Env {
    /// Unique names (a request's env is a map).
    overrides: Vec<(OsString, OsString)>,
}

impl Env {
    /// The server's environment overlaid by `overrides`.
    pub fn merged(overrides: &[(String, String)]) -> Env {
        let mut env = Env::default();
        for (k, v) in overrides {
            match env.overrides.iter_mut().find(|(n, _)| n == k.as_str()) {
                Some(slot) => slot.1 = v.into(),
                None => env.overrides.push((k.into(), v.into())),
            }
        }
        env
    }

    /// The value of `key` the process gets.
    pub fn get(&self, key: &str) -> Option<&OsStr> {
        self.overrides
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_os_str())
            .or_else(|| {
                inherited()
                    .iter()
                    .find(|i| i.key == key)
                    .map(|i| i.value.as_os_str())
            })
    }

    /// The overrides as `KEY=VALUE` strings, and the NULL-terminated array
    /// for exec that points into them and into the server's own (valid as
    /// long as the strings returned).
    fn envp(&self) -> Result<(Vec<CString>, Vec<*mut libc::c_char>), RuntimeError> {
        let own = self
            .overrides
            .iter()
            .map(|(k, v)| cstring("env", OsStr::from_bytes(&env_entry(k, v))))
            .collect::<Result<Vec<_>, _>>()?;
        let ptrs = inherited()
            .iter()
            .filter(|i| !self.overrides.iter().any(|(k, _)| *k == i.key))
            .map(|i| &i.entry)
            .chain(&own)
            .map(|c| c.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect();
        Ok((own, ptrs))
    }
}

/// Finds the executable for `argv0`: a name with '/' is taken relative to
/// `cwd`; a bare name is searched in `path` (the merged env's PATH), one
/// `stat` per directory tried. The first regular file with an execute bit
/// wins; exec itself reports anything finer (EACCES for another user's bit).
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
        let candidate = if dir.as_os_str().is_empty() {
            cwd.join(argv0)
        } else {
            cwd.join(dir).join(argv0)
        };
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
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
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(RuntimeError::ProgramUnavailable(format!(
            "program {} is not executable (mode {:o})",
            p.display(),
            meta.permissions().mode() & 0o7777
        )));
    }
    Ok(())
}

/// /dev/null, opened once for every child's stdin.
fn dev_null() -> std::io::Result<BorrowedFd<'static>> {
    static DEV_NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_fd());
    }
    let fd: OwnedFd = std::fs::File::open("/dev/null")?.into();
    // A concurrent first caller may win; its fd is as good as ours.
    Ok(DEV_NULL.get_or_init(|| fd).as_fd())
}

fn cstring(what: &str, s: &OsStr) -> Result<CString, RuntimeError> {
    CString::new(s.as_bytes()).map_err(|_| {
        RuntimeError::io(
            format!("{what} {:?}", s.to_string_lossy()),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "contains NUL"),
        )
    })
}

/// A pipe (close-on-exec both ends) with both ends above the standard fds,
/// so the child's dup2 onto 0/1/2 cannot clobber one of them even if the
/// server was started with a standard fd closed.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

fn above_stdio(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    Ok(
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)).map(|raw| {
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
        })?,
    )
}

/// Maps a non-zero return of the posix_spawn family to an error.
fn check(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r))
    }
}

/// `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> std::io::Result<Box<Self>> {
        let mut raw = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
        // SAFETY: init fully initialises the object it is given.
        check(unsafe { libc::posix_spawn_file_actions_init(raw.as_mut_ptr()) })?;
        // SAFETY: initialised just above. Boxed so its address stays fixed.
        Ok(Box::new(Self(unsafe { raw.assume_init() })))
    }

    fn dup2(&mut self, fd: BorrowedFd<'_>, to: libc::c_int) -> std::io::Result<()> {
        // SAFETY: self.0 is initialised; the fd stays open until the spawn
        // (the caller holds it for longer than this object).
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd.as_raw_fd(), to) })
    }

    fn chdir(&mut self, dir: &CString) -> std::io::Result<()> {
        // SAFETY: self.0 is initialised; glibc copies the path.
        check(unsafe { libc::posix_spawn_file_actions_addchdir_np(&mut self.0, dir.as_ptr()) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in new(), destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// `posix_spawnattr_t`, destroyed on drop.
struct Attr(libc::posix_spawnattr_t);

impl Attr {
    /// New session, empty signal mask, every signal at its default action
    /// (the server ignores SIGPIPE, and whoever started it may have ignored
    /// others; the child must not inherit that). glibc's own internal
    /// signals (32, 33) are outside `sigfillset` and stay glibc's business.
    fn new_session() -> std::io::Result<Box<Self>> {
        let mut raw = MaybeUninit::<libc::posix_spawnattr_t>::uninit();
        // SAFETY: init fully initialises the object it is given.
        check(unsafe { libc::posix_spawnattr_init(raw.as_mut_ptr()) })?;
        // SAFETY: initialised just above. Boxed so its address stays fixed.
        let mut attr = Box::new(Self(unsafe { raw.assume_init() }));
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset/sigfillset initialise the set; the setters copy
        // it into the initialised attr.
        unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            check(libc::posix_spawnattr_setsigmask(&mut attr.0, set.as_ptr()))?;
            libc::sigfillset(set.as_mut_ptr());
            check(libc::posix_spawnattr_setsigdefault(
                &mut attr.0,
                set.as_ptr(),
            ))?;
        }
        let flags = libc::POSIX_SPAWN_SETSID
            | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short
            | libc::POSIX_SPAWN_SETSIGDEF as libc::c_short;
        // SAFETY: attr.0 is initialised.
        check(unsafe { libc::posix_spawnattr_setflags(&mut attr.0, flags) })?;
        Ok(attr)
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised in new_session(), destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// Spawns the process in its own session and registers it with the reaper.
pub fn spawn(reaper: &Reaper, launch: &Launch) -> Result<Spawned, RuntimeError> {
    let program = cstring("program", launch.program.as_os_str())?;
    let cwd = cstring("working directory", launch.cwd.as_os_str())?;
    let mut argv = Vec::with_capacity(launch.args.len() + 1);
    argv.push(cstring("argv[0]", &launch.arg0)?);
    for a in &launch.args {
        argv.push(cstring("argument", a)?);
    }
    let (_own_env, envp_p) = launch.env.envp()?;
    let ptrs = |v: &[CString]| -> Vec<*mut libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect()
    };
    let argv_p = ptrs(&argv);

    let ctx =
        |e: std::io::Error| RuntimeError::io(format!("spawning {}", launch.program.display()), e);
    let (out_r, out_w) = pipe().map_err(ctx)?;
    let (err_r, err_w) = pipe().map_err(ctx)?;
    let null = dev_null().map_err(ctx)?;
    let mut actions = FileActions::new().map_err(ctx)?;
    actions.dup2(null, 0).map_err(ctx)?;
    actions.dup2(out_w.as_fd(), 1).map_err(ctx)?;
    actions.dup2(err_w.as_fd(), 2).map_err(ctx)?;
    actions.chdir(&cwd).map_err(ctx)?;
    let attr = Attr::new_session().map_err(ctx)?;

    let (pid, exit) = reaper
        .spawn(|| {
            let mut pid: libc::pid_t = 0;
            // SAFETY: every pointer is valid for the call: program and the
            // NULL-terminated argv/envp arrays point into CStrings alive
            // until after it, actions and attr are initialised. glibc
            // copies what the child needs before returning.
            check(unsafe {
                libc::posix_spawn(
                    &mut pid,
                    program.as_ptr(),
                    &actions.0,
                    &attr.0,
                    argv_p.as_ptr(),
                    envp_p.as_ptr(),
                )
            })
            .map(|()| pid)
        })
        .map_err(|e| spawn_error(&launch.program, e))?;
    Ok(Spawned {
        pid,
        stdout: out_r,
        stderr: err_r,
        writers: [out_w, err_w],
        exit,
    })
}

fn spawn_error(program: &Path, e: std::io::Error) -> RuntimeError {
    use std::io::ErrorKind;
    let is_exec_problem = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied)
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOEXEC | libc::ENOTDIR | libc::ELOOP)
        );
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
        // Any variable of the server's own the request leaves alone (cargo
        // sets several for a test).
        let kept = inherited()
            .iter()
            .find(|i| i.key != "PATH" && i.key != "NEW_VAR")
            .expect("the test process has an environment");
        let env = Env::merged(&[
            ("PATH".into(), "/only/here".into()),
            ("NEW_VAR".into(), "x".into()),
        ]);
        assert_eq!(env.get("PATH"), Some(OsStr::new("/only/here")));
        assert_eq!(env.get("NEW_VAR"), Some(OsStr::new("x")));
        assert_eq!(
            env.get(&kept.key.to_string_lossy()),
            Some(kept.value.as_os_str()),
            "the server's own"
        );
        assert_eq!(
            std::env::var_os("PATH"),
            server_path,
            "server env untouched"
        );
        // What exec gets: each name once, the request's value winning.
        let (_own, ptrs) = env.envp().unwrap();
        assert!(ptrs.last().unwrap().is_null());
        let entries: Vec<String> = ptrs[..ptrs.len() - 1]
            .iter()
            // SAFETY: non-null pointers into C strings `_own` and the
            // server's cached environment keep alive.
            .map(|p| {
                unsafe { std::ffi::CStr::from_ptr(*p) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let named = |k: &str| {
            entries
                .iter()
                .filter(|e| e.split_once('=').is_some_and(|(n, _)| n == k))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(named("PATH"), ["PATH=/only/here"]);
        assert_eq!(named("NEW_VAR"), ["NEW_VAR=x"]);
        assert_eq!(named(&kept.key.to_string_lossy()).len(), 1);
        let not_overridden = inherited()
            .iter()
            .filter(|i| i.key != "PATH" && i.key != "NEW_VAR")
            .count();
        assert_eq!(entries.len(), not_overridden + 2, "{entries:?}");
    }

    fn launch(program: &Path, args: &[&str], cwd: &Path) -> Launch {
        Launch {
            program: program.to_path_buf(),
            arg0: program.as_os_str().to_owned(),
            args: args.iter().map(OsString::from).collect(),
            env: Env::default(),
            cwd: cwd.to_path_buf(),
        }
    }

    fn read_all(fd: OwnedFd) -> String {
        use std::io::Read;
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    fn field<'a>(status: &'a str, name: &str) -> &'a str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} missing in {status}"))
            .trim()
    }

    /// The child leads its own session and process group, has no signal
    /// blocked or ignored (this test process ignores SIGPIPE, as the server
    /// does, and SIGHUP here on purpose), stdin is /dev/null, and it runs
    /// in the requested directory.
    #[test]
    fn child_gets_its_own_session_and_default_signals() {
        // SAFETY: setting a disposition to SIG_IGN installs no handler code.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        let tmp = tempfile::tempdir().unwrap();
        let reaper = Reaper::default();
        let sh = resolve_program("sh", None, tmp.path()).unwrap();
        let l = launch(
            &sh,
            &[
                "-c",
                "pwd -P; readlink /proc/self/fd/0; exec cat /proc/self/status",
            ],
            tmp.path(),
        );
        let spawned = spawn(&reaper, &l).unwrap();
        drop((spawned.stderr, spawned.writers));
        let out = read_all(spawned.stdout);
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None).unwrap();
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(std::fs::canonicalize(tmp.path()).unwrap().to_str().unwrap())
        );
        assert_eq!(lines.next(), Some("/dev/null"));
        let pid = spawned.pid.to_string();
        assert_eq!(field(&out, "NSsid:"), pid, "own session");
        assert_eq!(field(&out, "NSpgid:"), pid, "own process group");
        // glibc's posix_spawn leaves only its two internal real-time signals
        // (32, 33; any glibc program re-installs them at start) ignored.
        let ignored = u64::from_str_radix(field(&out, "SigIgn:"), 16).unwrap();
        let glibc_internal = (1u64 << 31) | (1u64 << 32);
        assert_eq!(ignored & !glibc_internal, 0, "{out}");
        assert_eq!(field(&out, "SigBlk:"), "0000000000000000", "{out}");
    }

    /// The pipes do not end when the process exits, only once the server
    /// drops its copies of the write ends: the exit itself is the one event
    /// that wakes the server.
    #[test]
    fn pipes_end_when_the_server_drops_its_write_ends() {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let tmp = tempfile::tempdir().unwrap();
        let reaper = Reaper::default();
        let sh = resolve_program("sh", None, tmp.path()).unwrap();
        let spawned = spawn(&reaper, &launch(&sh, &["-c", "exit 0"], tmp.path())).unwrap();
        nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(spawned.pid), None).unwrap();
        let ready = |fd: &OwnedFd| {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::ZERO).unwrap()
        };
        assert_eq!(
            ready(&spawned.stdout),
            0,
            "no end while the server holds a writer"
        );
        assert_eq!(ready(&spawned.stderr), 0);
        drop(spawned.writers);
        assert_eq!(ready(&spawned.stdout), 1);
        assert_eq!(ready(&spawned.stderr), 1);
        assert_eq!(read_all(spawned.stdout), "");
    }

    /// An exec failure comes back from posix_spawn as FAILED_PRECONDITION
    /// naming the path, and leaves no child behind.
    #[test]
    fn exec_failure_names_the_program() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let bogus = tmp.path().join("not-a-binary");
        std::fs::write(&bogus, b"\x00\x01\x02 not an executable format").unwrap();
        std::fs::set_permissions(&bogus, std::fs::Permissions::from_mode(0o755)).unwrap();
        let reaper = Reaper::default();
        let e = spawn(&reaper, &launch(&bogus, &[], tmp.path())).unwrap_err();
        assert!(
            matches!(e, RuntimeError::ProgramUnavailable(ref m) if m.contains("not-a-binary")),
            "{e}"
        );
        let gone = tmp.path().join("gone");
        let e = spawn(&reaper, &launch(&gone, &[], tmp.path())).unwrap_err();
        assert!(
            matches!(e, RuntimeError::ProgramUnavailable(ref m) if m.contains("gone")),
            "{e}"
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
