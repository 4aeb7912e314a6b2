//! `krt`: the kruntimes command line. Talks to a runtimed directly (`--addr`),
//! or starts a private one for a single local Run (`krt local`).

mod artifacts;
mod cli;
mod client;
mod error;
mod local;
mod logs;
mod output;
mod run;

use clap::Parser;
use cli::{ArtifactsCommand, Cli, Command};
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(&cli.addr, args).await,
        Command::Local(args) => local::local(args).await,
        Command::Logs(args) => logs::logs(&cli.addr, args).await,
        Command::Get { run_id, output } => run::get(&cli.addr, &run_id, output).await,
        Command::List { output } => run::list(&cli.addr, output).await,
        Command::Wait { run_id, timeout } => run::wait(&cli.addr, &run_id, timeout).await,
        Command::Cancel { run_id, grace } => run::cancel(&cli.addr, &run_id, grace).await,
        Command::Artifacts(ArtifactsCommand::List { run_id, output }) => {
            artifacts::list(&cli.addr, &run_id, output).await
        }
        Command::Artifacts(ArtifactsCommand::Download {
            run_id,
            name,
            output,
        }) => artifacts::download(&cli.addr, &run_id, &name, output.as_deref()).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("krt: {e}");
            ExitCode::from(error::KRT_ERROR_EXIT)
        }
    }
}
