//! Start-up and teardown of private environments: `/readyz` answers, and
//! dropping the environment (normally or while a test panics) leaves no
//! process, namespace, mount or state directory behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kruntimes_testenv::process::processes_with_marker;
use kruntimes_testenv::{ControlPlaneOptions, TestEnv, TestEnvOptions};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

/// A Pod whose shell leaves a grandchild in its own session (escaping the
/// process group), so only the Pod's PID namespace can take it down.
fn escaping_pod() -> Pod {
    pod_from(json!({
        "metadata": {"name": "escaper"},
        "spec": {"containers": [{
            "name": "c", "image": "busybox",
            "command": ["sh", "-c", "setsid sleep 3600 & exec sleep 3600"],
        }]},
    }))
}

fn net_namespaces_in_use() -> Vec<u64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        for ns in ["net", "mnt"] {
            if let Ok(link) = std::fs::read_link(entry.path().join("ns").join(ns)) {
                let s = link.to_string_lossy();
                if let Some(ino) = s
                    .split('[')
                    .nth(1)
                    .and_then(|r| r.trim_end_matches(']').parse().ok())
                {
                    out.push(ino);
                }
            }
        }
    }
    out
}

/// Exists and is not a zombie (a dead child may wait a moment to be reaped).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(dir.to_string_lossy().as_ref()))
        .map(str::to_string)
        .collect()
}

/// Waits (bounded) until nothing carries the environment's marker.
fn assert_no_processes(id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_with_marker(id);
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            let cmds: Vec<String> = left
                .iter()
                .map(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                        .unwrap_or_default()
                        .replace('\0', " ")
                })
                .collect();
            panic!("processes of environment {id} survived teardown: {left:?} {cmds:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn run_escaping_pod(env: &TestEnv) {
    let ns = env.namespace().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client().await.unwrap(), &ns);
    pods.create(&PostParams::default(), &escaping_pod())
        .await
        .unwrap();
    wait_pod(&pods, "escaper", "Running", |p| phase(p) == "Running").await;
    // Wait for the setsid'd grandchild to exist too (3 processes: shim, sh->sleep, sleep).
    std::mem::forget(ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_reaches_readyz_and_teardown_leaves_nothing_behind() {
    let env = TestEnv::start(options()).await.unwrap();
    let client = env.client().await.unwrap();
    let readyz = client
        .request_text(http::Request::get("/readyz").body(Vec::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(readyz, "ok");
    run_escaping_pod(&env).await;

    let id = env.control_plane().id().to_string();
    let state_dir: PathBuf = env.control_plane().state_dir().to_path_buf();
    let namespaces: Vec<u64> = env
        .kubelet()
        .sandbox_namespaces()
        .into_iter()
        .flat_map(|(n, m)| [n, m])
        .collect();
    assert_eq!(
        namespaces.len(),
        2,
        "one sandbox: its net and mnt namespaces"
    );
    let procs = wait_for("the pod's processes", || async {
        let p = processes_with_marker(&id);
        // etcd, apiserver, controller-manager, the container's sleep and the
        // setsid'd sleep (the shim is a fork of this process: no marker).
        (p.len() >= 5).then_some(p)
    })
    .await;
    let shims = env.kubelet().container_pids();
    assert_eq!(shims.len(), 1, "one container shim");
    assert!(
        mounts_under(&state_dir).is_empty(),
        "pod mounts never reach the host namespace"
    );

    drop(env);

    assert_no_processes(&id);
    for pid in shims.iter().chain(&procs) {
        assert!(!running(*pid), "process {pid} survived");
    }
    assert!(!state_dir.exists(), "{} left behind", state_dir.display());
    let in_use = net_namespaces_in_use();
    for ino in namespaces {
        assert!(!in_use.contains(&ino), "namespace {ino} still in use");
    }
    assert!(mounts_under(&state_dir).is_empty());
}

#[test]
fn a_panicking_test_still_tears_down() {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let env = TestEnv::start(options()).await.unwrap();
            run_escaping_pod(&env).await;
            tx.send((
                env.control_plane().id().to_string(),
                env.control_plane().state_dir().to_path_buf(),
            ))
            .unwrap();
            panic!("deliberate panic while the environment runs");
        })
    });
    assert!(thread.join().is_err(), "the thread panicked");
    let (id, state_dir) = rx.recv().unwrap();
    assert_no_processes(&id);
    assert!(!state_dir.exists(), "{} left behind", state_dir.display());
}

#[tokio::test]
async fn missing_binaries_fail_naming_the_build_script() {
    let empty = tempfile::tempdir().unwrap();
    let opts = TestEnvOptions {
        control_plane: ControlPlaneOptions {
            bin_dir: Some(empty.path().to_path_buf()),
            ..ControlPlaneOptions::default()
        },
        ..TestEnvOptions::default()
    };
    let err = TestEnv::start(opts)
        .await
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("tests/controlplane/build.sh"), "{err}");
}
