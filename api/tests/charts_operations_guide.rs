//! The operations guide (docs/operations.md, from spec/operations-guide.zh.txt),
//! command by command and in order, against the real control plane with the
//! harness's helm and kubectl: install, upgrade with --reuse-values (including the
//! CRD step Helm cannot do), verification, backup, restore, troubleshooting reads,
//! uninstall with --ignore-not-found, and what must survive the uninstall.
//!
//! The controller and scheduler binaries do not exist yet, so their Pods cannot
//! start: this test checks what the charts and the API provide, not Runtime Pods.

mod common;

use std::path::Path;

use kruntimes_testenv::TestEnv;
use serde_json::Value;

const SCHEDULER_IMAGE: &str = "ghcr.io/kruntimes/scheduler:0.1.0";
const CONTROLLER_IMAGE: &str = "ghcr.io/kruntimes/controller:0.1.0";
const RUNTIMED_IMAGE: &str = "ghcr.io/kruntimes/runtimed:0.1.0";
const BASH_IMAGE: &str = "ghcr.io/kruntimes/bash-runtime:0.1.0";
const PYTHON_IMAGE: &str = "ghcr.io/kruntimes/python-runtime@sha256:3333333333333333333333333333333333333333333333333333333333333333";

/// Runs a command from the repository root; returns (success, stdout, stderr).
async fn exec(mut cmd: tokio::process::Command, args: &[&str]) -> (bool, String, String) {
    let out = cmd
        .args(args)
        .current_dir(common::repo_root())
        .output()
        .await
        .expect("spawn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn helm_ok(env: &TestEnv, args: &[&str]) -> String {
    let (ok, stdout, stderr) = exec(env.helm(), args).await;
    assert!(ok, "helm {} failed:\n{stderr}", args.join(" "));
    stdout
}

async fn kubectl_ok(env: &TestEnv, args: &[&str]) -> String {
    let (ok, stdout, stderr) = exec(env.kubectl(), args).await;
    assert!(ok, "kubectl {} failed:\n{stderr}", args.join(" "));
    stdout
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write backup");
    path
}

#[tokio::test]
async fn operations_guide_end_to_end() {
    let env = TestEnv::shared().await.expect("test environment");
    let backup = tempfile::tempdir().expect("tempdir");

    // Install: platform once per cluster, then the runtimes in a workload namespace.
    let set_s = format!("scheduler.image={SCHEDULER_IMAGE}");
    let set_c = format!("controller.image={CONTROLLER_IMAGE}");
    let set_r = format!("runtimed.image={RUNTIMED_IMAGE}");
    let notes = helm_ok(
        env,
        &[
            "upgrade",
            "--install",
            "kruntimes",
            "./charts/kruntimes",
            "--namespace",
            "kruntimes-system",
            "--create-namespace",
            "--set",
            &set_s,
            "--set",
            &set_c,
            "--set",
            &set_r,
        ],
    )
    .await;
    assert!(
        notes.contains(RUNTIMED_IMAGE),
        "NOTES names the images:\n{notes}"
    );
    let set_b = format!("bash.image={BASH_IMAGE}");
    let set_p = format!("python.image={PYTHON_IMAGE}");
    helm_ok(
        env,
        &[
            "upgrade",
            "--install",
            "kruntimes-runtimes",
            "./charts/kruntimes-runtimes",
            "--namespace",
            "default",
            "--create-namespace",
            "--set",
            &set_b,
            "--set",
            &set_p,
        ],
    )
    .await;

    // The installed CRDs are the committed ones, and a user's Run is accepted.
    let crds = kubectl_ok(
        env,
        &[
            "get",
            "crd",
            "runs.kruntimes.io",
            "runtimes.kruntimes.io",
            "workflows.kruntimes.io",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(crds.lines().count(), 3, "{crds}");
    let run = common::repo_root().join("api/tests/fixtures/run-hello.yaml");
    kubectl_ok(
        env,
        &["apply", "-n", "default", "-f", run.to_str().unwrap()],
    )
    .await;

    // Upgrade, platform first. Helm does not upgrade CRDs: with stale CRDs in the
    // cluster the platform chart refuses and says what to run.
    kubectl_ok(
        env,
        &[
            "annotate",
            "crd",
            "runs.kruntimes.io",
            "kruntimes.io/schema-hash=sha256:stale",
            "--overwrite",
        ],
    )
    .await;
    let (ok, _, stderr) = exec(
        env.helm(),
        &[
            "upgrade",
            "kruntimes",
            "./charts/kruntimes",
            "--namespace",
            "kruntimes-system",
            "--reuse-values",
        ],
    )
    .await;
    assert!(!ok, "upgrade over stale CRDs must fail");
    assert!(
        stderr.contains("runs.kruntimes.io")
            && stderr.contains(
                "kubectl apply --server-side --force-conflicts -f charts/kruntimes/crds/"
            ),
        "{stderr}"
    );
    kubectl_ok(
        env,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "charts/kruntimes/crds/",
        ],
    )
    .await;
    helm_ok(
        env,
        &[
            "upgrade",
            "kruntimes",
            "./charts/kruntimes",
            "--namespace",
            "kruntimes-system",
            "--reuse-values",
        ],
    )
    .await;
    helm_ok(
        env,
        &[
            "upgrade",
            "kruntimes-runtimes",
            "./charts/kruntimes-runtimes",
            "--namespace",
            "default",
            "--reuse-values",
        ],
    )
    .await;

    // Verify after the upgrade.
    let deploys = kubectl_ok(env, &["get", "deploy", "-n", "kruntimes-system"]).await;
    assert!(
        deploys.contains("kruntimes-scheduler") && deploys.contains("kruntimes-controller"),
        "{deploys}"
    );
    let objects = kubectl_ok(env, &["get", "runtime,runs", "-A"]).await;
    for name in [
        "runtime.kruntimes.io/bash",
        "runtime.kruntimes.io/python",
        "run.kruntimes.io/hello",
    ] {
        assert!(objects.contains(name), "{name} missing from:\n{objects}");
    }
    kubectl_ok(env, &["get", "pods", "-A", "-l", "runtime"]).await;
    // --reuse-values kept the images given at install.
    let images = kubectl_ok(
        env,
        &[
            "get",
            "deploy",
            "-n",
            "kruntimes-system",
            "-o",
            "jsonpath={..image} {..args}",
        ],
    )
    .await;
    for image in [SCHEDULER_IMAGE, CONTROLLER_IMAGE, RUNTIMED_IMAGE] {
        assert!(images.contains(image), "{image} not in {images}");
    }
    let python = kubectl_ok(
        env,
        &[
            "get",
            "runtime",
            "python",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ],
    )
    .await;
    assert_eq!(python, PYTHON_IMAGE);

    // Backup.
    let objects = kubectl_ok(env, &["get", "runtime,runs,workflows", "-A", "-o", "yaml"]).await;
    let objects_file = write(backup.path(), "kruntimes-objects.yaml", &objects);
    let values = helm_ok(
        env,
        &[
            "get",
            "values",
            "kruntimes",
            "-n",
            "kruntimes-system",
            "--all",
        ],
    )
    .await;
    write(backup.path(), "kruntimes-values.yaml", &values);
    let runtime_values = helm_ok(
        env,
        &[
            "get",
            "values",
            "kruntimes-runtimes",
            "-n",
            "default",
            "--all",
        ],
    )
    .await;
    write(
        backup.path(),
        "kruntimes-runtimes-values.yaml",
        &runtime_values,
    );
    let list: Value = serde_yaml::from_str(&objects).expect("backup parses");
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(3),
        "two Runtimes and one Run"
    );
    let values: Value = serde_yaml::from_str(&values).expect("values parse");
    assert_eq!(values["scheduler"]["image"], SCHEDULER_IMAGE);
    assert_eq!(values["runtimed"]["image"], RUNTIMED_IMAGE);
    let runtime_values: Value = serde_yaml::from_str(&runtime_values).expect("values parse");
    assert_eq!(runtime_values["python"]["image"], PYTHON_IMAGE);

    // Troubleshooting reads from the guide.
    kubectl_ok(env, &["get", "runtime,pods", "-n", "default"]).await;
    let described = kubectl_ok(env, &["describe", "run", "hello", "-n", "default"]).await;
    assert!(
        described.contains("Runtime:") && described.contains("bash"),
        "{described}"
    );
    kubectl_ok(env, &["get", "run", "hello", "-n", "default", "-o", "yaml"]).await;
    let described = kubectl_ok(env, &["describe", "runtime", "bash", "-n", "default"]).await;
    assert!(described.contains(BASH_IMAGE), "{described}");
    kubectl_ok(
        env,
        &[
            "get",
            "deploy,pods",
            "-n",
            "default",
            "-l",
            "app.kubernetes.io/component=runtime-maintainer",
        ],
    )
    .await;
    for what in ["runs", "pods"] {
        assert_eq!(
            kubectl_ok(env, &["auth", "can-i", "get", what, "-n", "default"])
                .await
                .trim(),
            "yes"
        );
    }
    assert_eq!(
        kubectl_ok(
            env,
            &[
                "auth",
                "can-i",
                "create",
                "pods/portforward",
                "-n",
                "default"
            ]
        )
        .await
        .trim(),
        "yes"
    );

    // Uninstall: runtimes first, then the platform; again, to show --ignore-not-found.
    for _ in 0..2 {
        helm_ok(
            env,
            &[
                "uninstall",
                "kruntimes-runtimes",
                "--namespace",
                "default",
                "--ignore-not-found",
            ],
        )
        .await;
        helm_ok(
            env,
            &[
                "uninstall",
                "kruntimes",
                "--namespace",
                "kruntimes-system",
                "--ignore-not-found",
            ],
        )
        .await;
    }
    // The CRDs stay, and so do Runs; the chart's Runtimes and Deployments are gone.
    let crds = kubectl_ok(
        env,
        &[
            "get",
            "crd",
            "runs.kruntimes.io",
            "runtimes.kruntimes.io",
            "workflows.kruntimes.io",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(crds.lines().count(), 3, "{crds}");
    assert!(
        kubectl_ok(env, &["get", "runs", "-n", "default", "-o", "name"])
            .await
            .contains("run.kruntimes.io/hello")
    );
    assert!(
        kubectl_ok(env, &["get", "runtime", "-A", "-o", "name"])
            .await
            .trim()
            .is_empty()
    );
    let left = kubectl_ok(
        env,
        &[
            "get",
            "deploy,clusterrole",
            "-A",
            "-l",
            "app.kubernetes.io/part-of=kruntimes",
            "-o",
            "name",
        ],
    )
    .await;
    assert!(left.trim().is_empty(), "left behind: {left}");

    // Restore in the guide's order: platform, Runtimes, then Runs.
    let restored_values = backup.path().join("kruntimes-values.yaml");
    helm_ok(
        env,
        &[
            "upgrade",
            "--install",
            "kruntimes",
            "./charts/kruntimes",
            "--namespace",
            "kruntimes-system",
            "--create-namespace",
            "-f",
            restored_values.to_str().unwrap(),
        ],
    )
    .await;
    let restored_values = backup.path().join("kruntimes-runtimes-values.yaml");
    helm_ok(
        env,
        &[
            "upgrade",
            "--install",
            "kruntimes-runtimes",
            "./charts/kruntimes-runtimes",
            "--namespace",
            "default",
            "-f",
            restored_values.to_str().unwrap(),
        ],
    )
    .await;
    kubectl_ok(env, &["delete", "run", "hello", "-n", "default"]).await;
    // Runtimes of chart releases came back with the release; restore the rest.
    kubectl_ok(
        env,
        &[
            "apply",
            "-f",
            objects_file.to_str().unwrap(),
            "-l",
            "!app.kubernetes.io/managed-by",
        ],
    )
    .await;
    let spec = kubectl_ok(
        env,
        &[
            "get",
            "run",
            "hello",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.runtime} {.spec.timeout}",
        ],
    )
    .await;
    assert_eq!(spec, "bash 2m");
    helm_ok(
        env,
        &[
            "uninstall",
            "kruntimes-runtimes",
            "--namespace",
            "default",
            "--ignore-not-found",
        ],
    )
    .await;
    helm_ok(
        env,
        &[
            "uninstall",
            "kruntimes",
            "--namespace",
            "kruntimes-system",
            "--ignore-not-found",
        ],
    )
    .await;

    // Removing the CRDs deliberately removes every Run with them.
    kubectl_ok(
        env,
        &[
            "delete",
            "crd",
            "runs.kruntimes.io",
            "runtimes.kruntimes.io",
            "workflows.kruntimes.io",
        ],
    )
    .await;
    let (ok, _, stderr) = exec(env.kubectl(), &["get", "runs", "-A"]).await;
    // kubectl's discovery cache may still list the type; either way the API is gone.
    let gone = stderr.contains("doesn't have a resource type")
        || stderr.contains("could not find the requested resource");
    assert!(!ok && gone, "{stderr}");
}
