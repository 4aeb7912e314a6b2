//! Figure 1: a trivial bash Run (`bash -c true`) round trip through runtimed,
//! Execute until Exited, vs the raw limit: spawn + wait of the same command
//! from an in-process loop.

use super::{BLOCK, Context, CpuMeter, blocking, progress, settle, turns};
use crate::client::{command, execute};
use crate::error::{BenchError, Result};
use crate::report::{Goal, Row, Value};
use crate::stats::{Samples, Summary};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIGURE: &str = "bash Run round trip (bash -c true)";
const BASELINE: &str = "spawn+wait in-process";
const GOAL: Goal = Goal::RatioAtMost(1.5);

fn spawn_wait() -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new("bash")
        .args(["-c", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| BenchError::io("spawning bash -c true", e))?;
    let d = start.elapsed();
    if !status.success() {
        return Err(BenchError::Unexpected(format!("bash -c true: {status}")));
    }
    Ok(d)
}

pub fn value(s: &Samples) -> Option<Value> {
    Summary::of(s).map(|x| Value::ms(x.p50_ms, x.p90_ms, x.n))
}

pub async fn measure(ctx: &Context) -> Result<Vec<Row>> {
    if let Err(why) = &ctx.bash_ready {
        return Ok(vec![Row::unavailable(
            "bash_run", FIGURE, BASELINE, GOAL, why,
        )]);
    }
    let counts = ctx.plan.bash;
    progress(format!(
        "{FIGURE}: {} warm-up + {} iterations, in alternating blocks of {BLOCK} with the baseline",
        counts.warmup, counts.iterations
    ));
    let mut client = ctx.daemon.client()?;
    let n = counts.iterations as usize;
    let (mut through, mut raw) = (Samples::with_capacity(n), Samples::with_capacity(n));
    let cpu = CpuMeter::start(&ctx.daemon, "bash");
    for turn in turns(counts.warmup + counts.iterations) {
        if turn.opens_block {
            settle().await;
        }
        let keep = turn.index >= counts.warmup;
        if turn.baseline {
            let r = blocking(spawn_wait).await?;
            if keep {
                raw.push(r);
            }
            continue;
        }
        let start = Instant::now();
        let out = execute(&mut client, command("bash", &["bash", "-c", "true"]), false).await?;
        let d = start.elapsed();
        out.require_success("bash -c true through runtimed")?;
        if keep {
            through.push(d);
        }
    }
    let (Some(m), b) = (value(&through), value(&raw)) else {
        return Err(BenchError::Unexpected("no samples".into()));
    };
    let note = cpu.note(counts.warmup + counts.iterations);
    Ok(vec![
        Row::measured("bash_run", FIGURE, m, BASELINE, b, GOAL).with_note(note),
    ])
}
