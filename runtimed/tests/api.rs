//! runtimed through its public gRPC API, with real Runtime Server processes
//! and real child processes.

mod common;

use common::{Daemon, cmd, execute, free_port, http_get, sh};
use kruntimes_proto::runtimed::v1 as pb;
use std::time::Duration;
use tonic::Code;

fn phase(r: &pb::Run) -> pb::Phase {
    pb::Phase::try_from(r.phase).expect("phase")
}

/// `--worker-threads` above 1 gives a multi-threaded scheduler; Runs and
/// their output behave the same on it (the default, 1, is what every other
/// test here runs on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_a_multi_threaded_runtimed_too() {
    let d = Daemon::start(&["--worker-threads", "3"]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let out = execute(&mut c, sh("echo out; echo err >&2; exit 4")).await;
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(out.run.expect("exited").exit_code, Some(4));
    // It really is multi-threaded: three tokio workers (blocking-pool
    // threads, if any, carry the same name, hence at least).
    let workers = std::fs::read_dir(format!("/proc/{}/task", d.pid()))
        .expect("task dir")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("tokio-r"))
        .count();
    assert!(workers >= 3, "{workers} tokio threads");
}

/// The API socket appears only once it listens and is private: it is bound
/// in a private staging directory and renamed into place, which leaves
/// nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_socket_appears_private_and_alone() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let d = Daemon::start(&[]).await;
    let meta = std::fs::metadata(&d.socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir = d.socket.parent().expect("dir");
    let temp: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".tmp") || name.starts_with(".bind-")
        })
        .collect();
    assert!(temp.is_empty(), "{temp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_streams_both_streams_and_the_exit() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let out = execute(&mut c, sh("echo out1; echo err1 >&2; echo out2; exit 7")).await;
    assert!(out.accepted && out.started);
    assert_eq!(out.stdout, b"out1\nout2\n");
    assert_eq!(out.stderr, b"err1\n");
    let run = out.run.expect("exited");
    assert_eq!(phase(&run), pb::Phase::Failed);
    assert_eq!(run.exit_code, Some(7));
    assert!(run.message.contains("code 7"), "{}", run.message);
    assert!(run.started_at.is_some() && run.finished_at.is_some());

    let ok = execute(&mut c, cmd("bash", &["true"]))
        .await
        .run
        .expect("run");
    assert_eq!((phase(&ok), ok.exit_code), (pb::Phase::Succeeded, Some(0)));

    let killed = execute(&mut c, sh("kill -9 $$")).await.run.expect("run");
    assert_eq!(
        (phase(&killed), killed.exit_code, killed.signal),
        (pb::Phase::Failed, None, Some(9))
    );
    assert!(killed.message.contains("SIGKILL"), "{}", killed.message);

    // Get, List and Wait agree with what the stream said.
    let got = c
        .get(pb::GetRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.exit_code, Some(7));
    assert_eq!(got.log_length, 15);
    let waited = c
        .wait(pb::WaitRequest {
            run_id: run.run_id.clone(),
            timeout_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(waited.phase, run.phase);
    let list = c.list(pb::ListRequest {}).await.unwrap().into_inner().runs;
    assert_eq!(list.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_env_and_working_dir() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let mut req = pb::ExecuteRequest {
        runtime: "bash".into(),
        program: Some(pb::execute_request::Program::Script(pb::Script {
            source: b"echo \"$1 $GREETING\"; pwd".to_vec().into(),
            args: vec!["hello".into()],
            filename: "greet.sh".into(),
        })),
        working_dir: "sub/dir".into(),
        ..Default::default()
    };
    req.env.insert("GREETING".into(), "world".into());
    let out = execute(&mut c, req).await;
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("hello world"));
    assert!(lines.next().unwrap().ends_with("/sub/dir"), "{text}");
}

/// A client that drops the Execute stream mid-output and re-attaches with
/// Logs from the last offset it saw receives every byte exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattach_after_disconnect_gets_every_byte_once() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let expected: Vec<u8> = (1..=300_000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    let mut req = sh("seq 1 100000; sleep 0.3; seq 100001 200000; sleep 0.3; seq 200001 300000");
    req.run_id = "reattach".into();
    let mut s = c.execute(req).await.unwrap().into_inner();
    let mut got = Vec::new();
    while got.len() < 100_000 {
        if let Some(pb::run_event::Event::Output(o)) = s.message().await.unwrap().unwrap().event {
            assert_eq!(o.offset as usize, got.len());
            got.extend_from_slice(&o.data);
        }
    }
    drop(s); // the client goes away mid-stream
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut c2 = d.client();
    let mut logs = c2
        .logs(pb::LogsRequest {
            run_id: "reattach".into(),
            offset: got.len() as u64,
            follow: true,
            stream: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut end = None;
    while let Some(m) = logs.message().await.unwrap() {
        match m.event.unwrap() {
            pb::logs_response::Event::Output(o) => {
                assert_eq!(o.offset as usize, got.len(), "no gap, no overlap");
                got.extend_from_slice(&o.data);
            }
            pb::logs_response::Event::End(e) => end = e.run,
            pb::logs_response::Event::Truncated(t) => panic!("unexpected truncation {t:?}"),
        }
    }
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes differ");
    assert_eq!(phase(&end.expect("end marker")), pb::Phase::Succeeded);

    // A follower may also attach later, from any offset, and filter a stream.
    let mut logs = c2
        .logs(pb::LogsRequest {
            run_id: "reattach".into(),
            offset: 7,
            follow: false,
            stream: pb::Stream::Stdout as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut tail = Vec::new();
    while let Some(m) = logs.message().await.unwrap() {
        if let Some(pb::logs_response::Event::Output(o)) = m.event {
            tail.extend_from_slice(&o.data);
        }
    }
    assert_eq!(tail, expected[7..]);
    let past = c2
        .logs(pb::LogsRequest {
            run_id: "reattach".into(),
            offset: 10 << 20,
            follow: false,
            stream: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message()
        .await;
    assert_eq!(past.unwrap_err().code(), Code::OutOfRange);
}

/// Output of a chatty child is coalesced into large messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatty_output_is_coalesced() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let out = execute(&mut c, sh("seq 1 200000")).await;
    assert_eq!(out.stdout.iter().filter(|b| **b == b'\n').count(), 200_000);
    assert!(
        out.messages < 2_000,
        "{} messages for 200000 lines",
        out.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_clear_errors() {
    let d = Daemon::start(&["--max-runs", "2"]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();

    let e = err(c.execute(cmd("bash", &[])).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("argv"), "{}", e.message());

    let e = err(c
        .execute(pb::ExecuteRequest {
            runtime: "bash".into(),
            ..Default::default()
        })
        .await);
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = err(c.execute(cmd("cobol", &["true"])).await);
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("cobol") && e.message().contains("bash"),
        "{}",
        e.message()
    );

    let mut bad_env = cmd("bash", &["true"]);
    bad_env.env.insert("A=B".into(), "x".into());
    let e = err(c.execute(bad_env).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("A=B"), "{}", e.message());

    let mut nul_env = cmd("bash", &["true"]);
    nul_env.env.insert("A\0".into(), "x".into());
    assert_eq!(err(c.execute(nul_env).await).code(), Code::InvalidArgument);

    let mut outside = cmd("bash", &["true"]);
    outside.working_dir = "../../etc".into();
    let e = err(c.execute(outside).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("working_dir"), "{}", e.message());

    let many: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
    let e = err(c.execute(cmd("bash", &many)).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("4096"), "{}", e.message());

    let mut bad_id = cmd("bash", &["true"]);
    bad_id.run_id = "../x".into();
    assert_eq!(err(c.execute(bad_id).await).code(), Code::InvalidArgument);

    let e = c
        .get(pb::GetRequest {
            run_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("nope"));

    // Duplicate id while running; then the concurrency limit.
    let mut first = sh("sleep 30");
    first.run_id = "dup".into();
    first.detach = true;
    let _ = execute(&mut c, first.clone()).await;
    let e = err(c.execute(first).await);
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains("dup"), "{}", e.message());
    let mut second = sh("sleep 30");
    second.detach = true;
    let _ = execute(&mut c, second).await;
    let e = err(c.execute(sh("true")).await);
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("2"), "{}", e.message());

    // Cancelling frees a slot.
    let r = c
        .cancel(pb::CancelRequest {
            run_id: "dup".into(),
            grace_period_ms: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.run_id, "dup");
    let r = c
        .wait(pb::WaitRequest {
            run_id: "dup".into(),
            timeout_ms: 30_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&r), pb::Phase::Cancelled);
    let ok = execute(&mut c, sh("true")).await.run.unwrap();
    assert_eq!(phase(&ok), pb::Phase::Succeeded);

    // Wait with a timeout on a running Run.
    let running = list_running(&mut c).await;
    let e = c
        .wait(pb::WaitRequest {
            run_id: running,
            timeout_ms: 50,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
}

fn err<T>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    r.err().expect("an error")
}

async fn list_running(
    c: &mut pb::runtimed_client::RuntimedClient<tonic::transport::Channel>,
) -> String {
    c.list(pb::ListRequest {})
        .await
        .unwrap()
        .into_inner()
        .runs
        .into_iter()
        .find(|r| r.phase == pb::Phase::Running as i32)
        .expect("a running run")
        .run_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_cancel_end_runs() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let mut req = sh("echo started; sleep 60");
    req.timeout_ms = 300;
    req.grace_period_ms = 200;
    let out = execute(&mut c, req).await;
    let run = out.run.unwrap();
    assert_eq!(phase(&run), pb::Phase::Timeout);
    assert_eq!(out.stdout, b"started\n");
    assert!(run.message.contains("300 ms"), "{}", run.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_runtime_server_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let sock = format!("bash=unix:{}/absent.sock", dir.path().display());
    let d = Daemon::start(&["--runtime", &sock]).await;
    let mut c = d.client();
    let e = c.execute(sh("true")).await.expect_err("error");
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("absent.sock"), "{}", e.message());
}

/// Children of `pid` named `name` (from /proc).
fn children_named(pid: i32, name: &str) -> Vec<i32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let comm = &stat[stat.find('(').unwrap() + 1..close];
        let ppid: i32 = stat[close + 2..]
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        if ppid == pid && name.starts_with(comm) {
            out.push(p);
        }
    }
    out
}

/// A Runtime Server crash mid-Run fails that Run with a reason that says so;
/// runtimed restarts the server and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_server_crash_fails_the_run_and_is_recovered() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let mut req = sh("echo before; sleep 30");
    req.run_id = "victim".into();
    let mut s = c.execute(req).await.unwrap().into_inner();
    // Wait for the first output, so the Run is really running.
    loop {
        if let Some(pb::run_event::Event::Output(_)) = s.message().await.unwrap().unwrap().event {
            break;
        }
    }
    let servers = children_named(d.pid(), "kruntimes-bash-runtime");
    assert_eq!(servers.len(), 1, "one bash server child of runtimed");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(servers[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let r = c
        .wait(pb::WaitRequest {
            run_id: "victim".into(),
            timeout_ms: 30_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(phase(&r), pb::Phase::Failed);
    assert!(
        r.message.contains("crashed") && r.message.contains("signal 9"),
        "{}",
        r.message
    );

    d.wait_ready("bash").await;
    let ok = execute(&mut c, sh("echo after")).await;
    assert_eq!(ok.stdout, b"after\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_runs() {
    let addr = free_port();
    let d = Daemon::start(&["--metrics-listen", &addr]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    execute(&mut c, sh("true")).await;
    execute(&mut c, sh("exit 1")).await;
    let body = http_get(&addr, "/metrics").await;
    assert!(
        body.contains("runtimed_runs_finished_total{runtime=\"bash\",result=\"Succeeded\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("runtimed_runs_finished_total{runtime=\"bash\",result=\"Failed\"} 1"),
        "{body}"
    );
    assert!(body.contains("runtimed_runs_active 0"), "{body}");
    assert!(
        body.contains("runtimed_run_duration_seconds_count{runtime=\"bash\"} 2"),
        "{body}"
    );
}

/// A process holding the Runtime Server's socket that does not pass the
/// handshake (here: it accepts nothing) is not adopted and not left running:
/// runtimed stops it and starts a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_left_running_that_cannot_be_adopted_is_stopped() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&sockets).unwrap();
    // Its own process binds and listens, so SO_PEERCRED names it.
    let mut squatter = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket, sys, time\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.bind(sys.argv[1]); s.listen(8)\n\
             print('listening', flush=True)\n\
             time.sleep(600)\n",
        ])
        .arg(sockets.join("bash.sock"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(squatter.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "listening\n");
    let d = Daemon::start_in(dir, &[]).await;
    d.wait_ready("bash").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = squatter.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = squatter.kill();
            panic!("the squatter was left running");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.signal(),
        Some(15),
        "stopped with SIGTERM: {status:?}"
    );
    let mut c = d.client();
    let ok = execute(&mut c, sh("echo served")).await;
    assert_eq!(ok.stdout, b"served\n");
}
