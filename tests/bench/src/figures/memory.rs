//! Figure 5: resident memory (VmRSS) of the runtimed process alone, and
//! separately of the bash Runtime Server it supervises: idle right after
//! start-up (this figure runs first), then with N detached `sleep 30` Runs
//! active, which are cancelled afterwards.

use super::{Context, SETTLE, progress};
use crate::client::{command, execute_detached};
use crate::error::{BenchError, Result};
use crate::procfs::rss_mib;
use crate::report::{Goal, Row, Unit, Value};
use kruntimes_proto::runtimed::v1 as pb;
use std::time::Duration;

const IDLE_GOAL_MIB: f64 = 15.0;
/// Samples taken over the settle period; the largest is reported.
const SAMPLES: u32 = 5;

/// The largest VmRSS of `pid` over a short window, or why it cannot be read.
async fn sample(pid: Option<u32>, what: &str) -> Result<f64> {
    let pid =
        pid.ok_or_else(|| BenchError::Unexpected(format!("cannot find the {what} process")))?;
    let mut max: Option<f64> = None;
    for _ in 0..SAMPLES {
        let v = rss_mib(pid)
            .ok_or_else(|| BenchError::Unexpected(format!("{what} (pid {pid}) is gone")))?;
        max = Some(max.map_or(v, |m: f64| m.max(v)));
        tokio::time::sleep(SETTLE / SAMPLES).await;
    }
    max.ok_or_else(|| BenchError::Unexpected("no memory samples".into()))
}

fn mib(v: f64) -> Value {
    Value::single(v, Unit::MiB)
}

pub async fn measure(ctx: &Context) -> Result<Vec<Row>> {
    let active = ctx.plan.active_runs;
    if let Err(why) = &ctx.bash_ready {
        return Ok(vec![Row::unavailable(
            "rss_idle",
            "runtimed RSS idle after start-up",
            "-",
            Goal::ValueAtMost(IDLE_GOAL_MIB),
            why,
        )]);
    }
    progress(format!(
        "memory: idle, then with {active} detached `sleep 30` Runs"
    ));
    let runtimed = Some(ctx.daemon.pid());
    let bash = ctx.daemon.bash_server_pid();
    tokio::time::sleep(SETTLE).await;
    let idle = sample(runtimed, "runtimed").await?;
    let bash_idle = sample(bash, "bash Runtime Server").await?;

    let mut client = ctx.daemon.client()?;
    let mut ids = Vec::with_capacity(active as usize);
    for _ in 0..active {
        ids.push(execute_detached(&mut client, command("bash", &["sleep", "30"])).await?);
    }
    let running = client
        .list(pb::ListRequest {})
        .await
        .map_err(|s| BenchError::grpc("List", s))?
        .into_inner()
        .runs
        .iter()
        .filter(|r| ids.contains(&r.run_id) && r.phase == pb::Phase::Running as i32)
        .count();
    if running != ids.len() {
        return Err(BenchError::Unexpected(format!(
            "only {running} of {} sleep Runs are Running",
            ids.len()
        )));
    }
    let busy = sample(runtimed, "runtimed").await?;
    let bash_busy = sample(bash, "bash Runtime Server").await?;

    for id in &ids {
        client
            .cancel(pb::CancelRequest {
                run_id: id.clone(),
                grace_period_ms: 1000,
            })
            .await
            .map_err(|s| BenchError::grpc("Cancel", s))?;
    }
    for id in &ids {
        let run = client
            .wait(pb::WaitRequest {
                run_id: id.clone(),
                timeout_ms: 30_000,
            })
            .await
            .map_err(|s| BenchError::grpc("Wait", s))?
            .into_inner();
        if run.phase != pb::Phase::Cancelled as i32 {
            return Err(BenchError::Unexpected(format!(
                "sleep Run {id} ended in phase {} after Cancel: {}",
                run.phase, run.message
            )));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = sample(runtimed, "runtimed").await?;

    let active_name = format!("runtimed RSS with {active} Runs active");
    Ok(vec![
        Row::measured(
            "rss_idle",
            "runtimed RSS idle after start-up",
            mib(idle),
            "-",
            None,
            Goal::ValueAtMost(IDLE_GOAL_MIB),
        )
        .with_note("VmRSS of the runtimed process only, max of 5 samples over 1 s"),
        Row::measured("rss_active", active_name, mib(busy), "-", None, Goal::None).with_note(format!(
            "{active} detached `sleep 30` Runs, all Running; after cancelling them: {after:.1} MiB"
        )),
        Row::measured("bash_server_rss_idle", "bash server RSS idle", mib(bash_idle), "-", None, Goal::None),
        Row::measured(
            "bash_server_rss_active",
            format!("bash server RSS with {active} Runs active"),
            mib(bash_busy),
            "-",
            None,
            Goal::None,
        ),
    ])
}
