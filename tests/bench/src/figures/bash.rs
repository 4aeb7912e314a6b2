//! Figure 1: a trivial bash Run (`bash -c true`) round trip through runtimed,
//! Execute until Exited, vs the raw limit: spawn + wait of the same command
//! from an in-process loop. In the same blocks, the bare chain (src/chain.rs:
//! the same three processes and two gRPC hops with no work in them) gives
//! the floor of the architecture on this machine, so a reader can tell
//! runtimed's own cost from the hops'.

use super::{BLOCK, Context, CpuMeter, blocking, progress, settle, turns};
use crate::bare_chain::BareChain;
use crate::client::{Client, command, execute};
use crate::error::{BenchError, Result};
use crate::report::{Goal, Row, Value};
use crate::stats::{Samples, Summary};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIGURE: &str = "bash Run round trip (bash -c true)";
const BASELINE: &str = "spawn+wait in-process";
const GOAL: Goal = Goal::RatioAtMost(1.5);
const FLOOR: &str = "bare chain floor: client -> proxy -> spawner (bash -c true)";

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
    // Without the chain the figure still runs; its row says why not.
    let chain = match crate::sibling("kruntimes-bench-chain") {
        Ok(exe) if exe.is_file() => BareChain::start(&exe).await.map_err(|e| e.to_string()),
        Ok(exe) => Err(format!(
            "{} is missing (cargo build --release -p kruntimes-bench)",
            exe.display()
        )),
        Err(e) => Err(e.to_string()),
    };
    let mut chain_client = match &chain {
        Ok(c) => Some(c.client()?),
        Err(_) => None,
    };
    let sides = if chain_client.is_some() { 3 } else { 2 };
    progress(format!(
        "{FIGURE}: {} warm-up + {} iterations, in alternating blocks of {BLOCK} with the baseline{}",
        counts.warmup,
        counts.iterations,
        if sides == 3 {
            " and the bare chain"
        } else {
            ""
        }
    ));
    let mut client = ctx.daemon.client()?;
    let n = counts.iterations as usize;
    let mut samples = [(); 3].map(|()| Samples::with_capacity(n));
    let cpu = CpuMeter::start(&ctx.daemon, "bash");
    let chain_cpu = chain.as_ref().ok().map(|c| CpuMeter::of(c.pids()));
    for turn in turns(sides, counts.warmup + counts.iterations) {
        if turn.opens_block {
            settle().await;
        }
        let d = match (turn.side, chain_client.as_mut()) {
            (0, _) => blocking(spawn_wait).await?,
            (1, _) => round_trip(&mut client, "bash -c true through runtimed").await?,
            (_, Some(c)) => round_trip(c, "bash -c true through the bare chain").await?,
            (_, None) => continue,
        };
        if turn.index >= counts.warmup {
            samples[turn.side].push(d);
        }
    }
    let [raw, through, bare] = samples;
    let (Some(m), b) = (value(&through), value(&raw)) else {
        return Err(BenchError::Unexpected("no samples".into()));
    };
    let runs = counts.warmup + counts.iterations;
    let mut note = cpu.note(runs);
    let floor = match (chain, value(&bare)) {
        (Ok(_), Some(f)) => {
            let chain_note = chain_cpu.map(|c| c.note(runs)).unwrap_or_default();
            note.push_str(&format!(
                "; through runtimed vs the bare chain (row below): {:.2}x",
                m.p50 / f.p50
            ));
            Row::measured("bash_floor", FLOOR, f, BASELINE, b, Goal::None).with_note(format!(
                "the same three processes and two gRPC hops with nothing else in them \
                 (tests/bench/src/chain.rs): what the architecture alone costs here; {chain_note}"
            ))
        }
        (Err(why), _) => Row::unavailable("bash_floor", FLOOR, BASELINE, Goal::None, why),
        (Ok(_), None) => Row::unavailable("bash_floor", FLOOR, BASELINE, Goal::None, "no samples"),
    };
    Ok(vec![
        Row::measured("bash_run", FIGURE, m, BASELINE, b, GOAL).with_note(note),
        floor,
    ])
}

/// One `bash -c true` Execute until its Exited event.
async fn round_trip(client: &mut Client, what: &str) -> Result<Duration> {
    let start = Instant::now();
    let out = execute(client, command("bash", &["bash", "-c", "true"]), false).await?;
    let d = start.elapsed();
    out.require_success(what)?;
    Ok(d)
}
