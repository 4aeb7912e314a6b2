//! The five figures. Each measures its subject and its baseline in the same
//! run (interleaved where both are cheap, so both see the same machine load)
//! and returns report rows; a figure that cannot run returns rows that say why.

pub mod bash;
pub mod chatty;
pub mod jupyter;
pub mod memory;
pub mod python;
pub mod streaming;

use crate::cli::{Figure, Plan};
use crate::daemon::Daemon;
use crate::error::{BenchError, Result};
use crate::report::{Goal, Row};
use std::path::PathBuf;
use std::time::Duration;

pub struct Context {
    pub daemon: Daemon,
    pub plan: Plan,
    /// The resolved interpreter (sys.executable), or why there is none.
    pub python: std::result::Result<PathBuf, String>,
    /// Whether runtimed's bash runtime is ready, or why not.
    pub bash_ready: std::result::Result<(), String>,
    /// Whether runtimed's python runtime is ready, or why not.
    pub python_ready: std::result::Result<(), String>,
}

/// Runs one figure; failures become rows that say what went wrong.
pub async fn run(ctx: &Context, figure: Figure) -> Vec<Row> {
    let result = match figure {
        Figure::Bash => bash::measure(ctx).await,
        Figure::Python => python::measure(ctx).await,
        Figure::Chatty => chatty::measure(ctx).await,
        Figure::Stream => streaming::measure(ctx).await,
        Figure::Memory => memory::measure(ctx).await,
    };
    result.unwrap_or_else(|e| {
        let name = format!("{figure:?}").to_lowercase();
        vec![Row::unavailable(
            "error",
            format!("{name} figure"),
            "-",
            Goal::None,
            format!("the {name} figure failed: {e}"),
        )]
    })
}

/// Runs a blocking baseline measurement off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BenchError::Unexpected(format!("baseline task failed: {e}")))?
}

pub fn progress(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// CPU time runtimed and its bash Runtime Server spend over a figure's loop,
/// so a ratio can be attributed (CPU time is also far less sensitive to a
/// busy machine than wall-clock time).
pub struct CpuMeter {
    runtimed: u32,
    bash: Option<u32>,
    at_start: (Option<f64>, Option<f64>),
}

impl CpuMeter {
    pub fn start(d: &Daemon) -> CpuMeter {
        let runtimed = d.pid();
        let bash = d.bash_server_pid();
        CpuMeter {
            runtimed,
            bash,
            at_start: (cpu_ms(Some(runtimed)), cpu_ms(bash)),
        }
    }

    /// "CPU per Run: runtimed X ms, bash server Y ms" over `runs` Runs.
    pub fn note(&self, runs: u32) -> String {
        let per = |start: Option<f64>, pid: Option<u32>| match (start, cpu_ms(pid)) {
            (Some(a), Some(b)) if runs > 0 => format!("{:.2} ms", (b - a) / f64::from(runs)),
            _ => "unknown".into(),
        };
        format!(
            "CPU per Run (avg of {runs}, 10 ms ticks): runtimed {}, bash server {}",
            per(self.at_start.0, Some(self.runtimed)),
            per(self.at_start.1, self.bash)
        )
    }

    /// Only runtimed's share (for Runs that do not use the bash server).
    pub fn runtimed_note(&self, runs: u32) -> String {
        match (self.at_start.0, cpu_ms(Some(self.runtimed))) {
            (Some(a), Some(b)) if runs > 0 => format!(
                "runtimed CPU per Run (avg of {runs}, 10 ms ticks): {:.2} ms",
                (b - a) / f64::from(runs)
            ),
            _ => "runtimed CPU per Run: unknown".into(),
        }
    }
}

fn cpu_ms(pid: Option<u32>) -> Option<f64> {
    crate::procfs::cpu_ms(pid?)
}

/// How long to let things settle before sampling memory.
pub const SETTLE: Duration = Duration::from_millis(1000);
