//! Command-line flags of `kruntimes-bench` and the iteration plan they give.
//! Every count and size has a bound; clap names the flag, value and range.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Figure {
    /// Trivial bash Run round trip vs spawn + wait.
    Bash,
    /// Trivial python Run (warm path) vs cold python3 and a Jupyter kernel.
    Python,
    /// One million short lines through runtimed vs the child writing to /dev/null.
    Chatty,
    /// stdout streaming throughput vs a raw pipe.
    Stream,
    /// runtimed and bash server RSS idle and with Runs active.
    Memory,
    /// Logs follow throughput of a Run writing --stream-bytes vs a raw pipe.
    Follow,
    /// DownloadArtifact of a --stream-bytes artifact vs nginx + curl.
    Artifact,
}

pub const ALL: [Figure; 7] = [
    Figure::Memory,
    Figure::Bash,
    Figure::Python,
    Figure::Chatty,
    Figure::Stream,
    Figure::Follow,
    Figure::Artifact,
];

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kruntimes-bench",
    version,
    about = "Measures runtimed against baselines taken in the same run and prints the ratios",
    long_about = "Starts its own runtimed (local mode, release build next to this binary), \
talks to it over gRPC on 127.0.0.1 and prints, per figure, the measured p50 (p90), the \
baseline, the ratio, the goal and pass/MISS. Exits 0 even when goals are missed: it is a \
measurement, not a test. See docs/benchmarks.md."
)]
pub struct Args {
    /// Only these figures (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Figure>,

    /// Few iterations, no warm-up for the heavy figures, 256 MiB streamed: a smoke run.
    #[arg(long)]
    pub quick: bool,

    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// Measured iterations of the trivial bash Run and of its baseline.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub bash_iterations: Option<u32>,

    /// Measured iterations of the trivial python Run, the cold start and the Jupyter kernel.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub python_iterations: Option<u32>,

    /// Measured iterations of the chatty child (each prints one million lines).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub chatty_iterations: Option<u32>,

    /// Measured iterations of the streaming figure (each moves --stream-bytes).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub stream_iterations: Option<u32>,

    /// Warm-up iterations (discarded) before the bash and python figures
    /// [default: a tenth of the iterations, at least 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub warmup: Option<u32>,

    /// Bytes the streaming figure's process writes [default: 1 GiB; 256 MiB with --quick].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1 << 20..=16 << 30))]
    pub stream_bytes: Option<u64>,

    /// Detached `sleep` Runs kept active for the memory figure.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub active_runs: u32,

    /// Python interpreter for the python runtime, the cold baseline, the
    /// chatty child and the Jupyter kernel (the venv python; resolved with
    /// sys.executable, never a shim) [default: python3].
    #[arg(long, env = "KRUNTIMES_PYTHON")]
    pub python: Option<PathBuf>,

    /// runtimed binary [default: next to this executable].
    #[arg(long)]
    pub runtimed: Option<PathBuf>,

    /// Parent directory for runtimed's temporary data dir (spools, workspace)
    /// [default: the system temp dir].
    #[arg(long)]
    pub data_parent: Option<PathBuf>,
}

/// Warm-up and measured iterations of one figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub warmup: u32,
    pub iterations: u32,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub figures: Vec<Figure>,
    pub bash: Counts,
    pub python: Counts,
    pub chatty: Counts,
    pub stream: Counts,
    pub stream_bytes: u64,
    pub active_runs: u32,
}

impl Args {
    pub fn plan(&self) -> Plan {
        let q = self.quick;
        let light = |flag: Option<u32>, normal: u32, quick: u32| {
            let iterations = flag.unwrap_or(if q { quick } else { normal });
            Counts {
                warmup: self.warmup.unwrap_or((iterations / 10).max(1)),
                iterations,
            }
        };
        let heavy = |flag: Option<u32>, normal: u32, quick: u32| Counts {
            warmup: if q { 0 } else { 1 },
            iterations: flag.unwrap_or(if q { quick } else { normal }),
        };
        // Keep the run order of ALL (memory first, on a fresh runtimed).
        let figures = if self.only.is_empty() {
            ALL.to_vec()
        } else {
            ALL.iter()
                .copied()
                .filter(|f| self.only.contains(f))
                .collect()
        };
        Plan {
            figures,
            bash: light(self.bash_iterations, 300, 40),
            python: light(self.python_iterations, 200, 30),
            chatty: heavy(self.chatty_iterations, 5, 1),
            stream: heavy(self.stream_iterations, 3, 1),
            stream_bytes: self
                .stream_bytes
                .unwrap_or(if q { 256 << 20 } else { 1 << 30 }),
            active_runs: self.active_runs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_and_quick() {
        let p = Args::parse_from(["b"]).plan();
        assert_eq!(p.figures, ALL.to_vec());
        assert_eq!(
            p.bash,
            Counts {
                warmup: 30,
                iterations: 300
            }
        );
        assert_eq!(p.stream_bytes, 1 << 30);
        let q = Args::parse_from(["b", "--quick"]).plan();
        assert_eq!(
            q.stream,
            Counts {
                warmup: 0,
                iterations: 1
            }
        );
        assert!(q.bash.iterations < p.bash.iterations);
    }

    #[test]
    fn only_keeps_the_run_order() {
        let p = Args::parse_from(["b", "--only", "stream,bash"]).plan();
        assert_eq!(p.figures, vec![Figure::Bash, Figure::Stream]);
    }

    #[test]
    fn out_of_range_counts_are_refused_with_the_flag_and_range() {
        let e = Args::try_parse_from(["b", "--bash-iterations", "0"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("--bash-iterations") && e.contains("1..=100000"),
            "{e}"
        );
        let e = Args::try_parse_from(["b", "--stream-bytes", "99999999999999"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--stream-bytes"), "{e}");
        assert!(Args::try_parse_from(["b", "--only", "gpu"]).is_err());
    }
}
