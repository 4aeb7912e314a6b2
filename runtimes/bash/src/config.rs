//! Command-line flags (each also settable from the environment) and the
//! listen address syntax: `unix:/path/to.sock` or a loopback `IP:PORT`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

/// Smallest and largest per-stream output buffer.
const MIN_BUFFER_BYTES: u64 = 64 * 1024;
const MAX_BUFFER_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "kruntimes-bash-runtime",
    version,
    about = "The kruntimes bash Runtime Server (kruntimes.runtime.v1)"
)]
pub struct Config {
    /// Where to serve: `unix:/path/to.sock` (created mode 0600) or a loopback
    /// `127.0.0.1:PORT`.
    #[arg(long, env = "KRUNTIMES_LISTEN")]
    pub listen: ListenAddr,

    /// Workspace root; each execution runs under `<workspace>/<execution_id>`.
    /// Created if missing.
    #[arg(long, env = "KRUNTIMES_WORKSPACE")]
    pub workspace: PathBuf,

    /// Most executions running at once.
    #[arg(long, env = "KRUNTIMES_MAX_EXECUTIONS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_executions: u32,

    /// Most executions kept (running or finished) until Forgotten.
    #[arg(long, env = "KRUNTIMES_MAX_RETAINED", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_retained: u32,

    /// Output buffer per stream of each execution, in bytes. When it holds
    /// this many unsent bytes the child is back-pressured.
    #[arg(long, env = "KRUNTIMES_BUFFER_BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES))]
    pub buffer_bytes: u64,

    /// bash used for Scripts; default: `bash` found on the server's PATH.
    #[arg(long, env = "KRUNTIMES_BASH")]
    pub bash: Option<PathBuf>,

    /// Threads serving RPCs and output: 1 (the default) runs everything on
    /// one thread; more give a multi-threaded scheduler.
    #[arg(long, env = "KRUNTIMES_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub worker_threads: u32,

    /// Longest grace given to running executions when the server is stopped.
    #[arg(long, env = "KRUNTIMES_SHUTDOWN_GRACE_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_grace_ms: u64,
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/kruntimes/rs.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|e| format!("{s:?} is neither unix:/path nor IP:PORT ({e})"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{s:?} is not a loopback address; the Runtime Server listens only on 127.0.0.1/::1 or a Unix socket"
            ));
        }
        Ok(ListenAddr::Tcp(addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "127.0.0.1:7000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:7000".parse().unwrap())
        );
        assert!("[::1]:7000".parse::<ListenAddr>().is_ok());
        assert!(
            "0.0.0.0:7000"
                .parse::<ListenAddr>()
                .unwrap_err()
                .contains("loopback")
        );
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn flags_and_bounds() {
        let c = Config::try_parse_from(["x", "--listen", "unix:/tmp/s", "--workspace", "/tmp/w"])
            .unwrap();
        assert_eq!(c.max_executions, 256);
        assert_eq!(c.worker_threads, 1);
        assert_eq!(c.buffer_bytes, 4 * 1024 * 1024);
        let e = Config::try_parse_from([
            "x",
            "--listen",
            "unix:/tmp/s",
            "--workspace",
            "/tmp/w",
            "--buffer-bytes",
            "10",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("65536"), "{e}");
    }
}
