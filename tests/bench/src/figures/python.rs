//! Figure 2: a trivial python Run (`python3 -c 'print(1)'` on the python
//! runtime: the warm path, a fork of an already started interpreter) round
//! trip through runtimed, vs a cold `python3 -c 'print(1)'` of the same
//! resolved interpreter, and vs a Jupyter kernel executing `print(1)`.

use super::bash::value;
use super::{BLOCK, Context, CpuMeter, blocking, jupyter, progress, settle, turns};
use crate::client::{Client, command, execute};
use crate::error::{BenchError, Result};
use crate::report::{Goal, Row, Value};
use crate::stats::Samples;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIGURE_COLD: &str = "python Run round trip (print(1)) vs cold start";
const FIGURE_JUPYTER: &str = "python Run round trip (print(1)) vs Jupyter";
const BASELINE_COLD: &str = "cold python3 -c 'print(1)'";
const BASELINE_JUPYTER: &str = "Jupyter kernel print(1) until idle";
const GOAL_COLD: Goal = Goal::RatioAtMost(0.25);
const GOAL_JUPYTER: Goal = Goal::RatioBelow(1.0);

fn cold(python: PathBuf) -> Result<Duration> {
    let start = Instant::now();
    let out = Command::new(&python)
        .args(["-c", "print(1)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| BenchError::io(format!("spawning {}", python.display()), e))?;
    let d = start.elapsed();
    if !out.status.success() || out.stdout != b"1\n" {
        return Err(BenchError::Unexpected(format!(
            "{} -c 'print(1)': {} printing {:?}",
            python.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    Ok(d)
}

fn python_run() -> kruntimes_proto::runtimed::v1::ExecuteRequest {
    command("python", &["python3", "-c", "print(1)"])
}

/// Whether a Run on the python runtime is a fork of the warm interpreter: its
/// sys.modules then already holds the runtime's own package.
async fn warm_path_note(client: &mut Client) -> Result<String> {
    let probe = command(
        "python",
        &[
            "python3",
            "-c",
            "import sys; print('kruntimes_runtime' in sys.modules)",
        ],
    );
    let out = execute(client, probe, true).await?;
    out.require_success("warm-path probe")?;
    Ok(match out.stdout.as_slice() {
        b"True\n" => {
            "warm path confirmed (the Run's sys.modules holds the zygote's imports)".into()
        }
        other => format!(
            "NOT the warm path: the probe printed {:?}",
            String::from_utf8_lossy(other)
        ),
    })
}

async fn through_runtimed(client: &mut Client) -> Result<Duration> {
    let start = Instant::now();
    let out = execute(client, python_run(), true).await?;
    let d = start.elapsed();
    out.require_success("python3 -c 'print(1)' through runtimed")?;
    if out.stdout != b"1\n" {
        return Err(BenchError::Unexpected(format!(
            "python Run printed {:?}, expected \"1\\n\"",
            String::from_utf8_lossy(&out.stdout)
        )));
    }
    // As a client done with a Run does (and the data-plane figures): its log
    // is removed, so runtimed's CPU per Run includes a steady state's churn.
    if let Some(run) = out.run {
        let _ = client
            .forget(kruntimes_proto::runtimed::v1::ForgetRequest { run_id: run.run_id })
            .await;
    }
    Ok(d)
}

pub async fn measure(ctx: &Context) -> Result<Vec<Row>> {
    let python = match &ctx.python {
        Ok(p) => p.clone(),
        Err(why) => {
            return Ok(vec![
                Row::unavailable(
                    "python_run_vs_cold",
                    FIGURE_COLD,
                    BASELINE_COLD,
                    GOAL_COLD,
                    why,
                ),
                Row::unavailable(
                    "python_run_vs_jupyter",
                    FIGURE_JUPYTER,
                    BASELINE_JUPYTER,
                    GOAL_JUPYTER,
                    why,
                ),
            ]);
        }
    };
    let counts = ctx.plan.python;
    let mut client = ctx.daemon.client()?;
    let ready = ctx.python_ready.is_ok();
    let warm_note = if ready {
        Some(warm_path_note(&mut client).await?)
    } else {
        None
    };
    progress(format!(
        "{FIGURE_COLD}: {} warm-up + {} iterations with {}, in alternating blocks of {BLOCK} with the cold start",
        counts.warmup,
        counts.iterations,
        python.display()
    ));
    let n = counts.iterations as usize;
    let (mut warm, mut cold_s) = (Samples::with_capacity(n), Samples::with_capacity(n));
    let cpu = CpuMeter::start(&ctx.daemon, "python");
    for turn in turns(2, counts.warmup + counts.iterations) {
        if !turn.baseline() && !ready {
            continue;
        }
        if turn.opens_block {
            settle().await;
        }
        let keep = turn.index >= counts.warmup;
        if turn.baseline() {
            let p = python.clone();
            let c = blocking(move || cold(p)).await?;
            if keep {
                cold_s.push(c);
            }
        } else {
            let w = through_runtimed(&mut client).await?;
            if keep {
                warm.push(w);
            }
        }
    }
    let runtimed_cpu = cpu.note(counts.warmup + counts.iterations);
    progress(format!(
        "{BASELINE_JUPYTER}: {} warm-up + {} iterations",
        counts.warmup, counts.iterations
    ));
    let kernel = jupyter::measure(&python, counts, ctx.daemon.scratch()).await;

    let interp = format!("interpreter {}", python.display());
    let cold_v = value(&cold_s);
    let jupyter_v = kernel
        .as_ref()
        .ok()
        .map(|(s, _)| Value::ms(s.p50_ms, s.p90_ms, s.n));
    let rows = match (&ctx.python_ready, value(&warm)) {
        (Ok(()), Some(m)) => {
            let note = warm_note.unwrap_or_default();
            let vs_cold = Row::measured(
                "python_run_vs_cold",
                FIGURE_COLD,
                m,
                BASELINE_COLD,
                cold_v,
                GOAL_COLD,
            )
            .with_note(note)
            .with_note(runtimed_cpu)
            .with_note(&interp);
            let vs_jupyter = match &kernel {
                Ok((_, versions)) => Row::measured(
                    "python_run_vs_jupyter",
                    FIGURE_JUPYTER,
                    m,
                    BASELINE_JUPYTER,
                    jupyter_v,
                    GOAL_JUPYTER,
                )
                .with_note(versions),
                Err(why) => Row::unavailable(
                    "python_run_vs_jupyter",
                    FIGURE_JUPYTER,
                    BASELINE_JUPYTER,
                    GOAL_JUPYTER,
                    format!("Jupyter kernel: {why}"),
                ),
            };
            vec![vs_cold, vs_jupyter]
        }
        (Err(why), _) => {
            // Still show the baselines that could be measured.
            let mut a = Row::unavailable(
                "python_run_vs_cold",
                FIGURE_COLD,
                BASELINE_COLD,
                GOAL_COLD,
                why,
            );
            a.baseline = cold_v;
            let mut b = Row::unavailable(
                "python_run_vs_jupyter",
                FIGURE_JUPYTER,
                BASELINE_JUPYTER,
                GOAL_JUPYTER,
                why,
            );
            b.baseline = jupyter_v;
            if let Err(k) = &kernel {
                b = b.with_note(format!("Jupyter kernel: {k}"));
            }
            vec![a, b]
        }
        (Ok(()), None) => return Err(BenchError::Unexpected("no python samples".into())),
    };
    Ok(rows)
}
