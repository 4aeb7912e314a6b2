//! The data boundaries through the API: outputs, the per-Run log cap with its
//! in-band marker, the spool budget, tail/since followers and Forget.

mod common;

use common::{Daemon, execute, free_port, http_get, sh};
use kruntimes_proto::runtimed::v1 as pb;
use tonic::Code;

type Client = pb::runtimed_client::RuntimedClient<tonic::transport::Channel>;

async fn logs(
    c: &mut Client,
    req: pb::LogsRequest,
) -> Result<(Vec<u8>, Vec<pb::Truncated>), tonic::Status> {
    let mut s = c.logs(req).await?.into_inner();
    let (mut data, mut marks) = (Vec::new(), Vec::new());
    while let Some(m) = s.message().await? {
        match m.event {
            Some(pb::logs_response::Event::Output(o)) => data.extend_from_slice(&o.data),
            Some(pb::logs_response::Event::Truncated(t)) => marks.push(t),
            _ => {}
        }
    }
    Ok((data, marks))
}

/// The whole log of a Run (its markers ignored).
async fn log_of(c: &mut Client, run_id: &str) -> Vec<u8> {
    let req = pb::LogsRequest {
        run_id: run_id.into(),
        ..Default::default()
    };
    logs(c, req).await.expect("Logs").0
}

fn seq(n: u32) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_parsed_and_bounded() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let ok = execute(
        &mut c,
        sh(r#"printf '# results\n\nVERSION=1.2.3\nURL=http://x/?a=b\n' > "$KRUNTIMES_OUTPUTS""#),
    )
    .await;
    let run = ok.run.unwrap();
    assert_eq!(run.phase, pb::Phase::Succeeded as i32, "{}", run.message);
    assert_eq!(
        run.outputs.get("VERSION").map(String::as_str),
        Some("1.2.3")
    );
    assert_eq!(
        run.outputs.get("URL").map(String::as_str),
        Some("http://x/?a=b")
    );
    assert_eq!(run.outputs.len(), 2);

    let big = execute(
        &mut c,
        sh(r#"printf 'BLOB=%09000d\n' 0 > "$KRUNTIMES_OUTPUTS""#),
    )
    .await
    .run
    .unwrap();
    assert_eq!(big.phase, pb::Phase::Failed as i32);
    assert!(
        big.message.contains("BLOB")
            && big.message.contains("9000")
            && big.message.contains("8192"),
        "{}",
        big.message
    );
    assert!(big.outputs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_cap_truncates_with_a_marker_and_says_so() {
    let d = Daemon::start(&["--log-cap-bytes", "1000"]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let mut req = sh("seq 1 10000");
    req.run_id = "chatty".into();
    let out = execute(&mut c, req).await;
    let full = seq(10000);
    assert!(out.combined == full[..1000]);
    let mark = out.truncated.expect("in-band truncation marker");
    assert_eq!(mark.offset, 1000);
    let run = out.run.unwrap();
    assert_eq!(run.phase, pb::Phase::Succeeded as i32);
    assert!(run.log_truncated);
    assert_eq!(run.log_dropped_bytes, full.len() as u64 - 1000);
    assert!(
        run.message.contains("truncated") && run.message.contains("1000"),
        "{}",
        run.message
    );

    let (data, marks) = logs(
        &mut c,
        pb::LogsRequest {
            run_id: "chatty".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(data == full[..1000]);
    assert_eq!(marks.len(), 1);
}

/// The cap holds for a handed-off pipe too: a fast writer (1 MiB writes)
/// is taken over from the bash server after 4 MiB, and runtimed, draining
/// the pipe itself, keeps exactly the first 6 MiB and counts the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_cap_holds_for_a_handed_off_pipe() {
    const CAP: u64 = 6 << 20;
    let d = Daemon::start(&["--log-cap-bytes", &CAP.to_string()]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    // 7 million lines are 54.9 MB.
    let out = execute(
        &mut c,
        sh("seq 1 7000000 | dd bs=1M iflag=fullblock status=none"),
    )
    .await;
    let full = seq(7_000_000);
    assert!(
        out.combined == full[..CAP as usize],
        "{}",
        out.combined.len()
    );
    assert_eq!(out.truncated.expect("truncation marker").offset, CAP);
    let run = out.run.unwrap();
    assert_eq!(run.phase, pb::Phase::Succeeded as i32, "{}", run.message);
    assert!(run.log_truncated);
    assert_eq!(run.log_dropped_bytes, full.len() as u64 - CAP);
    assert!(d.log().contains("handed off"), "{}", d.log());
}

/// A process that escapes the group keeps a handed-off pipe open after the
/// Run's exit: runtimed stops waiting for EOF after its bounded wait, keeps
/// what it read, and the Run's message says why later output is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escaped_process_holding_a_handed_off_pipe_is_bounded() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    // 8 MiB in 1 MiB writes (handed off), then a process in a session of
    // its own keeps stdout open for 30 s after the leader exits.
    let out = execute(
        &mut c,
        sh(
            "head -c 8388608 /dev/zero | dd bs=1M iflag=fullblock status=none; \
            setsid sh -c 'touch left; exec sleep 30' & \
            while [ ! -e left ]; do sleep 0.01; done; echo $! >&2",
        ),
    )
    .await;
    // The escaped sleep is ours to end.
    if let Ok(pid) = String::from_utf8_lossy(&out.stderr).trim().parse::<i32>() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let run = out.run.unwrap();
    assert_eq!(run.phase, pb::Phase::Succeeded as i32, "{}", run.message);
    assert_eq!(out.stdout.len(), 8 << 20);
    assert!(
        run.message.contains("stdout was held open"),
        "{}\n{}",
        run.message,
        d.log()
    );
    assert!(d.log().contains("handed off"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_budget_evicts_oldest_finished_first() {
    let d = Daemon::start(&["--spool-budget-bytes", "100000"]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    for id in ["first", "second", "third"] {
        let mut req = sh("seq 1 10000"); // 48894 bytes each
        req.run_id = id.into();
        execute(&mut c, req).await;
    }
    let e = logs(
        &mut c,
        pb::LogsRequest {
            run_id: "first".into(),
            ..Default::default()
        },
    )
    .await
    .map(|(d, _)| d.len())
    .expect_err("the oldest spool is evicted");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("evicted"), "{}", e.message());
    // The Run itself is still known; the newer logs are intact.
    c.get(pb::GetRequest {
        run_id: "first".into(),
    })
    .await
    .unwrap();
    let data = log_of(&mut c, "third").await;
    assert!(data == seq(10000));
    let data = log_of(&mut c, "second").await;
    assert_eq!(data.len(), 48894);
}

/// Files in the spool directory whose name starts with `.recycled-`.
fn recycled(d: &Daemon) -> Vec<u64> {
    std::fs::read_dir(d.dir.path().join("spool"))
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(".recycled-") && name.ends_with(".log")
        })
        .map(|e| e.metadata().unwrap().len())
        .collect()
}

/// A forgotten Run's large log file is recycled by the next Run that prints
/// a lot (its Logs show only its own bytes), a short log's files by the next
/// short log, and under the spool budget the recycled files go before any
/// Run's log is evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_logs_are_recycled_and_yield_to_the_budget() {
    let metrics = free_port();
    let d = Daemon::start(&[
        "--spool-budget-bytes",
        "2100000",
        "--metrics-listen",
        &metrics,
    ])
    .await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let forget = |c: &mut Client, id: &str| {
        let req = pb::ForgetRequest { run_id: id.into() };
        let mut c = c.clone();
        async move { c.forget(req).await.unwrap() }
    };
    let mut big = sh("head -c 2000000 /dev/zero | tr '\\0' a");
    big.run_id = "big".into();
    assert_eq!(execute(&mut c, big).await.stdout.len(), 2_000_000);
    forget(&mut c, "big").await;
    assert_eq!(recycled(&d), [2_000_000], "{}", d.log());

    let mut next = sh("seq 1 300000"); // 1988895 bytes
    next.run_id = "next".into();
    execute(&mut c, next).await;
    assert!(recycled(&d).is_empty(), "taken by the next large log");
    let body = http_get(&metrics, "/metrics").await;
    assert!(
        body.contains("runtimed_spool_files_recycled_total 1"),
        "{body}"
    );
    let data = log_of(&mut c, "next").await;
    assert!(data == seq(300000), "only its own bytes");
    let file = d.dir.path().join("spool/next.log");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1_988_895);
    forget(&mut c, "next").await;
    assert_eq!(recycled(&d), [1_988_895]);

    // Short Runs (their output held, then persisted) leave the large file
    // alone until the budget is exceeded: then the shelf goes, not their logs.
    for id in ["a", "b", "c"] {
        let mut req = sh("seq 1 10000"); // 48894 bytes each
        req.run_id = id.into();
        execute(&mut c, req).await;
    }
    assert!(recycled(&d).is_empty(), "discarded for the budget");
    for id in ["a", "b", "c"] {
        let data = log_of(&mut c, id).await;
        assert!(data == seq(10000), "{id}'s log is intact");
    }

    // A forgotten short log's files serve the next short log. (They are
    // written just after the result went out: wait for them.)
    let inode = |id: &str| {
        use std::os::unix::fs::MetadataExt;
        let spool = d.dir.path().join("spool");
        let ino = |ext: &str| {
            let path = spool.join(format!("{id}.{ext}"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match std::fs::metadata(&path) {
                    Ok(m) => return m.ino(),
                    Err(e) if std::time::Instant::now() > deadline => {
                        panic!("{}: {e}\n{}", path.display(), d.log())
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        };
        (ino("log"), ino("idx"))
    };
    let a = inode("a");
    // b's and c's too: c's is written up to 5 ms after its result (see
    // runtimed/src/tidy.rs), and would otherwise take a's files first.
    inode("b");
    inode("c");
    forget(&mut c, "a").await;
    assert_eq!(recycled(&d), [48894]);
    let mut req = sh("seq 1 9000"); // 43893 bytes
    req.run_id = "d".into();
    execute(&mut c, req).await;
    // Persisted just after the result went out.
    for _ in 0..250 {
        if recycled(&d).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(recycled(&d).is_empty(), "taken by the next short log");
    assert_eq!(inode("d"), a);
    assert!(log_of(&mut c, "d").await == seq(9000), "only its own bytes");
    let file = d.dir.path().join("spool/d.log");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 43893);
    let body = http_get(&metrics, "/metrics").await;
    assert!(
        body.contains("runtimed_spool_files_recycled_total 2"),
        "{body}"
    );
}

/// Spool files of finished Runs (kept until Forget or eviction) hold no
/// descriptor: retained Runs cannot exhaust runtimed's descriptor limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_hold_no_descriptors() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .count()
    };
    let first = execute(&mut c, sh("echo out; echo err >&2")).await;
    assert_eq!(first.stdout, b"out\n");
    let before = fds();
    for _ in 0..20 {
        let out = execute(&mut c, sh("echo out; echo err >&2")).await;
        assert_eq!(
            (&out.stdout[..], &out.stderr[..]),
            (&b"out\n"[..], &b"err\n"[..])
        );
    }
    // Two per Run (data and index) if they were kept; a few spare for the
    // connections runtimed may have opened meanwhile.
    let after = fds();
    assert!(
        after < before + 10,
        "descriptors {before} -> {after} over 20 Runs"
    );
    let last = c.list(pb::ListRequest {}).await.unwrap().into_inner().runs;
    assert_eq!(last.len(), 21, "the Runs and their logs are all retained");
    let (got, _) = logs(
        &mut c,
        pb::LogsRequest {
            run_id: first.run.expect("run").run_id,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        got, b"out\nerr\n",
        "a finished Run's log is read from its file"
    );
}

/// Finished Runs nobody forgets are bounded: past `--max-finished-runs` the
/// oldest are forgotten, record and log, and a restart does not bring them
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_finished_runs_are_forgotten_past_the_bound() {
    // bash only: after the crash below, no python server is left to adopt.
    let flags = ["--max-finished-runs", "3", "--local-runtimes", "bash"];
    let d = Daemon::start(&flags).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    for id in ["r1", "r2", "r3", "r4", "r5"] {
        let mut req = sh("echo hello");
        req.run_id = id.into();
        assert_eq!(execute(&mut c, req).await.stdout, b"hello\n");
    }
    let ids = |runs: Vec<pb::Run>| runs.into_iter().map(|r| r.run_id).collect::<Vec<_>>();
    let list = c.list(pb::ListRequest {}).await.unwrap().into_inner().runs;
    assert_eq!(ids(list), ["r3", "r4", "r5"]);
    let gone = c
        .get(pb::GetRequest {
            run_id: "r1".into(),
        })
        .await
        .expect_err("r1 was forgotten");
    assert_eq!(gone.code(), Code::NotFound);
    let data = log_of(&mut c, "r3").await;
    assert_eq!(data, b"hello\n");
    let spools = std::fs::read_dir(d.dir.path().join("spool"))
        .unwrap()
        .count();
    assert_eq!(spools, 6, "data and index of the three kept Runs");
    let d = Daemon::start_in(d.crash(), &flags).await;
    // Adopts the bash server left running (or it would outlive the test).
    d.wait_ready("bash").await;
    let mut c = d.client();
    let list = c.list(pb::ListRequest {}).await.unwrap().into_inner().runs;
    assert_eq!(ids(list), ["r3", "r4", "r5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_since_and_forget() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let mut req = sh("seq 1 100; echo oops >&2");
    req.run_id = "t".into();
    execute(&mut c, req).await;
    let tail = |n, stream| pb::LogsRequest {
        run_id: "t".into(),
        tail_lines: n,
        stream,
        ..Default::default()
    };
    // Across streams the arrival order is the pipes' race: compare with the
    // last lines of the combined log as spooled.
    let all = logs(&mut c, tail(1000, 0)).await.unwrap().0;
    let last3: Vec<&[u8]> = all.split_inclusive(|b| *b == b'\n').rev().take(3).collect();
    let last3: Vec<u8> = last3.into_iter().rev().flatten().copied().collect();
    assert_eq!(logs(&mut c, tail(3, 0)).await.unwrap().0, last3);
    assert_eq!(
        all.len(),
        b"oops\n".len() + (1..=100).map(|i| format!("{i}\n").len()).sum::<usize>()
    );
    assert_eq!(
        logs(&mut c, tail(2, pb::Stream::Stdout as i32))
            .await
            .unwrap()
            .0,
        b"99\n100\n"
    );
    let later = kruntimes_proto::time::to_timestamp(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    );
    let since = pb::LogsRequest {
        run_id: "t".into(),
        since: Some(later),
        ..Default::default()
    };
    assert!(logs(&mut c, since).await.unwrap().0.is_empty());
    let since = pb::LogsRequest {
        run_id: "t".into(),
        since: Some(prost_types::Timestamp::default()),
        ..Default::default()
    };
    assert_eq!(logs(&mut c, since).await.unwrap().0.len(), 292 + 5);

    let mut running = sh("sleep 30");
    running.run_id = "busy".into();
    running.detach = true;
    execute(&mut c, running).await;
    let e = c
        .forget(pb::ForgetRequest {
            run_id: "busy".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    c.forget(pb::ForgetRequest { run_id: "t".into() })
        .await
        .unwrap();
    assert_eq!(
        c.get(pb::GetRequest { run_id: "t".into() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert!(!d.dir.path().join("spool/t.log").exists());
    // Its record is gone too: the journal's last word on it is a tombstone.
    let journal = std::fs::read_to_string(d.dir.path().join("runs.journal")).unwrap();
    let last = journal.lines().rfind(|l| l.contains("\"t\""));
    assert_eq!(last, Some(r#"{"forget":"t"}"#), "{journal}");
}
