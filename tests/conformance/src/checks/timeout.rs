//! Timeout: on expiry the server cancels like Cancel does and reports
//! timed_out.
use crate::client::{AttachReader, Ended, ended, run, sh, start, unique_id};
use crate::{Failure, ServerUnderTest, ensure, procfs};

use super::cancel::GONE_LIMIT;

/// - `sleep 1000` with a 300 ms timeout ends by SIGTERM (15), timed_out set,
///   cancelled not set;
/// - a leader and grandchild ignoring SIGTERM end by SIGKILL (9) after the
///   grace, and the grandchild is gone;
/// - a quick command with a long timeout is not affected.
pub async fn timeout(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();

    let id = unique_id("timeout");
    let mut req = sh(&id, "exec sleep 1000");
    req.timeout_ms = 300;
    req.grace_period_ms = 2000;
    let out = run(&mut c, req).await?;
    ensure!(
        ended(&out.exit)? == Ended::Signal(15),
        "{id}: timed out sleep reported {:?}, want signal 15",
        out.exit.status
    );
    ensure!(
        out.exit.timed_out && !out.exit.cancelled,
        "{id}: Exit must say timed_out (only): {:?}",
        out.exit
    );

    let id = unique_id("timeout-kill");
    let mut req = sh(
        &id,
        "trap '' TERM; (trap '' TERM; exec sleep 1000) & echo $!; wait",
    );
    req.timeout_ms = 300;
    req.grace_period_ms = 300;
    start(&mut c, req).await?;
    let mut r = AttachReader::open(&mut c, &id, 0, 0).await?;
    r.read_stdout_until(|o| o.contains(&b'\n')).await?;
    let pid = super::first_line_pid(&id, &r.stdout)?;
    let starttime = procfs::stat(pid).map(|s| s.starttime).unwrap_or(0);
    let out = r.finish().await?;
    ensure!(
        ended(&out.exit)? == Ended::Signal(9),
        "{id}: TERM-ignoring leader reported {:?}, want signal 9 after the grace",
        out.exit.status
    );
    ensure!(
        out.exit.timed_out && !out.exit.cancelled,
        "{id}: Exit must say timed_out: {:?}",
        out.exit
    );
    ensure!(
        procfs::wait_gone(pid, starttime, GONE_LIMIT).await,
        "{id}: grandchild {pid} survived the timeout"
    );

    let id = unique_id("timeout-none");
    let mut req = sh(&id, "echo quick");
    req.timeout_ms = 60_000;
    let out = run(&mut c, req).await?;
    ensure!(
        ended(&out.exit)? == Ended::Code(0) && !out.exit.timed_out && out.stdout == b"quick\n",
        "{id}: a quick command with a long timeout: {:?}",
        out.exit
    );
    Ok(())
}
