//! Figure 3: a chatty child (python printing one million short lines
//! unbuffered, one write(2) per line) through runtimed with the client
//! consuming all output, vs the same child writing to /dev/null. Also counts
//! the Output messages the client got: runtimed must coalesce the writes.

use super::bash::value;
use super::{Context, CpuMeter, blocking, progress};
use crate::client::{command, execute};
use crate::error::{BenchError, Result};
use crate::report::{Goal, Row};
use crate::stats::Samples;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIGURE: &str = "chatty child (1M lines, python -u) through runtimed";
const BASELINE: &str = "same child > /dev/null";
const GOAL: Goal = Goal::RatioAtMost(2.0);
const LINES: u32 = 1_000_000;
const PROGRAM: &str = "for i in range(1000000): print(i)";

/// Bytes the child prints: every number and its newline.
fn expected_bytes() -> u64 {
    (0..LINES).map(|i| i.to_string().len() as u64 + 1).sum()
}

fn to_dev_null(python: PathBuf) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new(&python)
        .args(["-u", "-c", PROGRAM])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| BenchError::io(format!("spawning {}", python.display()), e))?;
    let d = start.elapsed();
    if !status.success() {
        return Err(BenchError::Unexpected(format!(
            "chatty child > /dev/null: {status}"
        )));
    }
    Ok(d)
}

pub async fn measure(ctx: &Context) -> Result<Vec<Row>> {
    let python = match (&ctx.python, &ctx.bash_ready) {
        (Ok(p), Ok(())) => p.clone(),
        (Err(why), _) | (_, Err(why)) => {
            return Ok(vec![Row::unavailable(
                "chatty", FIGURE, BASELINE, GOAL, why,
            )]);
        }
    };
    let counts = ctx.plan.chatty;
    progress(format!(
        "{FIGURE}: {} warm-up + {} iterations, interleaved with the baseline",
        counts.warmup, counts.iterations
    ));
    let py = python.to_string_lossy().into_owned();
    let want = expected_bytes();
    let mut client = ctx.daemon.client()?;
    let n = counts.iterations as usize;
    let (mut through, mut raw) = (Samples::with_capacity(n), Samples::with_capacity(n));
    let mut messages = Vec::with_capacity(n);
    let cpu = CpuMeter::start(&ctx.daemon, "bash");
    for i in 0..counts.warmup + counts.iterations {
        let p = python.clone();
        let r = blocking(move || to_dev_null(p)).await?;
        let start = Instant::now();
        let out = execute(
            &mut client,
            command("bash", &[&py, "-u", "-c", PROGRAM]),
            false,
        )
        .await?;
        let d = start.elapsed();
        out.require_success("chatty child through runtimed")?;
        if out.output_bytes != want {
            return Err(BenchError::Unexpected(format!(
                "chatty child: the client received {} bytes, expected {want}",
                out.output_bytes
            )));
        }
        if i >= counts.warmup {
            raw.push(r);
            through.push(d);
            messages.push(out.output_messages);
        }
    }
    let (Some(m), b) = (value(&through), value(&raw)) else {
        return Err(BenchError::Unexpected("no samples".into()));
    };
    messages.sort_unstable();
    let median = messages[messages.len() / 2];
    let note = format!(
        "Output messages received per Run: {median} (median; min {}, max {}) for {LINES} lines, \
         {want} bytes verified, {:.0} bytes/message",
        messages[0],
        messages[messages.len() - 1],
        want as f64 / median.max(1) as f64
    );
    Ok(vec![
        Row::measured("chatty", FIGURE, m, BASELINE, b, GOAL)
            .with_note(note)
            .with_note(cpu.note(counts.warmup + counts.iterations)),
    ])
}

#[cfg(test)]
mod tests {
    #[test]
    fn chatty_output_size() {
        // 10 one-digit, 90 two-digit, ... 900000 six-digit numbers, each + "\n".
        assert_eq!(super::expected_bytes(), 6_888_890);
    }
}
