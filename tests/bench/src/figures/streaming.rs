//! Figure 4: stdout streaming throughput. A process writes N bytes (1 GiB by
//! default) through runtimed to the gRPC client, which counts them, vs the
//! same command piped into an in-process reader.

use super::{Context, CpuMeter, blocking, progress};
use crate::client::{command, execute};
use crate::error::{BenchError, Result};
use crate::report::{Goal, Row, Unit, Value};
use crate::stats::Samples;
use kruntimes_proto::runtimed::v1 as pb;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BASELINE: &str = "same command piped to in-process reader";
const GOAL: Goal = Goal::RatioAtLeast(0.5);
const READ_BUFFER: usize = 256 * 1024;

fn figure(bytes: u64) -> String {
    format!("stdout streaming (head -c {} /dev/zero)", human(bytes))
}

fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 30) {
        format!("{}GiB", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else {
        format!("{bytes}B")
    }
}

pub(super) fn raw_pipe(bytes: u64) -> Result<Duration> {
    pipe_into(bytes, None)
}

/// The durable spool's share: the same pipe, its bytes written to a file in
/// `dir` (the spool's filesystem) twice: into fresh page-cache pages, as a
/// spool is, then over the pages just written (no page allocated), which
/// shows what allocating pages costs on this machine. The file is removed.
pub(super) fn pipe_to_file(bytes: u64, dir: &std::path::Path) -> Result<(Duration, Duration)> {
    let path = dir.join("spool-ceiling.bin");
    let r = pipe_into(bytes, Some((&path, true)))
        .and_then(|fresh| Ok((fresh, pipe_into(bytes, Some((&path, false)))?)));
    let _ = std::fs::remove_file(&path);
    r
}

/// `file`: where the bytes go too, and whether it is created (truncated) or
/// overwritten in place.
fn pipe_into(bytes: u64, file: Option<(&std::path::Path, bool)>) -> Result<Duration> {
    use std::io::Write;
    let mut sink = match file {
        Some((p, create)) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .create(create)
                .truncate(create)
                .open(p)
                .map_err(|e| BenchError::io("opening the ceiling file", e))?,
        ),
        None => None,
    };
    let start = Instant::now();
    let mut child = Command::new("head")
        .args(["-c", &bytes.to_string(), "/dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| BenchError::io("spawning head", e))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Unexpected("head has no stdout pipe".into()))?;
    let mut buf = vec![0u8; READ_BUFFER];
    let mut got = 0u64;
    loop {
        let n = stdout
            .read(&mut buf)
            .map_err(|e| BenchError::io("reading head's stdout", e))?;
        if n == 0 {
            break;
        }
        if let Some(f) = sink.as_mut() {
            f.write_all(&buf[..n])
                .map_err(|e| BenchError::io("writing the ceiling file", e))?;
        }
        got += n as u64;
    }
    let status = child
        .wait()
        .map_err(|e| BenchError::io("waiting for head", e))?;
    let d = start.elapsed();
    if !status.success() || got != bytes {
        return Err(BenchError::Unexpected(format!(
            "raw pipe: head {status}, read {got} of {bytes} bytes"
        )));
    }
    Ok(d)
}

/// MB/s (10^6 bytes per second) at the p50 and p90 durations.
pub(super) fn rate(s: &Samples, bytes: u64) -> Option<Value> {
    let mbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    Some(Value {
        p50: mbps(s.p50()?),
        p90: Some(mbps(s.p90()?)),
        unit: Unit::MBps,
        n: s.len(),
    })
}

pub async fn measure(ctx: &Context) -> Result<Vec<Row>> {
    let bytes = ctx.plan.stream_bytes;
    let name = figure(bytes);
    if let Err(why) = &ctx.bash_ready {
        return Ok(vec![Row::unavailable("stream", name, BASELINE, GOAL, why)]);
    }
    let counts = ctx.plan.stream;
    progress(format!(
        "{name}: {} warm-up + {} iterations, interleaved with the baseline",
        counts.warmup, counts.iterations
    ));
    let mut client = ctx.daemon.client()?;
    let n = counts.iterations as usize;
    let (mut through, mut raw) = (Samples::with_capacity(n), Samples::with_capacity(n));
    let mut to_file = Ceiling::default();
    let scratch = ctx.daemon.scratch().to_path_buf();
    let mut messages = 0u64;
    let arg = bytes.to_string();
    let cpu = CpuMeter::start(&ctx.daemon, "bash");
    for i in 0..counts.warmup + counts.iterations {
        let r = blocking(move || raw_pipe(bytes)).await?;
        let dir = scratch.clone();
        let f = blocking(move || pipe_to_file(bytes, &dir)).await?;
        let start = Instant::now();
        let out = execute(
            &mut client,
            command("bash", &["head", "-c", &arg, "/dev/zero"]),
            false,
        )
        .await?;
        let d = start.elapsed();
        out.require_success("head through runtimed")?;
        if out.output_bytes != bytes {
            return Err(BenchError::Unexpected(format!(
                "streaming: the client received {} bytes, expected {bytes}",
                out.output_bytes
            )));
        }
        // As a client done with a Run does (and the follow figure): its 1 GiB
        // log does not stay in the spool.
        if let Some(run) = out.run {
            let _ = client
                .forget(pb::ForgetRequest { run_id: run.run_id })
                .await;
        }
        if i >= counts.warmup {
            raw.push(r);
            through.push(d);
            to_file.push(f);
            messages = out.output_messages;
        }
    }
    let (Some(m), b) = (rate(&through, bytes), rate(&raw, bytes)) else {
        return Err(BenchError::Unexpected("no samples".into()));
    };
    let note = format!(
        "{bytes} bytes verified per Run; {messages} Output messages ({:.0} KiB each); \
         runtimed spools to {}",
        bytes as f64 / messages.max(1) as f64 / 1024.0,
        ctx.daemon.scratch().display()
    );
    Ok(vec![
        Row::measured("stream", name, m, BASELINE, b, GOAL)
            .with_note(note)
            .with_note(to_file.note(bytes, b.as_ref()))
            .with_note(cpu.note(counts.warmup + counts.iterations)),
    ])
}

/// What the spool alone allows: the same pipe written to a file on the
/// spool's filesystem, into fresh pages and over cached ones.
#[derive(Default)]
pub(super) struct Ceiling {
    fresh: Samples,
    cached: Samples,
}

impl Ceiling {
    pub(super) fn push(&mut self, (fresh, cached): (Duration, Duration)) {
        self.fresh.push(fresh);
        self.cached.push(cached);
    }

    /// Next to the raw pipe's rate `raw`.
    pub(super) fn note(&self, bytes: u64, raw: Option<&Value>) -> String {
        match (rate(&self.fresh, bytes), rate(&self.cached, bytes), raw) {
            (Some(f), Some(c), Some(r)) => format!(
                "ceiling set by the durable spool: the same pipe written to a file on the \
                 spool's filesystem runs at {:.0} MB/s, {:.2}x the raw pipe (into fresh \
                 page-cache pages, as a spool is; over pages already cached: {:.0} MB/s, \
                 {:.2}x)",
                f.p50,
                f.p50 / r.p50,
                c.p50,
                c.p50 / r.p50
            ),
            _ => "ceiling set by the durable spool: not measured".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_use_decimal_megabytes_and_the_slow_tail_for_p90() {
        let mut s = Samples::default();
        s.push(Duration::from_secs(1));
        s.push(Duration::from_secs(2));
        let v = rate(&s, 1_000_000_000).expect("rate");
        assert_eq!(v.p50, 1000.0);
        assert_eq!(v.p90, Some(500.0));
        assert_eq!(human(1 << 30), "1GiB");
        assert_eq!(human(256 << 20), "256MiB");
    }
}
