//! Shutdown: SIGTERM stops the server cleanly and takes running executions
//! with it.
use std::time::Duration;

use crate::client::{AttachReader, sh, start, unique_id};
use crate::{Failure, ServerUnderTest, ensure, procfs};

use super::cancel::GONE_LIMIT;

/// With an execution running (a leader and a grandchild), SIGTERM to the
/// server makes it exit with status 0 within 60 s, and both processes are
/// gone. Only for servers the suite launched.
pub async fn stops_on_sigterm(s: &mut ServerUnderTest) -> Result<(), Failure> {
    if !s.is_launched() {
        eprintln!("shutdown check skipped: the server was not launched by the suite");
        return Ok(());
    }
    let mut c = s.client();
    let id = unique_id("shutdown");
    let started = start(&mut c, sh(&id, "sleep 1000 & echo $!; wait")).await?;
    let mut r = AttachReader::open(&mut c, &id, 0, 0).await?;
    r.read_stdout_until(|o| o.contains(&b'\n')).await?;
    let child = super::first_line_pid(&id, &r.stdout)?;
    let procs: Vec<(i32, u64)> = [started.pid, child]
        .into_iter()
        .filter_map(|p| procfs::stat(p).map(|st| (p, st.starttime)))
        .collect();
    ensure!(
        procs.len() == 2,
        "{id}: leader and child should both be running"
    );

    let status = s.terminate(Duration::from_secs(60)).await?;
    ensure!(
        status.success(),
        "server exited with {status} after SIGTERM; log:\n{}",
        s.log()
    );
    for (pid, starttime) in procs {
        ensure!(
            procfs::wait_gone(pid, starttime, GONE_LIMIT).await,
            "process {pid} of a running execution outlived the server"
        );
    }
    Ok(())
}
