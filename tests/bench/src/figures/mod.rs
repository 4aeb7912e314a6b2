//! The figures. Each measures its subject and its baseline in the same
//! run (in alternating blocks where both are cheap, so both see the same
//! machine load) and returns report rows; a figure that cannot run returns
//! rows that say why.

pub mod bash;
pub mod chatty;
pub mod dataplane;
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
        Figure::Bash => on_own_thread(|| bash::measure(ctx)),
        Figure::Python => on_own_thread(|| python::measure(ctx)),
        Figure::Chatty => chatty::measure(ctx).await,
        Figure::Stream => streaming::measure(ctx).await,
        Figure::Memory => memory::measure(ctx).await,
        Figure::Follow => dataplane::follow(ctx).await,
        Figure::Artifact => dataplane::download(ctx).await,
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

/// Runs a latency figure with its client on a single-threaded runtime of its
/// own, as a latency-minded client would: on the bench's two-worker runtime
/// every round trip also pays wake-ups between the client's threads (the
/// connection task on one, the caller on the other), measured at 0.07-0.19 ms
/// per bash Run here, which is the client's cost, not runtimed's.
fn on_own_thread<F, Fut>(figure: F) -> Result<Vec<Row>>
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Result<Vec<Row>>>,
{
    tokio::task::block_in_place(|| {
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| BenchError::io("starting a single-threaded runtime", e))?
                    .block_on(figure())
            })
            .join()
            .map_err(|_| BenchError::Unexpected("the figure's thread panicked".into()))?
        })
    })
}

/// How long after a Run finished runtimed sends the Runtime Server its
/// `Forget` (with those of the Runs that finished meanwhile): `FORGET_DELAY`
/// in runtimed/src/forgets.rs.
const RUNTIMED_FORGET_DELAY: Duration = Duration::from_millis(50);

/// Samples of the latency figures come in alternating blocks of this many:
/// baselines back to back, then Runs back to back, as the loops the figures
/// compare ("spawn + wait ... from an in-process loop", "Execute until
/// exited" again and again), while both sides still share the machine's
/// load minute by minute.
pub const BLOCK: u32 = 10;

/// One sample of a latency figure's schedule (see [`turns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Turn {
    /// Which side it samples: 0 is the baseline, then the figure's others.
    pub side: usize,
    /// Its index on its side, 0..per_side (the first `warmup` are dropped).
    pub index: u32,
    /// The first of its block: [`settle`] before it.
    pub opens_block: bool,
}

impl Turn {
    pub fn baseline(&self) -> bool {
        self.side == 0
    }
}

/// `per_side` samples of each of `sides` sides in blocks of [`BLOCK`],
/// taking turns in side order, the baseline (side 0) first.
pub fn turns(sides: usize, per_side: u32) -> impl Iterator<Item = Turn> {
    let rounds = per_side.div_ceil(BLOCK) as usize;
    (0..sides * rounds).flat_map(move |k| {
        let first = (k / sides) as u32 * BLOCK;
        (first..(first + BLOCK).min(per_side)).map(move |index| Turn {
            side: k % sides,
            index,
            opens_block: index == first,
        })
    })
}

/// Pause before each block, so that neither side starts while work that
/// follows the other side's last sample is still going on (runtimed's
/// bookkeeping, the python zygote forking its next spare 5 ms after a Run,
/// the Runtime Server's `Forget`), and both start from the same idle.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(20) + RUNTIMED_FORGET_DELAY).await;
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

/// CPU time runtimed and the Runtime Server processes spend over a figure's
/// loop, so a ratio can be attributed (CPU time is also far less sensitive
/// to a busy machine than wall-clock time).
pub struct CpuMeter {
    /// (process, pid, CPU ms at the start)
    procs: Vec<(&'static str, u32, Option<f64>)>,
    /// Host steal at the start, and when.
    steal: Option<f64>,
    since: std::time::Instant,
}

impl CpuMeter {
    /// Meters runtimed and the server of `runtime` ("bash" or "python").
    pub fn start(d: &Daemon, runtime: &str) -> CpuMeter {
        let mut pids = vec![("runtimed", Some(d.pid()))];
        match runtime {
            "python" => {
                let (server, zygote) = d.python_server_pids();
                pids.push(("python server", server));
                pids.push(("python zygote", zygote));
            }
            _ => pids.push(("bash server", d.bash_server_pid())),
        }
        CpuMeter::of(pids)
    }

    /// Meters the named processes (those without a pid are left out).
    pub fn of(pids: Vec<(&'static str, Option<u32>)>) -> CpuMeter {
        let procs = pids
            .into_iter()
            .filter_map(|(name, pid)| pid.map(|p| (name, p, cpu_ms(p))))
            .collect();
        CpuMeter {
            procs,
            steal: crate::procfs::steal_ms(),
            since: std::time::Instant::now(),
        }
    }

    /// "CPU per Run (...): runtimed X ms, bash server Y ms" over `runs` Runs.
    pub fn note(&self, runs: u32) -> String {
        let parts: Vec<String> = self
            .procs
            .iter()
            .map(|(name, pid, start)| match (start, cpu_ms(*pid)) {
                (Some(a), Some(b)) if runs > 0 => {
                    format!("{name} {:.2} ms", (b - a) / f64::from(runs))
                }
                _ => format!("{name} unknown"),
            })
            .collect();
        let mut note = format!(
            "CPU per Run (avg of {runs}, 10 ms ticks): {}",
            parts.join(", ")
        );
        if let (Some(a), Some(b)) = (self.steal, crate::procfs::steal_ms()) {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            let wall_ms = self.since.elapsed().as_secs_f64() * 1000.0 * cpus as f64;
            if wall_ms > 0.0 {
                note.push_str(&format!(
                    "; the host took {:.1}% of the CPUs' time meanwhile (steal)",
                    (b - a) / wall_ms * 100.0
                ));
            }
        }
        note
    }
}

fn cpu_ms(pid: u32) -> Option<f64> {
    crate::procfs::cpu_ms(pid)
}

/// How long to let things settle before sampling memory.
pub const SETTLE: Duration = Duration::from_millis(1000);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_alternate_blocks_and_give_each_side_every_index_once() {
        for sides in [2, 3] {
            for per_side in [0, 1, BLOCK - 1, BLOCK, 2 * BLOCK + 3] {
                let all: Vec<Turn> = turns(sides, per_side).collect();
                for side in 0..sides {
                    let indices: Vec<u32> = all
                        .iter()
                        .filter(|t| t.side == side)
                        .map(|t| t.index)
                        .collect();
                    assert_eq!(indices, (0..per_side).collect::<Vec<_>>(), "{per_side}");
                }
                let opens = all.iter().filter(|t| t.opens_block).count();
                assert_eq!(opens, sides * per_side.div_ceil(BLOCK) as usize);
                for pair in all.windows(2) {
                    assert_eq!(pair[1].opens_block, pair[0].side != pair[1].side);
                }
            }
            let first: Vec<usize> = turns(sides, 2 * BLOCK).map(|t| t.side).collect();
            let block = BLOCK as usize;
            for (i, side) in first.iter().enumerate() {
                assert_eq!(*side, (i / block) % sides, "{i}");
            }
            assert!(first[..block].iter().all(|s| *s == 0), "the baseline first");
        }
    }
}
