//! runtimed's command-line flags and environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "runtimed",
    version,
    about = "The kruntimes sidecar: runs Runs, spools their logs, serves the runtimed gRPC API"
)]
pub struct Config {
    /// gRPC API address. Loopback by default: reach it through port-forward.
    #[arg(long, env = "RUNTIMED_LISTEN", default_value = "127.0.0.1:9093")]
    pub listen: SocketAddr,

    /// Also serve the API on this Unix socket (mode 0600).
    #[arg(long, env = "RUNTIMED_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,

    /// Prometheus `/metrics` address, or "off".
    #[arg(
        long,
        env = "RUNTIMED_METRICS_LISTEN",
        default_value = "127.0.0.1:9094"
    )]
    pub metrics_listen: String,

    /// Directory for spools and (by default) the workspace and local sockets.
    #[arg(long, env = "RUNTIMED_DATA_DIR", default_value = "/var/lib/kruntimes")]
    pub data_dir: PathBuf,

    /// Workspace root shared with the Runtime Servers [default: DATA_DIR/workspace].
    #[arg(long, env = "RUNTIMED_WORKSPACE")]
    pub workspace: Option<PathBuf>,

    /// Maximum Runs executing at once; more fail fast with RESOURCE_EXHAUSTED.
    #[arg(long, env = "RUNTIMED_MAX_RUNS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_runs: u32,

    /// External Runtime Servers as NAME=ADDRESS (unix:/path.sock or host:port);
    /// repeatable. Without any, runtimed runs in local mode and starts the
    /// built-in bash and python servers itself.
    #[arg(long = "runtime", env = "RUNTIMED_RUNTIMES", value_delimiter = ',')]
    pub runtimes: Vec<String>,

    /// bash Runtime Server binary for local mode [default: next to runtimed, else PATH].
    #[arg(long, env = "RUNTIMED_BASH_SERVER")]
    pub bash_server: Option<PathBuf>,

    /// Python interpreter that has the `kruntimes_runtime` package, for local mode.
    #[arg(long, env = "KRUNTIMES_PYTHON", default_value = "python3")]
    pub python: PathBuf,

    /// Modules the warm python interpreter imports before forking Runs (comma-separated).
    #[arg(long, env = "KRUNTIMES_PYTHON_PRELOAD")]
    pub python_preload: Option<String>,

    /// Only start these built-in runtimes in local mode (comma-separated).
    #[arg(
        long,
        env = "RUNTIMED_LOCAL_RUNTIMES",
        value_delimiter = ',',
        default_value = "bash,python"
    )]
    pub local_runtimes: Vec<String>,

    /// Per-Run log cap in bytes; output beyond it is dropped with an in-band
    /// marker and the Run says it was truncated.
    #[arg(long, env = "RUNTIMED_LOG_CAP_BYTES", default_value_t = 2 << 30)]
    pub log_cap_bytes: u64,

    /// Budget for all spools in bytes; beyond it the spools of the oldest
    /// finished Runs are evicted first.
    #[arg(long, env = "RUNTIMED_SPOOL_BUDGET_BYTES", default_value_t = 10 << 30)]
    pub spool_budget_bytes: u64,

    /// Finished Runs kept (with their records and logs) until forgotten;
    /// beyond it the oldest finished Runs are forgotten first.
    #[arg(long, env = "RUNTIMED_MAX_FINISHED_RUNS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_finished_runs: u32,

    /// Where artifacts are stored: `fs:/path` (e.g. a PVC mount) or
    /// `s3://bucket/prefix?region=R&endpoint=URL&path_style=true`, with S3
    /// credentials from the environment [default: fs:DATA_DIR/artifacts].
    #[arg(long, env = "RUNTIMED_ARTIFACT_STORE")]
    pub artifact_store: Option<String>,

    /// Namespace in artifact keys (`namespaces/<ns>/runs/<uid>/<name>`); in a
    /// Runtime Pod, the Pod's namespace.
    #[arg(long, env = "RUNTIMED_NAMESPACE", default_value = "local")]
    pub namespace: String,

    /// Most artifacts one Run may leave.
    #[arg(long, env = "RUNTIMED_MAX_ARTIFACTS", default_value_t = 64)]
    pub max_artifacts: usize,

    /// Most bytes of one artifact.
    #[arg(long, env = "RUNTIMED_MAX_ARTIFACT_BYTES", default_value_t = 1 << 30)]
    pub max_artifact_bytes: u64,

    /// Most bytes of all artifacts of one Run.
    #[arg(long, env = "RUNTIMED_MAX_ARTIFACTS_TOTAL_BYTES", default_value_t = 4 << 30)]
    pub max_artifacts_total_bytes: u64,

    /// Default grace period between SIGTERM and SIGKILL, in milliseconds
    /// (at most an hour, the Runtime Server protocol's bound). In local mode
    /// also what Runs still running get when runtimed stops.
    #[arg(long, env = "RUNTIMED_GRACE_PERIOD_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub grace_period_ms: u64,

    /// Threads serving the API, the Runs and their output: 1 (the default)
    /// runs everything on one thread, as a sidecar should (no wake-ups
    /// between threads on every Run); more give a multi-threaded scheduler.
    #[arg(long, env = "RUNTIMED_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub worker_threads: u32,

    #[arg(long, env = "RUNTIMED_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl Config {
    /// The default grace period between SIGTERM and SIGKILL.
    pub fn run_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.grace_period_ms)
    }

    pub fn workspace(&self) -> PathBuf {
        self.workspace
            .clone()
            .unwrap_or_else(|| self.data_dir.join("workspace"))
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir.join("spool")
    }

    pub fn artifact_store(&self) -> String {
        self.artifact_store
            .clone()
            .unwrap_or_else(|| format!("fs:{}", self.data_dir.join("artifacts").display()))
    }

    pub fn records_journal(&self) -> PathBuf {
        self.data_dir.join("runs.journal")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.data_dir.join("sockets")
    }

    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.metrics_listen == "off" {
            return Ok(None);
        }
        self.metrics_listen.parse().map(Some).map_err(|e| {
            format!(
                "--metrics-listen {:?} must be host:port or \"off\": {e}",
                self.metrics_listen
            )
        })
    }
}
