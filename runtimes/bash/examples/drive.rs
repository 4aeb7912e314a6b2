//! A small driver that measures this server directly (no runtimed), each
//! figure next to its in-process baseline, for profiling the server's share:
//!
//! ```sh
//! cargo build --release -p kruntimes-bash-runtime --examples --bins
//! target/release/examples/drive latency 300     # bash -c true: Start..Exited vs spawn+wait
//! target/release/examples/drive latency 300 'echo hi'   # the same with another bash -c script
//! target/release/examples/drive chatty 3        # python -u printing 1M lines vs > /dev/null
//! target/release/examples/drive stream 1073741824 3   # head -c N /dev/zero vs a raw pipe
//! ```
//! The server binary is taken from next to this example's directory
//! (`target/release/kruntimes-bash-runtime`), or `KRUNTIMES_BASH_SERVER`.
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kruntimes_conformance::ServerUnderTest;
use kruntimes_conformance::client::{Client, command, unique_id};
use kruntimes_proto::events::Events;
use kruntimes_proto::runtime::v1::{ExecutionEvent, ForgetRequest, execution_event};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn server_bin() -> Res<PathBuf> {
    if let Some(p) = std::env::var_os("KRUNTIMES_BASH_SERVER") {
        return Ok(p.into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .ok_or("cannot locate the target directory")?;
    Ok(dir.join("kruntimes-bash-runtime"))
}

/// Runs `argv` through the server; returns (time to Exited, output bytes, messages).
async fn through(c: &mut Client, argv: &[&str]) -> Res<(Duration, u64, u64)> {
    let id = unique_id("drive");
    let t = Instant::now();
    let mut s = Events::new(c.start(command(&id, argv)).await?.into_inner());
    let (mut bytes, mut msgs) = (0u64, 0u64);
    loop {
        let Some(ExecutionEvent { event: Some(ev) }) = s.message().await? else {
            return Err("stream ended before Exited".into());
        };
        match ev {
            execution_event::Event::Output(o) => {
                bytes += o.data.len() as u64;
                msgs += 1;
            }
            execution_event::Event::Exited(_) => break,
            // Not asked for (`output_handoff` is off).
            execution_event::Event::Handoff(_) => return Err("unexpected Handoff".into()),
            // `Events` unpacks batches.
            execution_event::Event::Started(_) | execution_event::Event::Batch(_) => {}
        }
    }
    let d = t.elapsed();
    drop(s);
    c.forget(ForgetRequest {
        execution_id: id,
        more_execution_ids: Vec::new(),
    })
    .await?;
    Ok((d, bytes, msgs))
}

/// (CPU ns, context switches) summed over the server's threads.
fn server_usage(pid: Option<i32>) -> (u64, u64) {
    let Some(pid) = pid else { return (0, 0) };
    let mut cpu = 0;
    let mut switches = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for t in tasks.flatten() {
        let p = t.path();
        if let Ok(s) = std::fs::read_to_string(p.join("schedstat")) {
            cpu += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(p.join("status")) {
            for line in s.lines() {
                if line.contains("ctxt_switches:") {
                    switches += line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    (cpu, switches)
}

/// Prints the server's CPU and context switches per Run since `before`.
fn per_run(pid: Option<i32>, before: (u64, u64), runs: usize) {
    let after = server_usage(pid);
    println!(
        "  server per Run: CPU {:.1} us, {:.1} context switches",
        (after.0 - before.0) as f64 / 1000.0 / runs as f64,
        (after.1 - before.1) as f64 / runs as f64
    );
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn python() -> String {
    std::env::var("KRUNTIMES_PYTHON").unwrap_or_else(|_| "python3".into())
}

const CHATTY: &str = "for i in range(1000000): print(i)";

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("latency");
    let n: usize = args.get(1).map_or(Ok(200), |s| s.parse())?;
    let mut server = ServerUnderTest::launch(&format!("'{}'", server_bin()?.display())).await?;
    let mut c = server.client();
    match mode {
        "latency" => {
            let script = args.get(2).map_or("true", String::as_str);
            let argv = ["bash", "-c", script];
            for _ in 0..20 {
                through(&mut c, &argv).await?;
            }
            let mut raw = Vec::new();
            let mut srv = Vec::new();
            let before = server_usage(server.pid());
            for _ in 0..n {
                let t = Instant::now();
                // As the bench's baseline; output, when any, read from pipes.
                if script == "true" {
                    Command::new("bash").args(["-c", script]).status()?;
                } else {
                    Command::new("bash").args(["-c", script]).output()?;
                }
                raw.push(t.elapsed());
                srv.push(through(&mut c, &argv).await?.0);
            }
            per_run(server.pid(), before, n);
            let (r, s) = (p50(raw), p50(srv));
            println!(
                "bash -c {script:?} p50: server {:.3} ms, spawn+wait {:.3} ms, ratio {:.2}",
                ms(s),
                ms(r),
                s.as_secs_f64() / r.as_secs_f64()
            );
        }
        "chatty" => {
            let py = python();
            let mut raw = Vec::new();
            let mut srv = Vec::new();
            let mut last = (0, 0);
            let before = server_usage(server.pid());
            for _ in 0..n {
                let t = Instant::now();
                Command::new(&py)
                    .args(["-u", "-c", CHATTY])
                    .stdout(Stdio::null())
                    .status()?;
                raw.push(t.elapsed());
                let (d, b, m) = through(&mut c, &[&py, "-u", "-c", CHATTY]).await?;
                srv.push(d);
                last = (b, m);
            }
            per_run(server.pid(), before, n);
            let (r, s) = (p50(raw), p50(srv));
            println!(
                "chatty p50: server {:.0} ms, /dev/null {:.0} ms, ratio {:.2}; {} bytes in {} messages",
                ms(s),
                ms(r),
                s.as_secs_f64() / r.as_secs_f64(),
                last.0,
                last.1
            );
        }
        "stream" => {
            let bytes: u64 = args.get(1).map_or(Ok(1 << 30), |s| s.parse())?;
            let iters: usize = args.get(2).map_or(Ok(3), |s| s.parse())?;
            let count = bytes.to_string();
            let mut raw = Vec::new();
            let mut srv = Vec::new();
            let mut msgs = 0;
            let before = server_usage(server.pid());
            for _ in 0..iters {
                let t = Instant::now();
                let mut child = Command::new("head")
                    .args(["-c", &count, "/dev/zero"])
                    .stdout(Stdio::piped())
                    .spawn()?;
                let mut out = child.stdout.take().ok_or("no pipe")?;
                let mut buf = vec![0u8; 256 * 1024];
                while out.read(&mut buf)? > 0 {}
                child.wait()?;
                raw.push(t.elapsed());
                let (d, b, m) = through(&mut c, &["head", "-c", &count, "/dev/zero"]).await?;
                if b != bytes {
                    return Err(format!("got {b} bytes, want {bytes}").into());
                }
                srv.push(d);
                msgs = m;
            }
            per_run(server.pid(), before, iters);
            let (r, s) = (p50(raw), p50(srv));
            let gib = |d: Duration| bytes as f64 / d.as_secs_f64() / (1u64 << 30) as f64;
            println!(
                "stream {bytes} B p50: server {:.2} GiB/s, raw pipe {:.2} GiB/s, ratio {:.2}; {msgs} messages",
                gib(s),
                gib(r),
                r.as_secs_f64() / s.as_secs_f64()
            );
        }
        other => return Err(format!("unknown mode {other:?}: latency | chatty | stream").into()),
    }
    server.stop().await;
    Ok(())
}
