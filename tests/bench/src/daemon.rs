//! The runtimed under test: a real release `runtimed` process in local mode
//! (it starts the bash and python Runtime Servers itself) with a temporary
//! data dir, serving gRPC on 127.0.0.1 at a free port we pick, as the target
//! of a port-forward would.

use crate::error::{BenchError, Result};
use kruntimes_proto::address::Address;
use kruntimes_proto::runtimed::v1::runtimed_client::RuntimedClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// How long runtimed may take to serve its API.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports picked by bind-and-release can be taken by someone else before
/// runtimed binds them; retry with another a few times.
const PORT_ATTEMPTS: usize = 3;
/// Largest gRPC message the client accepts (runtimed sends at most 256 KiB).
const MAX_MESSAGE: usize = 16 << 20;

pub struct Options<'a> {
    pub runtimed: &'a Path,
    pub data_parent: Option<&'a Path>,
    /// Interpreter for the python runtime; without it only bash is started.
    pub python: Option<&'a Path>,
    pub max_runs: u32,
}

pub struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
    pub addr: String,
    bash_server: PathBuf,
    python: Option<PathBuf>,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::io("binding 127.0.0.1:0 to find a free port", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::io("reading the free port", e))
}

impl Daemon {
    pub async fn start(o: &Options<'_>) -> Result<Daemon> {
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            match Daemon::start_once(o).await {
                Ok(d) => return Ok(d),
                Err(BenchError::Startup { reason, log }) if log.contains("cannot listen") => {
                    last = Some(BenchError::Startup { reason, log });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| BenchError::Unexpected("runtimed did not start".into())))
    }

    async fn start_once(o: &Options<'_>) -> Result<Daemon> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("kruntimes-bench-");
        let dir = match o.data_parent {
            Some(p) => builder.tempdir_in(p),
            None => builder.tempdir(),
        }
        .map_err(|e| BenchError::io("creating runtimed's data dir", e))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("runtimed.log"))
            .map_err(|e| BenchError::io("creating runtimed.log", e))?;
        let runtimes = if o.python.is_some() {
            "bash,python"
        } else {
            "bash"
        };
        let mut cmd = Command::new(o.runtimed);
        cmd.arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", &addr, "--metrics-listen", "off"])
            .args(["--local-runtimes", runtimes])
            .args(["--max-runs", &o.max_runs.to_string()])
            .args(["--grace-period-ms", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(py) = o.python {
            cmd.env("KRUNTIMES_PYTHON", py);
        }
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::io(format!("starting {}", o.runtimed.display()), e))?;
        crate::children::adopt(child.id());
        crate::children::adopt_dir(dir.path().to_path_buf());
        let bash_server = o
            .runtimed
            .parent()
            .unwrap_or(Path::new("."))
            .join("kruntimes-bash-runtime");
        let mut d = Daemon {
            child,
            dir,
            addr,
            bash_server,
            python: o.python.map(Path::to_path_buf),
        };
        d.wait_api().await?;
        Ok(d)
    }

    fn channel(&self) -> Result<Channel> {
        Address::parse(&self.addr)
            .map_err(BenchError::Unexpected)?
            .channel()
            .map_err(|e| BenchError::Unexpected(format!("channel to {}: {e}", self.addr)))
    }

    pub fn client(&self) -> Result<RuntimedClient<Channel>> {
        Ok(RuntimedClient::new(self.channel()?).max_decoding_message_size(MAX_MESSAGE))
    }

    async fn health(&self, service: &str) -> bool {
        let Ok(ch) = self.channel() else {
            return false;
        };
        let req = HealthCheckRequest {
            service: service.into(),
        };
        matches!(
            HealthClient::new(ch).check(req).await,
            Ok(r) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        )
    }

    async fn wait_api(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Startup {
                    reason: format!("runtimed exited with {status}"),
                    log: self.log_tail(),
                });
            }
            if self.health("").await {
                return Ok(());
            }
            if start.elapsed() > API_TIMEOUT {
                return Err(BenchError::Startup {
                    reason: format!(
                        "its API on {} did not answer within {}s",
                        self.addr,
                        API_TIMEOUT.as_secs()
                    ),
                    log: self.log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until runtime `name` passed its handshake; otherwise says why not.
    pub async fn wait_runtime(
        &self,
        name: &str,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        let start = Instant::now();
        let service = format!("runtime/{name}");
        while start.elapsed() < timeout {
            if self.health(&service).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // runtimed's own words for why the runtime is not ready.
        // An Execute is refused with the runtime's current reason (UNAVAILABLE).
        let why = match self.client() {
            Ok(mut c) => match c.execute(crate::client::command(name, &["true"])).await {
                Err(s) => s.message().to_string(),
                Ok(_) => "it became ready just now".into(),
            },
            Err(e) => e.to_string(),
        };
        Err(format!(
            "runtime {name} not ready after {}s: {why} (runtimed log: {})",
            timeout.as_secs(),
            self.log_path().display()
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The bash Runtime Server runtimed supervises (its direct child).
    pub fn bash_server_pid(&self) -> Option<u32> {
        crate::procfs::child_running(self.pid(), &self.bash_server)
    }

    /// The python Runtime Server runtimed supervises, and its zygote (the
    /// warm interpreter that forks the Runs), when they can be found.
    pub fn python_server_pids(&self) -> (Option<u32>, Option<u32>) {
        let Some(py) = &self.python else {
            return (None, None);
        };
        let server = crate::procfs::child_running(self.pid(), py);
        let zygote = server.and_then(|s| crate::procfs::child_running(s, py));
        (server, zygote)
    }

    /// A directory that lives as long as this runtimed, for helper files.
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("runtimed.log")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        crate::children::release(self.child.id());
        crate::children::release_dir(self.dir.path());
    }
}

impl Daemon {
    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
