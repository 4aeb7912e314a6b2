//! krt end to end with real runtimed, Runtime Server and child processes.

mod common;

use common::{Runtimed, bin, free_port, krt, run, text};
use std::process::Stdio;
use std::time::Duration;

#[test]
fn local_runs_bash_and_exits_with_the_runs_code() {
    bin("runtimed");
    bin("kruntimes-bash-runtime");
    let out = run(krt().args([
        "local",
        "--",
        "bash",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(
        text(&out.stderr).starts_with("err\n"),
        "{}",
        text(&out.stderr)
    );

    let out = run(krt().args(["local", "--", "sh", "-c", "kill -TERM $$"]));
    assert_eq!(out.status.code(), Some(128 + 15));

    let out = run(krt().args([
        "local",
        "--timeout",
        "200ms",
        "--grace",
        "100ms",
        "--",
        "sleep",
        "30",
    ]));
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));

    let out = run(krt().args(["local"]));
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("nothing to run"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn local_runs_python_on_the_warm_server() {
    let python = std::env::var("KRUNTIMES_PYTHON").expect(
        "KRUNTIMES_PYTHON must name the python Runtime Server's interpreter: \
         KRUNTIMES_PYTHON=$(bash runtimes/python/scripts/venv.sh | tail -1) (tests/run.sh sets it)",
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hello.py");
    std::fs::write(
        &script,
        "import sys\nprint('hello', sys.argv[1:])\nsys.exit(4)\n",
    )
    .unwrap();
    let out = run(krt()
        .env("KRUNTIMES_PYTHON", &python)
        .args(["local", "--script"])
        .arg(&script)
        .args(["--", "a", "b"]));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello ['a', 'b']\n");
    let out = run(krt().env("KRUNTIMES_PYTHON", &python).args([
        "local",
        "--",
        "python3",
        "-c",
        "print(6*7)",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42\n");
}

#[test]
fn run_get_list_logs_wait_cancel_against_a_runtimed() {
    let data = tempfile::tempdir().unwrap();
    let d = Runtimed::start(data.path(), free_port(), &[]);
    let a = d.addr.as_str();
    let out = run(krt().args([
        "--addr",
        a,
        "run",
        "--id",
        "r1",
        "-e",
        "WHO=world",
        "--",
        "sh",
        "-c",
        "seq 1 5; echo \"hi $WHO\"",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n3\n4\n5\nhi world\n");

    let out = run(krt().args(["--addr", a, "logs", "r1", "--tail", "2"]));
    assert_eq!(text(&out.stdout), "5\nhi world\n");
    let out = run(krt().args(["--addr", a, "logs", "r1", "--offset", "8"]));
    assert_eq!(text(&out.stdout), "5\nhi world\n");

    let out = run(krt().args(["--addr", a, "get", "r1", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["phase"], "Succeeded");
    assert_eq!(v["exitCode"], 0);

    let out = run(krt().args([
        "--addr", a, "run", "-d", "--id", "sleeper", "--", "sleep", "60",
    ]));
    assert_eq!(text(&out.stdout), "sleeper\n");
    let out = run(krt().args(["--addr", a, "list"]));
    assert!(
        text(&out.stdout).contains("sleeper") && text(&out.stdout).contains("Running"),
        "{}",
        text(&out.stdout)
    );
    let out = run(krt().args(["--addr", a, "cancel", "sleeper", "--grace", "100ms"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(krt().args(["--addr", a, "wait", "sleeper", "--timeout", "30s"]));
    assert_eq!(out.status.code(), Some(130));
    assert!(text(&out.stdout).contains("Cancelled"));

    let out = run(krt().args(["--addr", a, "get", "nope"]));
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("nope") && text(&out.stderr).contains("NotFound"),
        "{}",
        text(&out.stderr)
    );
}

/// `krt logs -f` keeps following across a runtimed crash and restart and
/// prints every line exactly once.
#[test]
fn logs_follow_survives_a_runtimed_restart() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = Runtimed::start(data.path(), port, &[]);
    let a = d.addr.clone();
    let out = run(krt().args([
        "--addr",
        &a,
        "run",
        "-d",
        "--id",
        "slow",
        "--",
        "sh",
        "-c",
        "for i in $(seq 1 40); do echo line $i; sleep 0.05; done",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let follower = krt()
        .args(["--addr", &a, "logs", "-f", "slow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    // SIGKILL runtimed mid-Run, then start it again on the same port and data.
    let mut d = d;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    std::mem::forget(d);
    std::thread::sleep(Duration::from_millis(300));
    let _d2 = Runtimed::start(data.path(), port, &[]);
    let out = follower.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let want: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    assert_eq!(text(&out.stdout), want);
    assert!(
        text(&out.stderr).contains("reconnecting"),
        "{}",
        text(&out.stderr)
    );
}
