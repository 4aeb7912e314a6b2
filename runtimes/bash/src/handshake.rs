//! The readiness self-check behind Handshake: bash really runs (spawned the
//! same way executions are, through the reaper) and the workspace is writable.
use std::ffi::OsString;
use std::time::Duration;

use kruntimes_proto::runtime::v1::{HandshakeResponse, ProtocolVersion};

use crate::executions::Executions;
use crate::reaper::ProcessExit;
use crate::spawn::{Env, Launch, spawn};

/// How long the probe bash may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn handshake(execs: &Executions) -> HandshakeResponse {
    let check = self_check(execs).await;
    let (ready, message) = match check {
        Ok(()) => (
            true,
            format!(
                "bash {} runs; workspace {} is writable",
                execs.bash().display(),
                execs.workspace().root().display()
            ),
        ),
        Err(m) => (false, m),
    };
    HandshakeResponse {
        protocol_version: ProtocolVersion::V1 as i32,
        runtime: "bash".into(),
        server_version: format!("kruntimes-bash-runtime {}", env!("CARGO_PKG_VERSION")),
        ready,
        message,
        workspace_root: execs.workspace().root().display().to_string(),
        max_executions: u32::try_from(execs.max_running()).unwrap_or(u32::MAX),
        handoff_socket: execs
            .handoff_socket()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    }
}

async fn self_check(execs: &Executions) -> Result<(), String> {
    execs.workspace().check_writable()?;
    let launch = Launch {
        program: execs.bash().to_path_buf(),
        arg0: "bash".into(),
        args: vec![OsString::from("-c"), OsString::from("exit 7")],
        env: Env::default(),
        cwd: execs.workspace().root().to_path_buf(),
    };
    let spawned = spawn(execs.reaper(), &launch).map_err(|e| format!("bash self-check: {e}"))?;
    drop((spawned.stdout, spawned.stderr, spawned.writers));
    match tokio::time::timeout(PROBE_TIMEOUT, spawned.exit).await {
        // A distinctive code proves bash ran the command, not just started.
        Ok(Ok(ProcessExit::Code(7))) => Ok(()),
        Ok(Ok(other)) => Err(format!(
            "bash self-check: `{} -c 'exit 7'` ended with {other:?}",
            execs.bash().display()
        )),
        Ok(Err(_)) => Err("bash self-check: exit status lost".into()),
        Err(_) => {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(spawned.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(format!("bash self-check: no exit within {PROBE_TIMEOUT:?}"))
        }
    }
}
