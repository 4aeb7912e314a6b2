//! The bare chain (`kruntimes-bench-chain`, see src/chain.rs) as the bash
//! figure runs it: a spawner and a proxy process, started next to each other
//! in a temporary directory and killed when dropped.

use crate::error::{BenchError, Result};
use crate::figures::blocking;
use kruntimes_proto::address::Address;
use kruntimes_proto::runtimed::v1::runtimed_client::RuntimedClient;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::Channel;

/// How long each process may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct BareChain {
    // Dropped in order: the proxy, the spawner, then their directory.
    proxy: Killed,
    spawner: Killed,
    _dir: tempfile::TempDir,
    addr: String,
}

/// A role's process, killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        crate::children::release(self.0.id());
    }
}

impl BareChain {
    /// Starts `exe spawner <socket>`, then `exe proxy <socket>`.
    pub async fn start(exe: &Path) -> Result<BareChain> {
        let dir = tempfile::tempdir().map_err(|e| BenchError::io("creating a temp dir", e))?;
        let socket = dir.path().join("spawner.sock");
        let (spawner, _) = launch(exe, "spawner", &socket).await?;
        let (proxy, addr) = launch(exe, "proxy", &socket).await?;
        Ok(BareChain {
            proxy,
            spawner,
            _dir: dir,
            addr,
        })
    }

    /// The proxy's and the spawner's pids, for their CPU time.
    pub fn pids(&self) -> Vec<(&'static str, Option<u32>)> {
        vec![
            ("proxy", Some(self.proxy.0.id())),
            ("spawner", Some(self.spawner.0.id())),
        ]
    }

    pub fn client(&self) -> Result<RuntimedClient<Channel>> {
        let channel = Address::parse(&self.addr)
            .map_err(BenchError::Unexpected)?
            .channel()
            .map_err(|e| BenchError::Unexpected(format!("channel to {}: {e}", self.addr)))?;
        Ok(RuntimedClient::new(channel))
    }
}

/// Starts one role and returns it with the address from its `ready` line.
async fn launch(exe: &Path, role: &'static str, socket: &Path) -> Result<(Killed, String)> {
    let mut child = Command::new(exe)
        .arg(role)
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| BenchError::io(format!("starting {} {role}", exe.display()), e))?;
    let stdout = child.stdout.take();
    crate::children::adopt(child.id());
    let child = Killed(child);
    let Some(stdout) = stdout else {
        return Err(BenchError::Unexpected(format!("{role}: no stdout")));
    };
    let ready = tokio::time::timeout(
        READY_TIMEOUT,
        blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .map_err(|e| BenchError::io("reading the ready line", e))?;
            Ok(line)
        }),
    )
    .await;
    let why = match ready {
        Ok(Ok(line)) => match line.trim().strip_prefix("ready ") {
            Some(addr) => return Ok((child, addr.to_string())),
            None => format!("said {line:?} instead of `ready <address>`"),
        },
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("not ready within {}s", READY_TIMEOUT.as_secs()),
    };
    Err(BenchError::Unexpected(format!("bare chain {role}: {why}")))
}
