//! `krt run` and the small one-Run commands (get, list, wait, cancel).

use crate::cli::{OutputFormat, ProgramArgs, RunArgs};
use crate::client::{Client, connect};
use crate::error::{Error, Result};
use crate::output::{exit_code, print_run, print_runs, write_chunk};
use kruntimes_proto::runtimed::v1 as pb;
use std::path::Path;
use std::time::Duration;

/// Scripts larger than this are refused before sending (runtimed's limit).
const MAX_SCRIPT_BYTES: u64 = 1 << 20;

fn is_python(program: &str) -> bool {
    let base = Path::new(program)
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or(program);
    base == "python" || base.starts_with("python3")
}

/// Builds the Execute request from the command line.
pub fn request(p: &ProgramArgs, detach: bool) -> Result<pb::ExecuteRequest> {
    let (program, inferred) = if let Some(path) = &p.script {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::Usage(format!("--script {}: {e}", path.display())))?;
        if meta.len() > MAX_SCRIPT_BYTES {
            return Err(Error::Usage(format!(
                "--script {} is {} bytes; the limit is {MAX_SCRIPT_BYTES} bytes",
                path.display(),
                meta.len()
            )));
        }
        let source = std::fs::read(path)
            .map_err(|e| Error::Usage(format!("--script {}: {e}", path.display())))?;
        let filename = path
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("script")
            .to_string();
        let runtime = if filename.ends_with(".py") {
            "python"
        } else {
            "bash"
        };
        (
            pb::execute_request::Program::Script(pb::Script {
                source: source.into(),
                args: p.args.clone(),
                filename,
            }),
            runtime,
        )
    } else {
        let Some(first) = p.args.first() else {
            return Err(Error::Usage(
                "nothing to run: give a program after `--` (e.g. `krt run -- echo hi`) or --script FILE".into(),
            ));
        };
        let runtime = if is_python(first) { "python" } else { "bash" };
        (
            pb::execute_request::Program::Command(pb::Command {
                argv: p.args.clone(),
            }),
            runtime,
        )
    };
    Ok(pb::ExecuteRequest {
        run_id: p.id.clone().unwrap_or_default(),
        runtime: p.runtime.clone().unwrap_or_else(|| inferred.to_string()),
        program: Some(program),
        env: p.env.iter().cloned().collect(),
        working_dir: p.workdir.clone(),
        timeout_ms: p.timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
        grace_period_ms: p.grace.map(|d| d.as_millis() as u64).unwrap_or(0),
        detach,
        artifacts_on_failure: p.artifacts_on_failure,
        artifacts_gzip: p.artifacts_gzip,
    })
}

/// Executes and streams; Ctrl-C cancels the Run (once) and keeps streaming
/// until it has ended. Returns the exit code krt should exit with.
pub async fn execute_streaming(client: &mut Client, req: pb::ExecuteRequest) -> Result<u8> {
    let mut stream = client.execute(req).await?.into_inner();
    let mut run_id = String::new();
    let mut next_offset = 0u64;
    let mut cancelled = false;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c(), if !cancelled && !run_id.is_empty() => {
                cancelled = true;
                eprintln!("krt: cancelling run {run_id}");
                client.cancel(pb::CancelRequest { run_id: run_id.clone(), grace_period_ms: 0 }).await?;
                continue;
            }
        };
        match msg {
            Ok(Some(ev)) => match ev.event {
                Some(pb::run_event::Event::Accepted(a)) => {
                    run_id = a.run.map(|r| r.run_id).unwrap_or_default();
                }
                Some(pb::run_event::Event::Output(o)) => {
                    next_offset = o.offset + o.data.len() as u64;
                    write_chunk(&o)?;
                }
                Some(pb::run_event::Event::Exited(e)) => {
                    let run = e.run.unwrap_or_default();
                    if !run.message.is_empty() && run.phase != pb::Phase::Succeeded as i32 {
                        eprintln!(
                            "krt: run {} {}: {}",
                            run.run_id,
                            crate::output::phase_name(run.phase),
                            run.message
                        );
                    }
                    return Ok(exit_code(&run));
                }
                Some(pb::run_event::Event::Truncated(t)) => {
                    eprintln!(
                        "krt: [{} bytes of output dropped here: the Run's log cap was reached]",
                        t.dropped_bytes
                    );
                }
                Some(pb::run_event::Event::Started(_)) | None => {}
            },
            // The stream broke before the Run ended: resume from the spool.
            Ok(None) | Err(_) if !run_id.is_empty() => {
                eprintln!(
                    "krt: connection lost; resuming run {run_id}'s output at offset {next_offset}"
                );
                return crate::logs::follow(client, &run_id, next_offset, None).await;
            }
            Ok(None) => {
                return Err(Error::Local(
                    "runtimed closed the stream before accepting the Run".into(),
                ));
            }
            Err(s) => return Err(s.into()),
        }
    }
}

pub async fn run(addr: &str, args: RunArgs) -> Result<u8> {
    let req = request(&args.program, args.detach)?;
    let mut client = connect(addr).await?;
    if args.detach {
        let mut stream = client.execute(req).await?.into_inner();
        if let Some(pb::RunEvent {
            event: Some(pb::run_event::Event::Accepted(a)),
        }) = stream.message().await?
        {
            println!("{}", a.run.map(|r| r.run_id).unwrap_or_default());
            return Ok(0);
        }
        return Err(Error::Local("runtimed did not accept the Run".into()));
    }
    execute_streaming(&mut client, req).await
}

pub async fn get(addr: &str, run_id: &str, format: OutputFormat) -> Result<u8> {
    let mut client = connect(addr).await?;
    let run = client
        .get(pb::GetRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    print_run(&run, format);
    Ok(0)
}

pub async fn list(addr: &str, format: OutputFormat) -> Result<u8> {
    let mut client = connect(addr).await?;
    let runs = client.list(pb::ListRequest {}).await?.into_inner().runs;
    print_runs(&runs, format);
    Ok(0)
}

pub async fn wait(addr: &str, run_id: &str, timeout: Option<Duration>) -> Result<u8> {
    let mut client = connect(addr).await?;
    let run = client
        .wait(pb::WaitRequest {
            run_id: run_id.to_string(),
            timeout_ms: timeout.map(|d| d.as_millis() as u64).unwrap_or(0),
        })
        .await?
        .into_inner();
    print_run(&run, OutputFormat::Text);
    Ok(exit_code(&run))
}

pub async fn cancel(addr: &str, run_id: &str, grace: Option<Duration>) -> Result<u8> {
    let mut client = connect(addr).await?;
    let run = client
        .cancel(pb::CancelRequest {
            run_id: run_id.to_string(),
            grace_period_ms: grace.map(|d| d.as_millis() as u64).unwrap_or(0),
        })
        .await?
        .into_inner();
    println!(
        "cancel requested for run {} (phase {})",
        run.run_id,
        crate::output::phase_name(run.phase)
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> ProgramArgs {
        ProgramArgs {
            runtime: None,
            script: None,
            env: vec![],
            workdir: String::new(),
            timeout: None,
            grace: None,
            id: None,
            artifacts_on_failure: false,
            artifacts_gzip: false,
            args: a.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn runtime_inference() {
        assert_eq!(
            request(&args(&["python3", "-c", "1"]), false)
                .unwrap()
                .runtime,
            "python"
        );
        assert_eq!(
            request(&args(&["/usr/bin/python3.11"]), false)
                .unwrap()
                .runtime,
            "python"
        );
        assert_eq!(
            request(&args(&["bash", "-c", "true"]), false)
                .unwrap()
                .runtime,
            "bash"
        );
        assert!(request(&args(&[]), false).is_err());
    }
}
