//! Reaping: the server leaves no zombie children, orphaned grandchildren
//! included.
use std::time::Duration;

use crate::client::{Ended, ended, run, sh, unique_id};
use crate::server::lingering_zombies;
use crate::{Failure, ServerUnderTest, ensure};

/// Fails if the server keeps zombie children for more than a few seconds.
/// Skipped (with a note) when the server's pid is unknown.
pub async fn assert_no_zombies(s: &ServerUnderTest) -> Result<(), Failure> {
    let Some(pid) = s.pid() else {
        eprintln!("zombie scan skipped: server pid unknown (set KRUNTIMES_CONFORMANCE_PID)");
        return Ok(());
    };
    let z = lingering_zombies(pid, Duration::from_secs(5)).await;
    ensure!(z.is_empty(), "server {pid} leaves zombie children: {z:?}");
    Ok(())
}

/// Ten executions leave orphans behind: background subshells, a
/// double-forked child, and (where `setsid` exists) a process that left the
/// group and exits later on its own, reparented to the server. Afterwards no
/// Z-state child of the server remains.
pub async fn no_zombies(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let script = "(sleep 0.2 &); (sh -c 'sleep 0.3 &' &); \
        if command -v setsid >/dev/null 2>&1; then setsid sh -c 'sleep 0.5' </dev/null >/dev/null 2>&1 & fi; \
        sleep 0.05 & echo x";
    for _ in 0..10 {
        let id = unique_id("orphans");
        let out = run(&mut c, sh(&id, script)).await?;
        ensure!(ended(&out.exit)? == Ended::Code(0), "{id}: {:?}", out.exit);
    }
    // Let the detached ones finish on their own, then look.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_no_zombies(s).await
}
