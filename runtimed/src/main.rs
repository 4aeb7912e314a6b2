//! The runtimed binary: parses flags, sets up logging, runs the server.

use clap::Parser;
use runtimed::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    let filter = EnvFilter::try_from_env("RUNTIMED_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log_format {
        LogFormat::Json => fmt.json().init(),
        LogFormat::Text => fmt.init(),
    }
    match runtimed::serve(cfg).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("runtimed: {e}");
            eprintln!("runtimed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
