//! Writing a Run's output to the terminal and describing Runs.

use crate::cli::OutputFormat;
use kruntimes_proto::runtimed::v1 as pb;
use kruntimes_proto::time::from_timestamp;
use std::io::Write;
use std::time::UNIX_EPOCH;

/// Writes an output chunk to our stdout or stderr as it arrives.
pub fn write_chunk(o: &pb::Output) -> std::io::Result<()> {
    if o.stream == pb::Stream::Stderr as i32 {
        let mut err = std::io::stderr().lock();
        err.write_all(&o.data)?;
        err.flush()
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(&o.data)?;
        out.flush()
    }
}

pub fn phase_name(p: i32) -> &'static str {
    match pb::Phase::try_from(p) {
        Ok(pb::Phase::Pending) => "Pending",
        Ok(pb::Phase::Running) => "Running",
        Ok(pb::Phase::Succeeded) => "Succeeded",
        Ok(pb::Phase::Failed) => "Failed",
        Ok(pb::Phase::Timeout) => "Timeout",
        Ok(pb::Phase::Cancelled) => "Cancelled",
        _ => "Unknown",
    }
}

/// krt's exit code for a finished Run: its own exit code; 128+N when killed
/// by signal N; 124 for a timeout (as timeout(1)); 130 when cancelled; 1 when
/// it failed without an exit status.
pub fn exit_code(run: &pb::Run) -> u8 {
    match pb::Phase::try_from(run.phase) {
        Ok(pb::Phase::Timeout) => 124,
        Ok(pb::Phase::Cancelled) => 130,
        _ => match (run.exit_code, run.signal) {
            (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
            (None, Some(s)) => u8::try_from((128 + s).min(255)).unwrap_or(255),
            _ if run.phase == pb::Phase::Succeeded as i32 => 0,
            _ => 1,
        },
    }
}

fn ms(t: &Option<prost_types::Timestamp>) -> Option<u128> {
    t.as_ref()
        .and_then(|t| from_timestamp(t).duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis())
}

/// One Run as a JSON object (timestamps in Unix milliseconds).
pub fn run_json(r: &pb::Run) -> serde_json::Value {
    serde_json::json!({
        "runId": r.run_id,
        "runtime": r.runtime,
        "phase": phase_name(r.phase),
        "exitCode": r.exit_code,
        "signal": r.signal,
        "message": r.message,
        "pid": r.pid,
        "logLength": r.log_length,
        "createdAtMs": ms(&r.created_at).map(|v| v as u64),
        "startedAtMs": ms(&r.started_at).map(|v| v as u64),
        "finishedAtMs": ms(&r.finished_at).map(|v| v as u64),
    })
}

fn duration(r: &pb::Run) -> String {
    match (ms(&r.started_at), ms(&r.finished_at)) {
        (Some(s), Some(f)) => format!("{}ms", f.saturating_sub(s)),
        _ => "-".into(),
    }
}

pub fn print_run(r: &pb::Run, format: OutputFormat) {
    match format {
        OutputFormat::Json => println!("{}", run_json(r)),
        OutputFormat::Text => {
            println!("Run:       {}", r.run_id);
            println!("Runtime:   {}", r.runtime);
            println!("Phase:     {}", phase_name(r.phase));
            if let Some(c) = r.exit_code {
                println!("Exit code: {c}");
            }
            if let Some(s) = r.signal {
                println!("Signal:    {s}");
            }
            println!("Duration:  {}", duration(r));
            println!("Log bytes: {}", r.log_length);
            if !r.message.is_empty() {
                println!("Message:   {}", r.message);
            }
        }
    }
}

pub fn print_runs(runs: &[pb::Run], format: OutputFormat) {
    match format {
        OutputFormat::Json => {
            let items: Vec<serde_json::Value> = runs.iter().map(run_json).collect();
            println!("{}", serde_json::Value::Array(items));
        }
        OutputFormat::Text => {
            println!(
                "{:<38} {:<10} {:<10} {:>5} {:>10}",
                "RUN", "RUNTIME", "PHASE", "EXIT", "DURATION"
            );
            for r in runs {
                let exit = match (r.exit_code, r.signal) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(s)) => format!("sig{s}"),
                    _ => "-".into(),
                };
                println!(
                    "{:<38} {:<10} {:<10} {:>5} {:>10}",
                    r.run_id,
                    r.runtime,
                    phase_name(r.phase),
                    exit,
                    duration(r)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let mut r = pb::Run {
            phase: pb::Phase::Failed as i32,
            exit_code: Some(3),
            ..Default::default()
        };
        assert_eq!(exit_code(&r), 3);
        r.exit_code = None;
        r.signal = Some(9);
        assert_eq!(exit_code(&r), 137);
        r.phase = pb::Phase::Timeout as i32;
        assert_eq!(exit_code(&r), 124);
        r.phase = pb::Phase::Succeeded as i32;
        r.signal = None;
        assert_eq!(exit_code(&r), 0);
    }

    #[test]
    fn json_fields() {
        let r = pb::Run {
            run_id: "a\"b".into(),
            phase: pb::Phase::Running as i32,
            ..Default::default()
        };
        let v = run_json(&r);
        assert_eq!(v["runId"], "a\"b");
        assert_eq!(v["phase"], "Running");
        assert!(v["exitCode"].is_null());
    }
}
