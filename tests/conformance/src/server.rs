//! The server under test: launched by the suite (from `KRUNTIMES_CONFORMANCE_CMD`,
//! or the bash server built from this workspace by default) or reached at
//! `KRUNTIMES_CONFORMANCE_ADDR`. Launch waits for a ready Handshake; drop
//! stops the server (SIGTERM, then SIGKILL of its process group).
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kruntimes_proto::runtime::v1::{HandshakeRequest, HandshakeResponse, ProtocolVersion};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::Failure;
use crate::client::{Addr, Client, connect};
use crate::procfs;

/// Env var: a command line starting the server; the suite appends
/// `--listen unix:<tmp>/rs.sock --workspace <tmp>/ws`.
pub const ENV_CMD: &str = "KRUNTIMES_CONFORMANCE_CMD";
/// Env var: the address of an already running server (`unix:/path`, `host:port`).
pub const ENV_ADDR: &str = "KRUNTIMES_CONFORMANCE_ADDR";
/// Env var: with `ENV_ADDR`, the server's pid (enables zombie and memory checks).
pub const ENV_PID: &str = "KRUNTIMES_CONFORMANCE_PID";

/// Env the suite gives a server it launches; with `ENV_ADDR`, start your
/// server with these set (the env-precedence check reads them).
pub const SERVER_ENV: &[(&str, &str)] = &[
    ("KRT_CONF_SERVER_ONLY", "from-server"),
    ("KRT_CONF_OVERRIDDEN", "from-server"),
];

/// How long a launched server may take to answer Handshake with ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ServerUnderTest {
    client: Client,
    pub addr: Addr,
    child: Option<Child>,
    pid: Option<i32>,
    pub handshake: HandshakeResponse,
    log: Option<PathBuf>,
    /// Launch dir (socket, workspace, log) when the suite started the server.
    _home: Option<TempDir>,
    /// Scratch space for the checks (gate files, tools), on this machine.
    scratch: TempDir,
}

impl ServerUnderTest {
    /// The server selected by the environment (see the crate docs).
    pub async fn from_env() -> Result<Self, Failure> {
        if let Ok(addr) = std::env::var(ENV_ADDR) {
            let pid =
                match std::env::var(ENV_PID) {
                    Ok(p) => Some(p.parse::<i32>().map_err(|e| {
                        Failure::Setup(format!("{ENV_PID}={p:?} is not a pid: {e}"))
                    })?),
                    Err(_) => None,
                };
            return Self::connect_to(addr.parse()?, pid).await;
        }
        let cmd = match std::env::var(ENV_CMD) {
            Ok(cmd) => cmd,
            Err(_) => shell_quote(&default_bash_server()?),
        };
        Self::launch(&cmd).await
    }

    /// Connects to a running server and waits for a ready Handshake.
    pub async fn connect_to(addr: Addr, pid: Option<i32>) -> Result<Self, Failure> {
        let scratch = scratch_dir()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let (client, handshake) = wait_ready(&addr, deadline, || Ok(())).await?;
        Ok(Self {
            client,
            addr,
            child: None,
            pid,
            handshake,
            log: None,
            _home: None,
            scratch,
        })
    }

    /// Starts `cmd` (a shell command line) with the suite's listen and
    /// workspace flags appended, and waits for a ready Handshake.
    pub async fn launch(cmd: &str) -> Result<Self, Failure> {
        let home = tempfile::Builder::new()
            .prefix("krt-conf-")
            .tempdir()
            .map_err(|e| Failure::Setup(format!("temp dir: {e}")))?;
        let sock = home.path().join("rs.sock");
        let ws = home.path().join("ws");
        let log = home.path().join("server.log");
        let log_file =
            File::create(&log).map_err(|e| Failure::Setup(format!("{}: {e}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(|e| Failure::Setup(format!("{}: {e}", log.display())))?;
        let mut command = std::process::Command::new("sh");
        // `exec` keeps the pid: the suite inspects the server's own children.
        command
            .arg("-c")
            .arg(format!("exec {cmd} \"$@\""))
            .arg("sh")
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--workspace")
            .arg(&ws)
            .envs(SERVER_ENV.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| Failure::Setup(format!("starting {cmd:?}: {e}")))?;
        let pid = i32::try_from(child.id()).ok();
        let addr = Addr::Unix(sock);
        let deadline = Instant::now() + READY_TIMEOUT;
        let ready = wait_ready(&addr, deadline, || match child.try_wait() {
            Ok(Some(status)) => Err(Failure::Setup(format!(
                "server {cmd:?} exited with {status} before it was ready; its log:\n{}",
                read_log(&log)
            ))),
            _ => Ok(()),
        })
        .await;
        let (client, handshake) = match ready {
            Ok(r) => r,
            Err(e) => {
                stop_child(&mut child);
                return Err(match e {
                    Failure::Setup(m) if !m.contains("its log") => {
                        Failure::Setup(format!("{m}; server log:\n{}", read_log(&log)))
                    }
                    other => other,
                });
            }
        };
        Ok(Self {
            client,
            addr,
            child: Some(child),
            pid,
            handshake,
            log: Some(log),
            _home: Some(home),
            scratch: scratch_dir()?,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The server's pid, when known (launched, or `KRUNTIMES_CONFORMANCE_PID`).
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// True when the suite started the server (and may stop it).
    pub fn is_launched(&self) -> bool {
        self.child.is_some()
    }

    /// The workspace root reported by Handshake, resolved on this machine.
    pub fn workspace_root(&self) -> PathBuf {
        let root = PathBuf::from(&self.handshake.workspace_root);
        std::fs::canonicalize(&root).unwrap_or(root)
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// The launched server's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.log.as_deref().map(read_log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the launched server to exit.
    pub async fn terminate(&mut self, limit: Duration) -> Result<ExitStatus, Failure> {
        let Some(child) = self.child.as_mut() else {
            return Err(Failure::Setup(
                "the server was not launched by the suite".into(),
            ));
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        kill(pid, Signal::SIGTERM)
            .map_err(|e| Failure::Setup(format!("SIGTERM to server: {e}")))?;
        let deadline = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(None) => {
                    return Err(Failure::Violation(format!(
                        "server still running {limit:?} after SIGTERM"
                    )));
                }
                Err(e) => return Err(Failure::Setup(format!("waiting for server: {e}"))),
            }
        }
    }
}

impl ServerUnderTest {
    /// Stops a launched server without blocking the async runtime (so the
    /// client side can answer the server's GOAWAY): SIGTERM, a bounded wait,
    /// then SIGKILL of its process group. Drop does the same, blocking.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = killpg(pid, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            stop_child(child);
        }
    }
}

/// SIGTERM, a bounded wait, then SIGKILL of the server's process group.
fn stop_child(child: &mut Child) {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = child.wait();
}

async fn wait_ready(
    addr: &Addr,
    deadline: Instant,
    mut still_alive: impl FnMut() -> Result<(), Failure>,
) -> Result<(Client, HandshakeResponse), Failure> {
    let mut last = String::from("not reachable yet");
    loop {
        still_alive()?;
        if Instant::now() >= deadline {
            return Err(Failure::Setup(format!(
                "server at {addr:?} not ready within {READY_TIMEOUT:?}: {last}"
            )));
        }
        match connect(addr).await {
            Ok(mut client) => {
                let req = HandshakeRequest {
                    protocol_version: ProtocolVersion::V1 as i32,
                };
                match client.handshake(req).await {
                    Ok(r) if r.get_ref().ready => return Ok((client, r.into_inner())),
                    Ok(r) => last = format!("Handshake not ready: {}", r.get_ref().message),
                    Err(s) => last = format!("Handshake failed: {s}"),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn scratch_dir() -> Result<TempDir, Failure> {
    tempfile::Builder::new()
        .prefix("krt-conf-scratch-")
        .tempdir()
        .map_err(|e| Failure::Setup(format!("temp dir: {e}")))
}

fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The bash Runtime Server of this workspace, built once per test process
/// with `cargo build -p kruntimes-bash-runtime` so it is never stale.
fn default_bash_server() -> Result<PathBuf, Failure> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_bash_server)
        .clone()
        .map_err(Failure::Setup)
}

fn build_bash_server() -> Result<PathBuf, String> {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot find the workspace root above tests/conformance")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(&cargo)
        .args(["build", "--quiet", "-p", "kruntimes-bash-runtime"])
        .current_dir(&workspace)
        .status()
        .map_err(|e| format!("running {cargo:?} build -p kruntimes-bash-runtime: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build -p kruntimes-bash-runtime failed: {status}"
        ));
    }
    let bin = target.join("debug").join("kruntimes-bash-runtime");
    if !bin.is_file() {
        return Err(format!("{} missing after the build", bin.display()));
    }
    Ok(bin)
}

/// Zombie children of the server, waited out for up to `limit` (a zombie
/// the server is about to reap is not a failure; one it never reaps is).
pub async fn lingering_zombies(pid: i32, limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let z = procfs::zombie_children(pid);
        if z.is_empty() || Instant::now() >= deadline {
            return z;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
