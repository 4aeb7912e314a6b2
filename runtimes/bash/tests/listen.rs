//! The bash server binary's listening and lifecycle behaviour: private Unix
//! socket (mode 0600), stale socket replaced but never a live one or a
//! regular file, loopback-only TCP, workspace created, clean exit on SIGTERM.
//! (The protocol itself is covered by the conformance suite.)
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kruntimes_conformance::client::{Addr, connect};
use kruntimes_proto::runtime::v1::HandshakeRequest;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_kruntimes-bash-runtime");

fn spawn(args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn wait_ready(
    addr: &Addr,
    child: &mut Child,
) -> kruntimes_proto::runtime::v1::HandshakeResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(child.try_wait().unwrap().is_none(), "server exited early");
        if let Ok(mut c) = connect(addr).await
            && let Ok(r) = c.handshake(HandshakeRequest::default()).await
        {
            return r.into_inner();
        }
        assert!(Instant::now() < deadline, "server not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Async, so the test's client connections can answer the server's GOAWAY.
async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "server ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stderr_of(child: Child) -> String {
    String::from_utf8_lossy(&child.wait_with_output().unwrap().stderr).into_owned()
}

#[tokio::test]
async fn unix_socket_is_private_and_removed_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("run/rs.sock");
    let ws = tmp.path().join("new/ws");
    // A stale socket left by a dead server is replaced.
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());

    let listen = format!("unix:{}", sock.display());
    let mut child = spawn(&["--listen", &listen, "--workspace", ws.to_str().unwrap()]);
    let addr = Addr::Unix(sock.clone());
    let h = wait_ready(&addr, &mut child).await;
    assert!(h.ready, "{}", h.message);
    assert_eq!(h.runtime, "bash");
    assert_eq!(h.max_executions, 256);
    assert_eq!(
        Path::new(&h.workspace_root),
        std::fs::canonicalize(&ws).unwrap()
    );

    let meta = std::fs::metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "socket must be private"
    );

    // A second server must not steal the live socket.
    let second = spawn(&["--listen", &listen, "--workspace", ws.to_str().unwrap()]);
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another server is listening"));

    assert!(terminate(&mut child).await.success());
    assert!(!sock.exists(), "socket removed on exit");
}

#[tokio::test]
async fn refuses_to_replace_a_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let not_sock = tmp.path().join("data");
    std::fs::write(&not_sock, "keep me").unwrap();
    let child = spawn(&[
        "--listen",
        &format!("unix:{}", not_sock.display()),
        "--workspace",
        tmp.path().join("ws").to_str().unwrap(),
    ]);
    let err = stderr_of(child);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&not_sock).unwrap(), "keep me");
}

#[tokio::test]
async fn tcp_only_on_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let out = Command::new(BIN)
        .args([
            "--listen",
            "0.0.0.0:7777",
            "--workspace",
            ws.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hostport = format!("127.0.0.1:{port}");
    let mut child = spawn(&["--listen", &hostport, "--workspace", ws.to_str().unwrap()]);
    let h = wait_ready(&Addr::Tcp(hostport), &mut child).await;
    assert!(h.ready, "{}", h.message);
    assert!(terminate(&mut child).await.success());
}

#[tokio::test]
async fn flags_come_from_the_environment_too() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("env.sock");
    let mut child = Command::new(BIN)
        .env("KRUNTIMES_LISTEN", format!("unix:{}", sock.display()))
        .env("KRUNTIMES_WORKSPACE", tmp.path().join("ws"))
        .env("KRUNTIMES_MAX_EXECUTIONS", "7")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let h = wait_ready(&Addr::Unix(sock), &mut child).await;
    assert_eq!(h.max_executions, 7);
    assert!(terminate(&mut child).await.success());
}

#[tokio::test]
async fn missing_bash_means_not_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("rs.sock");
    let mut child = Command::new(BIN)
        .args(["--listen", &format!("unix:{}", sock.display())])
        .args(["--workspace", tmp.path().join("ws").to_str().unwrap()])
        .args(["--bash", "/nonexistent/bash"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let h = wait_ready(&Addr::Unix(sock), &mut child).await;
    assert!(!h.ready);
    assert!(h.message.contains("/nonexistent/bash"), "{}", h.message);
    assert!(terminate(&mut child).await.success());
}
