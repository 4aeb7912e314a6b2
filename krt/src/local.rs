//! `krt local`: a private runtimed for one Run. Starts runtimed (which starts
//! the built-in Runtime Server the Run needs) in a temporary directory, waits
//! until that runtime is ready, streams the Run, then stops everything.

use crate::cli::LocalArgs;
use crate::client::connect;
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);

fn runtimed_program(args: &LocalArgs) -> PathBuf {
    if let Some(p) = &args.runtimed {
        return p.clone();
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let sibling = dir.join("runtimed");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("runtimed")
}

fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub async fn local(args: LocalArgs) -> Result<u8> {
    let req = crate::run::request(&args.program, false)?;
    let dir = tempfile::Builder::new().prefix("krt-local-").tempdir()?;
    let socket = dir.path().join("runtimed.sock");
    let log_path = dir.path().join("runtimed.log");
    let program = runtimed_program(&args);
    let stderr = if args.verbose {
        Stdio::inherit()
    } else {
        Stdio::from(std::fs::File::create(&log_path)?)
    };
    let mut child = tokio::process::Command::new(&program)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .arg("--unix-socket")
        .arg(&socket)
        .args(["--local-runtimes", &req.runtime])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        // Own process group: Ctrl-C reaches krt only, which cancels the Run
        // cleanly instead of killing runtimed under it.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Error::Local(format!(
                "cannot start runtimed ({}): {e}",
                program.display()
            ))
        })?;

    let addr = format!("unix:{}", socket.display());
    let started = Instant::now();
    let service = format!("runtime/{}", req.runtime);
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(Error::Local(format!(
                "runtimed exited ({status}) before runtime {:?} was ready:\n{}",
                req.runtime,
                log_tail(&log_path)
            )));
        }
        if socket.exists() {
            let channel = kruntimes_proto::address::Address::parse(&addr)
                .map_err(Error::Local)?
                .channel()
                .map_err(|source| Error::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            let resp = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: service.clone(),
                })
                .await;
            if let Ok(r) = resp
                && r.into_inner().status == ServingStatus::Serving as i32
            {
                break;
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            return Err(Error::Local(format!(
                "runtime {:?} was not ready after {}s:\n{}",
                req.runtime,
                READY_TIMEOUT.as_secs(),
                log_tail(&log_path)
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut client = connect(&addr).await?;
    let result = crate::run::execute_streaming(&mut client, req).await;

    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    if result.is_err() && !args.verbose {
        eprintln!("krt: runtimed log:\n{}", log_tail(&log_path));
    }
    result
}
