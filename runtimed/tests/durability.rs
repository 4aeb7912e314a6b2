//! Nothing is lost when runtimed is SIGKILLed mid-Run and restarted: it
//! re-adopts the Runtime Server still running the Run, re-attaches from the
//! spooled offsets, and the spool ends up holding every byte in order.

mod common;

use common::{Daemon, sh};
use kruntimes_proto::runtimed::v1 as pb;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

const LINES: u64 = 7_000_000; // `seq 1 7000000` is 54.9 MB

fn expected() -> Vec<u8> {
    let mut v = Vec::with_capacity(56 << 20);
    for i in 1..=LINES {
        v.extend_from_slice(i.to_string().as_bytes());
        v.push(b'\n');
    }
    v
}

/// A Run's whole log (one stream of it with `stream`), followed to the end;
/// the combined log's offsets are checked to be contiguous.
async fn read_all(c: &mut Client, id: &str, stream: pb::Stream) -> Vec<u8> {
    let mut s = c
        .logs(pb::LogsRequest {
            run_id: id.into(),
            follow: true,
            stream: stream as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        if let Some(pb::logs_response::Event::Output(o)) = m.event {
            if stream == pb::Stream::Unspecified {
                assert_eq!(o.offset as usize, got.len());
            }
            got.extend_from_slice(&o.data);
        }
    }
    got
}

type Client = pb::runtimed_client::RuntimedClient<tonic::transport::Channel>;

/// Starts `script` as a detached Run named `id` (returns once accepted).
async fn start_detached(c: &mut Client, id: &str, script: &str) {
    let mut req = sh(script);
    req.run_id = id.into();
    req.detach = true;
    c.execute(req)
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap();
}

/// Polls Get until `done` says the Run is where the test wants it.
async fn poll_until(c: &mut Client, id: &str, done: impl Fn(&pb::Run) -> bool) {
    let start = Instant::now();
    loop {
        let r = c
            .get(pb::GetRequest { run_id: id.into() })
            .await
            .unwrap()
            .into_inner();
        if done(&r) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{r:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts runtimed again on the crashed one's data dir and waits for Run
/// `id` to end there.
async fn restart_and_wait(dir: tempfile::TempDir, id: &str) -> (Daemon, Client, pb::Run) {
    let d = Daemon::start_in(dir, &[]).await;
    let mut c = d.client();
    let r = c
        .wait(pb::WaitRequest {
            run_id: id.into(),
            timeout_ms: 120_000,
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()))
        .into_inner();
    (d, c, r)
}

/// `seq` writes in 4 KiB pieces: its output reaches runtimed through the
/// Runtime Server's messages, or (when the server falls behind and reads
/// large chunks) partly through a handoff; either way nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_nothing() {
    sigkill_mid_run(&format!("seq 1 {LINES}; exit 3"), 4 << 20, false, false).await;
}

/// The same with a fast writer (1 MiB writes): the server hands stdout off
/// and runtimed splices the pipe into the spool; the crash hits mid-drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_draining_a_handed_off_pipe_loses_nothing() {
    sigkill_mid_run(
        &format!("seq 1 {LINES} | dd bs=1M iflag=fullblock status=none; exit 3"),
        12 << 20,
        true,
        false,
    )
    .await;
}

/// The same into a recycled spool file (a forgotten Run's 64 MB of 'z',
/// more than this Run writes): the stale bytes are cut before the first
/// splice (a crash mid-splice is recovered from the file's size, which they
/// would hide), and the log is exactly the Run's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_draining_into_a_recycled_spool_file_loses_nothing() {
    sigkill_mid_run(
        &format!("seq 1 {LINES} | dd bs=1M iflag=fullblock status=none; exit 3"),
        12 << 20,
        true,
        true,
    )
    .await;
}

async fn sigkill_mid_run(script: &str, kill_after: u64, handoff: bool, recycled: bool) {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let recycled_inode = if recycled {
        let stale = "head -c 64000000 /dev/zero | tr '\\0' z";
        start_detached(&mut c, "stale", stale).await;
        poll_until(&mut c, "stale", |r| r.phase == pb::Phase::Succeeded as i32).await;
        c.forget(pb::ForgetRequest {
            run_id: "stale".into(),
        })
        .await
        .unwrap();
        let shelved = d.dir.path().join("spool/.recycled-0.log");
        let meta = std::fs::metadata(&shelved).unwrap();
        assert_eq!(meta.len(), 64_000_000);
        Some(meta.ino())
    } else {
        None
    };
    start_detached(&mut c, "durable", script).await;

    // Kill runtimed once a few MB are spooled, while the Run is mid-output.
    poll_until(&mut c, "durable", |r| {
        assert_eq!(
            r.phase,
            pb::Phase::Running as i32,
            "the run finished before the crash: {r:?}"
        );
        r.log_length > kill_after
    })
    .await;
    drop(c);
    let before = d.log();
    let dir = d.crash();
    if handoff {
        assert!(
            before.contains("handed off"),
            "no handoff before the crash\n{before}"
        );
    }

    if let Some(inode) = recycled_inode {
        let log = std::fs::metadata(dir.path().join("spool/durable.log")).unwrap();
        assert_eq!(log.ino(), inode, "the Run wrote into the recycled file");
        assert!(
            log.len() < 64_000_000,
            "the stale bytes were not cut before the splices: {} bytes",
            log.len()
        );
    }
    let (d, mut c, r) = restart_and_wait(dir, "durable").await;
    assert_eq!(r.phase, pb::Phase::Failed as i32, "{r:?}\n{}", d.log());
    assert_eq!(r.exit_code, Some(3), "{r:?}\n{}", d.log());
    let want = expected();
    assert_eq!(r.log_length, want.len() as u64);
    let got = read_all(&mut c, "durable", pb::Stream::Unspecified).await;
    assert_eq!(got.len(), want.len());
    assert!(got == want, "spooled bytes differ from seq's output");
    let log = d.dir.path().join("spool/durable.log");
    assert_eq!(std::fs::metadata(&log).unwrap().len(), want.len() as u64);
    assert!(d.log().contains("adopted"), "{}", d.log());
    if handoff {
        assert!(d.log().contains("handed off"), "{}", d.log());
    }
}

/// A Run that finished just before a clean shutdown is found finished after
/// the restart: its bookkeeping, which waits for a quiet moment, runs at
/// shutdown. (The servers stop with runtimed, so a Run left unsaved could
/// not be re-attached: it would end failed, without its exit code.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finished_just_before_a_shutdown_is_saved_finished() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let mut req = sh("echo done; exit 4");
    req.run_id = "last".into();
    let run = common::execute(&mut c, req).await.run.unwrap();
    assert_eq!(run.exit_code, Some(4), "{run:?}");
    drop(c);
    let dir = d.stop();
    let (d, mut c, r) = restart_and_wait(dir, "last").await;
    assert_eq!(r.phase, pb::Phase::Failed as i32, "{r:?}\n{}", d.log());
    assert_eq!(r.exit_code, Some(4), "{r:?}\n{}", d.log());
    assert_eq!(r.message, "exited with code 4", "{}", d.log());
    assert_eq!(
        read_all(&mut c, "last", pb::Stream::Unspecified).await,
        b"done\n"
    );
}

/// Alive, and not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// A clean shutdown in local mode ends the Runs still running with it: the
/// servers give them the grace (`--grace-period-ms`, 1000 ms here) and
/// SIGKILL what ignores SIGTERM, and runtimed waits for its servers before
/// it exits. No process of a Run outlives runtimed, runtimed reaps its
/// server, and both Runs are saved ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_shutdown_ends_the_runs_still_running_with_it() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let pids = d.dir.path().join("pids");
    let p = pids.display();
    // Ignores SIGTERM, and so does its background child.
    start_detached(
        &mut c,
        "stubborn",
        &format!("trap '' TERM; sleep 100 & echo $$ $! >> '{p}'; wait"),
    )
    .await;
    start_detached(
        &mut c,
        "plain",
        &format!("echo $$ >> '{p}'; exec sleep 100"),
    )
    .await;
    let start = Instant::now();
    let run_pids: Vec<i32> = loop {
        let got: Vec<i32> = std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if got.len() == 3 {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{got:?}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let server_pids: Vec<i32> = d
        .log()
        .lines()
        .filter(|l| l.contains("runtime server ready") && l.contains("runtime=bash"))
        .filter_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(server_pids.len(), 1, "{}", d.log());
    drop(c);
    let dir = d.stop();
    for pid in &run_pids {
        assert!(!running(*pid), "the Run's process {pid} outlived runtimed");
    }
    // Waited for and reaped by runtimed itself, not left a zombie for init.
    for pid in &server_pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        assert!(stat.is_err(), "the bash server outlived runtimed: {stat:?}");
    }
    let (d, mut c, r) = restart_and_wait(dir, "stubborn").await;
    assert_eq!(r.phase, pb::Phase::Cancelled as i32, "{r:?}\n{}", d.log());
    assert_eq!(r.signal, Some(9), "{r:?}");
    assert!(
        r.message.contains("(the runtime server stopped)"),
        "{}",
        r.message
    );
    let r = c
        .get(pb::GetRequest {
            run_id: "plain".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.phase, pb::Phase::Cancelled as i32, "{r:?}\n{}", d.log());
    assert_eq!(r.signal, Some(15), "{r:?}");
}

/// A short Run's first output is held in memory, not yet in the spool
/// files; a SIGKILL then loses nothing either: the restarted runtimed
/// re-attaches from offset 0 and the Runtime Server replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_output_held_in_memory_loses_nothing() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let gate = d.dir.path().join("gate");
    let script = format!(
        "echo early; echo warn >&2; while [ ! -e '{}' ]; do sleep 0.02; done; echo late",
        gate.display()
    );
    start_detached(&mut c, "held", &script).await;
    poll_until(&mut c, "held", |r| r.log_length == 11).await;
    assert!(
        !d.dir.path().join("spool").join("held.log").exists(),
        "the first output is held in memory"
    );
    drop(c);
    let dir = d.crash();
    std::fs::write(dir.path().join("gate"), b"").unwrap();
    let (d, mut c, r) = restart_and_wait(dir, "held").await;
    assert_eq!(r.phase, pb::Phase::Succeeded as i32, "{r:?}\n{}", d.log());
    // Each stream complete and in order (how the two interleave after a
    // replay depends on the order the server sends them in).
    for (stream, want) in [
        (pb::Stream::Stdout, &b"early\nlate\n"[..]),
        (pb::Stream::Stderr, &b"warn\n"[..]),
    ] {
        let got = read_all(&mut c, "held", stream).await;
        assert_eq!(got, want, "{stream:?}\n{}", d.log());
    }
    assert_eq!(
        read_all(&mut c, "held", pb::Stream::Unspecified)
            .await
            .len(),
        16
    );
    // Written once runtimed has a quiet moment after the result (at most a
    // few ms with no other Run): wait for it.
    let held = d.dir.path().join("spool").join("held.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !held.exists() {
        assert!(
            Instant::now() < deadline,
            "the held output was never written to the spool\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
