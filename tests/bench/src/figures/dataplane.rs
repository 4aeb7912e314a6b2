//! Figures 6 and 7, the data plane: log follow throughput (a Logs follower
//! attached from offset 0 of a Run writing N bytes, until the end marker) vs
//! a raw pipe; and artifact download throughput (DownloadArtifact of an
//! N-byte artifact to a client writing it to disk) vs nginx serving the same
//! stored file over HTTP on 127.0.0.1 to curl, measured in the same run.

use super::streaming::{Ceiling, pipe_to_file, rate, raw_pipe};
use super::{Context, blocking, progress};
use crate::client::{command, execute, execute_detached};
use crate::error::{BenchError, Result};
use crate::report::{Goal, Row};
use crate::stats::Samples;
use kruntimes_proto::runtimed::v1 as pb;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FOLLOW_GOAL: Goal = Goal::RatioAtLeast(0.5);
const DOWNLOAD_GOAL: Goal = Goal::RatioAtLeast(0.6);

pub async fn follow(ctx: &Context) -> Result<Vec<Row>> {
    let bytes = ctx.plan.stream_bytes;
    let name = format!("log follow (Logs -f of a Run writing {} MiB)", bytes >> 20);
    let baseline = "same command piped to in-process reader";
    if let Err(why) = &ctx.bash_ready {
        return Ok(vec![Row::unavailable(
            "follow",
            name,
            baseline,
            FOLLOW_GOAL,
            why,
        )]);
    }
    let counts = ctx.plan.stream;
    progress(format!(
        "{name}: {} iterations",
        counts.warmup + counts.iterations
    ));
    let mut client = ctx.daemon.client()?;
    let (mut through, mut raw) = (Samples::default(), Samples::default());
    let mut to_file = Ceiling::default();
    let scratch = ctx.daemon.scratch().to_path_buf();
    let arg = bytes.to_string();
    for i in 0..counts.warmup + counts.iterations {
        let r = blocking(move || raw_pipe(bytes)).await?;
        let dir = scratch.clone();
        let f = blocking(move || pipe_to_file(bytes, &dir)).await?;
        let start = Instant::now();
        let id = execute_detached(
            &mut client,
            command("bash", &["head", "-c", &arg, "/dev/zero"]),
        )
        .await?;
        let mut s = client
            .logs(pb::LogsRequest {
                run_id: id.clone(),
                follow: true,
                ..Default::default()
            })
            .await
            .map_err(|e| BenchError::Unexpected(format!("Logs: {e}")))?
            .into_inner();
        let mut got = 0u64;
        let mut ended = false;
        while let Some(m) = s
            .message()
            .await
            .map_err(|e| BenchError::Unexpected(format!("Logs stream: {e}")))?
        {
            match m.event {
                Some(pb::logs_response::Event::Output(o)) => got += o.data.len() as u64,
                Some(pb::logs_response::Event::End(_)) => ended = true,
                _ => {}
            }
        }
        let d = start.elapsed();
        if got != bytes || !ended {
            return Err(BenchError::Unexpected(format!(
                "log follow: received {got} of {bytes} bytes (end marker: {ended})"
            )));
        }
        let _ = client.forget(pb::ForgetRequest { run_id: id }).await;
        if i >= counts.warmup {
            raw.push(r);
            through.push(d);
            to_file.push(f);
        }
    }
    let (Some(m), b) = (rate(&through, bytes), rate(&raw, bytes)) else {
        return Err(BenchError::Unexpected("no samples".into()));
    };
    Ok(vec![
        Row::measured("follow", name, m, baseline, b, FOLLOW_GOAL)
            .with_note(format!(
                "{bytes} bytes and the end marker verified per follow"
            ))
            .with_note(to_file.note(bytes, b.as_ref())),
    ])
}

/// nginx serving one directory on a loopback port, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(root: &Path, scratch: &Path) -> Result<Nginx> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| BenchError::io("finding a free port for nginx", e))?;
        let dir = scratch.join("nginx");
        std::fs::create_dir_all(&dir).map_err(|e| BenchError::io("nginx dir", e))?;
        let conf = dir.join("nginx.conf");
        let text = format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; sendfile on; tcp_nopush on; \
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; \
             uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            d = dir.display(),
            root = root.display()
        );
        std::fs::File::create(&conf)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| BenchError::io("writing nginx.conf", e))?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::io("starting nginx (apt-get install nginx-light)", e))?;
        crate::children::adopt(child.id());
        // Stopped on drop from here on, also when it never listens.
        let nginx = Nginx { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(BenchError::Unexpected(
                    "nginx did not start listening".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        crate::children::release(self.child.id());
    }
}

impl Nginx {
    fn stop(&mut self) {
        // SIGTERM: the master stops its worker first (a SIGKILLed master
        // leaves the worker running, orphaned). SIGKILL only if it hangs.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(port: u16, name: &str, out: &Path, bytes: u64) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new("curl")
        .args(["-s", "-f", "-o"])
        .arg(out)
        .arg(format!("http://127.0.0.1:{port}/{name}"))
        .status()
        .map_err(|e| BenchError::io("running curl (apt-get install curl)", e))?;
    let d = start.elapsed();
    let len = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    if !status.success() || len != bytes {
        return Err(BenchError::Unexpected(format!(
            "curl: {status}, wrote {len} of {bytes} bytes"
        )));
    }
    Ok(d)
}

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

pub async fn download(ctx: &Context) -> Result<Vec<Row>> {
    let bytes = ctx.plan.stream_bytes;
    let name = format!(
        "artifact download ({} MiB via DownloadArtifact to disk)",
        bytes >> 20
    );
    let baseline = "nginx -> curl -o, same file, 127.0.0.1";
    if let Err(why) = &ctx.bash_ready {
        return Ok(vec![Row::unavailable(
            "artifact",
            name,
            baseline,
            DOWNLOAD_GOAL,
            why,
        )]);
    }
    let mut client = ctx.daemon.client()?;
    let script = format!("head -c {bytes} /dev/urandom > \"$KRUNTIMES_ARTIFACTS/blob.bin\"");
    let out = execute(&mut client, command("bash", &["sh", "-c", &script]), false).await?;
    out.require_success("writing the artifact")?;
    let run_id = out
        .run
        .as_ref()
        .map(|r| r.run_id.clone())
        .unwrap_or_default();
    let stored = find(&ctx.daemon.scratch().join("artifacts"), "blob.bin").ok_or_else(|| {
        BenchError::Unexpected("the stored artifact is not in the fs store".into())
    })?;
    let root = stored
        .parent()
        .ok_or_else(|| BenchError::Unexpected("stored artifact has no parent".into()))?
        .to_path_buf();
    let nginx = match Nginx::start(&root, ctx.daemon.scratch()) {
        Ok(n) => n,
        Err(e) => {
            return Ok(vec![Row::unavailable(
                "artifact",
                name,
                baseline,
                DOWNLOAD_GOAL,
                e.to_string(),
            )]);
        }
    };
    let counts = ctx.plan.stream;
    progress(format!(
        "{name}: {} iterations, interleaved with nginx+curl",
        counts.warmup + counts.iterations
    ));
    let dest = ctx.daemon.scratch().join("downloaded.bin");
    let (mut ours, mut theirs) = (Samples::default(), Samples::default());
    for i in 0..counts.warmup + counts.iterations {
        let (port, d2) = (nginx.port, dest.clone());
        let n = blocking(move || curl(port, "blob.bin", &d2, bytes)).await?;
        let _ = std::fs::remove_file(&dest);
        let start = Instant::now();
        let mut s = client
            .download_artifact(pb::DownloadArtifactRequest {
                run_id: run_id.clone(),
                name: "blob.bin".into(),
                offset: 0,
            })
            .await
            .map_err(|e| BenchError::Unexpected(format!("DownloadArtifact: {e}")))?
            .into_inner();
        let mut file = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&dest).map_err(|e| BenchError::io("creating the download", e))?,
        );
        let mut got = 0u64;
        while let Some(m) = s
            .message()
            .await
            .map_err(|e| BenchError::Unexpected(format!("download stream: {e}")))?
        {
            if let Some(pb::download_artifact_response::Event::Chunk(c)) = m.event {
                file.write_all(&c.data)
                    .map_err(|e| BenchError::io("writing the download", e))?;
                got += c.data.len() as u64;
            }
        }
        file.flush()
            .map_err(|e| BenchError::io("flushing the download", e))?;
        drop(file);
        let d = start.elapsed();
        let _ = std::fs::remove_file(&dest);
        if got != bytes {
            return Err(BenchError::Unexpected(format!(
                "download: {got} of {bytes} bytes"
            )));
        }
        if i >= counts.warmup {
            ours.push(d);
            theirs.push(n);
        }
    }
    drop(nginx);
    let (Some(m), b) = (rate(&ours, bytes), rate(&theirs, bytes)) else {
        return Err(BenchError::Unexpected("no samples".into()));
    };
    Ok(vec![
        Row::measured("artifact", name, m, baseline, b, DOWNLOAD_GOAL).with_note(
            "both write the file to disk; nginx serves runtimed's own stored copy (sendfile)",
        ),
    ])
}
