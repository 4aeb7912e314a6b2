//! krt's commands and flags.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "krt",
    version,
    about = "kruntimes command line",
    propagate_version = true
)]
pub struct Cli {
    /// runtimed address: host:port (e.g. a port-forward) or unix:/path.sock.
    #[arg(
        long,
        global = true,
        env = "KRT_ADDR",
        default_value = "127.0.0.1:9093"
    )]
    pub addr: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a command or script on a runtimed and stream its output; exits with
    /// the Run's exit code.
    Run(RunArgs),
    /// Start a private runtimed with the built-in runtimes, run one Run, stream
    /// its output and exit with its exit code. No cluster needed.
    Local(LocalArgs),
    /// Print a Run's output.
    Logs(LogsArgs),
    /// Show one Run.
    Get {
        run_id: String,
        #[arg(short, long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// List Runs.
    List {
        #[arg(short, long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Wait until a Run finishes; exits with its exit code.
    Wait {
        run_id: String,
        /// Give up after this long (e.g. 30s, 5m).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Cancel a Run: SIGTERM to its process group, grace period, SIGKILL.
    Cancel {
        run_id: String,
        #[arg(long, value_parser = parse_duration)]
        grace: Option<Duration>,
    },
    /// List a Run's artifacts, or download one (verified, resumable).
    #[command(subcommand)]
    Artifacts(ArtifactsCommand),
}

#[derive(Subcommand, Debug)]
pub enum ArtifactsCommand {
    /// Name, kind, size, digest and content type of each artifact.
    List {
        run_id: String,
        #[arg(short, long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// Download one artifact into PATH.part, resuming an earlier partial
    /// download, and rename it to PATH once its sha256 matches.
    Download {
        run_id: String,
        name: String,
        /// Destination file, or a directory to put NAME in [default: ./NAME].
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ProgramArgs {
    /// Runtime to use [default: python when the program is python/python3 or
    /// the script ends in .py, else bash].
    #[arg(long, short = 'r')]
    pub runtime: Option<String>,
    /// Run this script file with the runtime's interpreter; ARGS become its arguments.
    #[arg(long, short = 'f')]
    pub script: Option<PathBuf>,
    /// Environment for the Run (repeatable): NAME=VALUE.
    #[arg(long = "env", short = 'e', value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Working directory relative to the Run's own workspace directory.
    #[arg(long, short = 'w', default_value = "")]
    pub workdir: String,
    /// Per-attempt timeout (e.g. 30s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Grace period between SIGTERM and SIGKILL on cancel or timeout.
    #[arg(long, value_parser = parse_duration)]
    pub grace: Option<Duration>,
    /// Run id [default: generated].
    #[arg(long)]
    pub id: Option<String>,
    /// Collect artifacts also when the Run fails.
    #[arg(long)]
    pub artifacts_on_failure: bool,
    /// Store directory artifacts as .tar.gz.
    #[arg(long)]
    pub artifacts_gzip: bool,
    /// The program and its arguments (after `--`), or the script's arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub program: ProgramArgs,
    /// Print the Run id and return at once instead of streaming.
    #[arg(long, short = 'd')]
    pub detach: bool,
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    #[command(flatten)]
    pub program: ProgramArgs,
    /// runtimed binary [default: next to krt, else PATH].
    #[arg(long, env = "KRT_RUNTIMED")]
    pub runtimed: Option<PathBuf>,
    /// Show runtimed's own log on stderr.
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamArg {
    Stdout,
    Stderr,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub run_id: String,
    /// Follow until the Run ends, reconnecting if the connection drops.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Start at this byte offset of the combined log.
    #[arg(long, default_value_t = 0, conflicts_with_all = ["tail", "since"])]
    pub offset: u64,
    /// Start at the last N lines.
    #[arg(long, conflicts_with = "since")]
    pub tail: Option<u64>,
    /// Start at output that arrived within this long ago (e.g. 10m, 30s).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only this stream.
    #[arg(long, value_enum)]
    pub stream: Option<StreamArg>,
}

/// Parses `500ms`, `30s`, `5m`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("duration {s:?} must look like 500ms, 30s, 5m or 2h"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => {
            return Err(format!(
                "duration {s:?} has unit {unit:?}; use ms, s, m or h"
            ));
        }
    };
    Ok(Duration::from_millis(ms))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("--env {s:?} must be NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("noequals").is_err());
    }
}
