//! Shared by krt's end-to-end tests: running krt, locating the workspace's
//! binaries, and a real runtimed (local mode, bash runtime) on a TCP port.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn krt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_krt"))
}

pub fn bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_krt"))
        .parent()
        .expect("bin dir")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        p.display()
    );
    p
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run krt")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Runtimed {
    pub child: Child,
    pub addr: String,
}

impl Runtimed {
    /// runtimed on `data` listening on 127.0.0.1:`port`, ready once a trivial
    /// `krt run` succeeds.
    pub fn start(data: &Path, port: u16, extra: &[&str]) -> Runtimed {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("runtimed.log"))
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(bin("runtimed"))
            .arg("--data-dir")
            .arg(data)
            .args([
                "--listen",
                &addr,
                "--metrics-listen",
                "off",
                "--local-runtimes",
                "bash",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let out = run(krt().args(["--addr", &addr, "run", "--", "true"]));
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "runtimed not ready: {}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Runtimed { child, addr }
    }
}

impl Drop for Runtimed {
    /// SIGTERM, so runtimed stops the Runtime Servers it started (a SIGKILL
    /// would leave them running); SIGKILL only if it does not exit in time.
    fn drop(&mut self) {
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
