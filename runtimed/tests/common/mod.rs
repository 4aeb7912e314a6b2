//! Starts a real runtimed process (local mode, with the real bash Runtime
//! Server next to it) in a temporary directory and connects a gRPC client.

#![allow(dead_code)]

use kruntimes_proto::address::Address;
use kruntimes_proto::runtimed::v1 as pb;
use pb::runtimed_client::RuntimedClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Set once the process was killed and reaped.
    gone: bool,
}

pub fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_runtimed"))
        .parent()
        .expect("bin dir")
        .to_path_buf()
}

fn require_bash_server() {
    let p = bin_dir().join("kruntimes-bash-runtime");
    assert!(
        p.is_file(),
        "{} is missing: build it first with `cargo build -p kruntimes-bash-runtime` (tests/run.sh does)",
        p.display()
    );
}

impl Daemon {
    /// runtimed in local mode with the given extra flags.
    pub async fn start(extra: &[&str]) -> Daemon {
        Self::start_in(tempfile::tempdir().expect("tempdir"), extra).await
    }

    /// runtimed on an existing data directory (e.g. after a crash).
    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Daemon {
        require_bash_server();
        let socket = dir.path().join("api.sock");
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("runtimed.log"))
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runtimed"));
        cmd.arg("--data-dir")
            .arg(dir.path())
            .arg("--unix-socket")
            .arg(&socket)
            .args(["--listen", "127.0.0.1:0", "--grace-period-ms", "1000"])
            .args(extra)
            .env("RUNTIMED_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        if !extra.contains(&"--metrics-listen") {
            cmd.args(["--metrics-listen", "off"]);
        }
        if !extra
            .iter()
            .any(|a| a.starts_with("--local-runtimes") || a.starts_with("--runtime"))
        {
            cmd.args(["--local-runtimes", "bash"]);
        }
        let child = cmd.spawn().expect("spawn runtimed");
        let d = Daemon {
            child,
            dir,
            socket,
            gone: false,
        };
        d.wait_socket().await;
        d
    }

    /// Waits until the API socket accepts connections: a socket file alone
    /// does not prove a listener (runtimed before 26813a4 created it at
    /// `bind`, a moment before `listen`).
    async fn wait_socket(&self) {
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "runtimed did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runtimed.log")).unwrap_or_default()
    }

    pub fn client(&self) -> RuntimedClient<Channel> {
        let ch = Address::Unix(self.socket.clone())
            .channel()
            .expect("channel");
        RuntimedClient::new(ch).max_decoding_message_size(16 << 20)
    }

    /// Waits until the named runtime passes its handshake.
    pub async fn wait_ready(&self, runtime: &str) {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let ch = Address::Unix(self.socket.clone())
            .channel()
            .expect("channel");
        let mut h = HealthClient::new(ch);
        let start = Instant::now();
        loop {
            if let Ok(r) = h
                .check(HealthCheckRequest {
                    service: format!("runtime/{runtime}"),
                })
                .await
                && r.into_inner().status == 1
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "runtime {runtime} not ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops runtimed with SIGTERM (a clean shutdown: it stops the Runtime
    /// Servers it started) and hands back its data directory.
    pub fn stop(mut self) -> tempfile::TempDir {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        self.child.wait().expect("wait");
        self.gone = true;
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }

    /// SIGKILLs runtimed (no clean-up of its own) and hands back its data
    /// directory. The Runtime Servers it started keep running.
    pub fn crash(mut self) -> tempfile::TempDir {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
        self.gone = true;
        let dir = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.gone {
            return;
        }
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

pub fn cmd(runtime: &str, argv: &[&str]) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        runtime: runtime.into(),
        program: Some(pb::execute_request::Program::Command(pb::Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
        })),
        ..Default::default()
    }
}

pub fn sh(script: &str) -> pb::ExecuteRequest {
    cmd("bash", &["sh", "-c", script])
}

/// Everything an Execute stream delivered.
#[derive(Default, Debug)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub combined: Vec<u8>,
    pub run: Option<pb::Run>,
    pub started: bool,
    pub accepted: bool,
    pub messages: usize,
    pub truncated: Option<pb::Truncated>,
}

pub async fn execute(c: &mut RuntimedClient<Channel>, req: pb::ExecuteRequest) -> Collected {
    let mut s = c.execute(req).await.expect("execute").into_inner();
    let mut out = Collected::default();
    while let Some(ev) = s.message().await.expect("stream") {
        match ev.event.expect("event") {
            pb::run_event::Event::Accepted(_) => out.accepted = true,
            pb::run_event::Event::Started(_) => out.started = true,
            pb::run_event::Event::Output(o) => {
                out.messages += 1;
                assert_eq!(
                    o.offset as usize,
                    out.combined.len(),
                    "offsets are contiguous"
                );
                out.combined.extend_from_slice(&o.data);
                if o.stream == pb::Stream::Stderr as i32 {
                    out.stderr.extend_from_slice(&o.data);
                } else {
                    out.stdout.extend_from_slice(&o.data);
                }
            }
            pb::run_event::Event::Exited(e) => out.run = e.run,
            pb::run_event::Event::Truncated(t) => out.truncated = Some(t),
        }
    }
    out
}

/// A loopback address with a port nobody listens on (for `--metrics-listen`).
pub fn free_port() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("local addr")
        .port();
    format!("127.0.0.1:{port}")
}

/// A plain HTTP/1.1 GET (the metrics endpoint), the whole response as text.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.expect("read");
    buf
}
