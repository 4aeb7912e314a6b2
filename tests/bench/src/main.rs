//! `kruntimes-bench`: measures runtimed (release build, local mode, gRPC over
//! 127.0.0.1) against baselines taken in the same run and prints a table of
//! figure, measured, baseline, ratio, goal and pass/MISS. A missed goal is
//! reported, not an error: the exit code is 0 unless the bench cannot run.

mod bare_chain;
mod children;
mod cli;
mod client;
mod daemon;
mod error;
mod figures;
mod interpreter;
mod machine;
mod procfs;
mod report;
mod stats;

use clap::Parser;
use error::{BenchError, Result};
use figures::{Context, progress};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// How long a local runtime may take to pass its handshake.
const RUNTIME_READY_TIMEOUT: Duration = Duration::from_secs(90);

pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| BenchError::io("locating this executable", e))?;
    Ok(exe.parent().unwrap_or(Path::new(".")).join(name))
}

fn require(path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(BenchError::MissingBinary {
            path: path.to_path_buf(),
            hint: "cargo build --release -p runtimed -p kruntimes-bash-runtime -p kruntimes-bench",
        })
    }
}

async fn bench(args: cli::Args) -> Result<report::Report> {
    let plan = args.plan();
    let loadavg_start = procfs::loadavg();
    let runtimed = match &args.runtimed {
        Some(p) => p.clone(),
        None => sibling("runtimed")?,
    };
    require(&runtimed)?;
    require(&runtimed.with_file_name("kruntimes-bash-runtime"))?;

    let asked = args
        .python
        .clone()
        .unwrap_or_else(|| PathBuf::from("python3"));
    let python = interpreter::resolve(&asked);
    // The python runtime needs the kruntimes_runtime package in that interpreter.
    let runtime_python = python
        .as_ref()
        .map_err(|e| e.clone())
        .and_then(|p| interpreter::has_module(p, "kruntimes_runtime").map(|()| p.clone()));
    match &python {
        Ok(p) => progress(format!("python interpreter: {}", p.display())),
        Err(e) => progress(format!("no python interpreter: {e}")),
    }

    let max_runs = plan.active_runs.saturating_add(16);
    let daemon = daemon::Daemon::start(&daemon::Options {
        runtimed: &runtimed,
        data_parent: args.data_parent.as_deref(),
        python: runtime_python.as_ref().ok().map(|p| p.as_path()),
        max_runs,
    })
    .await?;
    progress(format!(
        "runtimed {} (pid {}) on {}",
        runtimed.display(),
        daemon.pid(),
        daemon.addr
    ));
    let bash_ready = daemon.wait_runtime("bash", RUNTIME_READY_TIMEOUT).await;
    let python_ready = match &runtime_python {
        Ok(_) => daemon.wait_runtime("python", RUNTIME_READY_TIMEOUT).await,
        Err(why) => Err(format!("python runtime not started: {why}")),
    };
    for (name, r) in [("bash", &bash_ready), ("python", &python_ready)] {
        match r {
            Ok(()) => progress(format!("runtime {name} ready")),
            Err(e) => progress(format!("runtime {name} unavailable: {e}")),
        }
    }

    let ctx = Context {
        daemon,
        plan,
        python,
        bash_ready,
        python_ready,
    };
    let mut rows = Vec::new();
    for figure in ctx.plan.figures.clone() {
        rows.extend(figures::run(&ctx, figure).await);
    }
    let python = ctx.python.as_ref().ok().map(|p| p.display().to_string());
    Ok(report::Report::new(
        machine::describe(loadavg_start, ctx.daemon.scratch()),
        runtimed.display().to_string(),
        python,
        rows,
    ))
}

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let json = args.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kruntimes-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    children::stop_on_signal(&rt);
    let outcome = rt.block_on(bench(args));
    // No report of a run cut short by Ctrl-C: the watcher exits with 130.
    children::exit_if_interrupted();
    match outcome {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kruntimes-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
