//! Least-privilege RBAC of the platform chart, checked by impersonation against the
//! real API server (`kubectl auth can-i --as=system:serviceaccount:...`) and, for
//! runtimed, with real requests made with a ServiceAccount token.

mod common;

use kruntimes_testenv::TestEnv;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

const SCHEDULER: &str = "system:serviceaccount:kruntimes-system:kruntimes-scheduler";
const CONTROLLER: &str = "system:serviceaccount:kruntimes-system:kruntimes-controller";

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// The platform chart installed as the operations guide does.
async fn platform() -> &'static TestEnv {
    let env = TestEnv::shared().await.expect("test environment");
    INSTALLED
        .get_or_init(|| async {
            let out = env
                .helm()
                .current_dir(common::repo_root())
                .args([
                    "upgrade",
                    "--install",
                    "kruntimes",
                    "./charts/kruntimes",
                    "--namespace",
                    "kruntimes-system",
                    "--create-namespace",
                    "--set",
                    "scheduler.image=ghcr.io/kruntimes/scheduler:0.1.0",
                    "--set",
                    "controller.image=ghcr.io/kruntimes/controller:0.1.0",
                    "--set",
                    "runtimed.image=ghcr.io/kruntimes/runtimed:0.1.0",
                ])
                .output()
                .await
                .expect("helm");
            assert!(
                out.status.success(),
                "helm install: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            common::install_crds(env).await;
        })
        .await;
    env
}

/// `kubectl auth can-i <args> --as=<user>`: true for "yes", false for "no".
async fn can_i(env: &TestEnv, user: &str, args: &[&str]) -> bool {
    let out = env
        .kubectl()
        .arg("auth")
        .arg("can-i")
        .args(args)
        .arg(format!("--as={user}"))
        .output()
        .await
        .expect("kubectl");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // can-i exits 1 for "no"; anything but yes/no is an error in the question.
    assert!(
        answer == "yes" || answer == "no",
        "kubectl auth can-i {args:?}: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

/// Checks each (expected, args) and reports every mismatch at once.
async fn expect_all(env: &TestEnv, user: &str, cases: &[(bool, Vec<&str>)]) {
    let mut wrong = Vec::new();
    for (expected, args) in cases {
        if can_i(env, user, args).await != *expected {
            wrong.push(format!(
                "{user} can-i {} should be {}",
                args.join(" "),
                if *expected { "yes" } else { "no" }
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn scheduler_updates_run_status_but_creates_no_pods_and_reads_no_secrets() {
    let env = platform().await;
    let ns = env.namespace().await.expect("namespace");
    let n = ns.name();
    expect_all(
        env,
        SCHEDULER,
        &[
            (
                true,
                vec!["update", "runs", "--subresource=status", "-n", n],
            ),
            (true, vec!["patch", "runs", "--subresource=status", "-n", n]),
            (true, vec!["watch", "runs", "-A"]),
            (true, vec!["list", "pods", "-A"]),
            (true, vec!["create", "tokenreviews.authentication.k8s.io"]),
            (false, vec!["create", "pods", "-n", n]),
            (false, vec!["create", "pods", "-A"]),
            (false, vec!["delete", "pods", "-n", n]),
            (false, vec!["get", "secrets", "-n", n]),
            (false, vec!["list", "secrets", "-A"]),
            (false, vec!["create", "runs", "-n", n]),
            (false, vec!["delete", "runs", "-n", n]),
            (false, vec!["create", "deployments", "-n", n]),
            (
                false,
                vec!["update", "runtimes", "--subresource=status", "-n", n],
            ),
            (false, vec!["create", "pods/portforward", "-n", n]),
        ],
    )
    .await;
}

#[tokio::test]
async fn controller_manages_deployments_and_roles_without_reading_secrets() {
    let env = platform().await;
    let ns = env.namespace().await.expect("namespace");
    let n = ns.name();
    expect_all(
        env,
        CONTROLLER,
        &[
            (true, vec!["create", "deployments.apps", "-n", n]),
            (true, vec!["update", "deployments.apps", "-n", n]),
            (true, vec!["delete", "deployments.apps", "-n", n]),
            (true, vec!["create", "serviceaccounts", "-n", n]),
            (
                true,
                vec!["create", "roles.rbac.authorization.k8s.io", "-n", n],
            ),
            (
                true,
                vec!["create", "rolebindings.rbac.authorization.k8s.io", "-n", n],
            ),
            (
                true,
                vec![
                    "bind",
                    "clusterroles.rbac.authorization.k8s.io/kruntimes-runtimed",
                ],
            ),
            (
                true,
                vec![
                    "bind",
                    "clusterroles.rbac.authorization.k8s.io/kruntimes-runtime-maintainer",
                ],
            ),
            (
                true,
                vec!["update", "runtimes", "--subresource=status", "-n", n],
            ),
            (
                true,
                vec!["update", "workflows", "--subresource=status", "-n", n],
            ),
            (true, vec!["create", "runs", "-n", n]),
            (true, vec!["delete", "runs", "-n", n]),
            (false, vec!["get", "secrets", "-n", n]),
            (false, vec!["list", "secrets", "-A"]),
            (false, vec!["watch", "secrets", "-A"]),
            (false, vec!["get", "secrets", "-n", "kruntimes-system"]),
            (
                false,
                vec![
                    "bind",
                    "clusterroles.rbac.authorization.k8s.io/cluster-admin",
                ],
            ),
            (
                false,
                vec!["bind", "clusterroles.rbac.authorization.k8s.io/admin"],
            ),
            (
                false,
                vec!["create", "clusterroles.rbac.authorization.k8s.io"],
            ),
            (
                false,
                vec!["create", "clusterrolebindings.rbac.authorization.k8s.io"],
            ),
            (
                false,
                vec!["escalate", "clusterroles.rbac.authorization.k8s.io"],
            ),
            (
                false,
                vec!["delete", "customresourcedefinitions.apiextensions.k8s.io"],
            ),
            (false, vec!["create", "pods", "-n", n]),
            (false, vec!["create", "pods/exec", "-n", n]),
            (false, vec!["delete", "namespaces"]),
        ],
    )
    .await;
}

#[tokio::test]
async fn runtimed_cluster_role_bound_per_namespace_grants_only_that_namespace() {
    let env = platform().await;
    let home = env.namespace().await.expect("namespace");
    let other = env.namespace().await.expect("namespace");
    let (h, o) = (home.name(), other.name());
    env.create_service_account(h, "runtime-bash")
        .await
        .expect("sa");
    // What the controller will do per workload namespace: bind the shipped ClusterRole.
    let client = env.client().await.expect("client");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "runtime-bash-runtimed", "namespace": h},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kruntimes-runtimed"},
        "subjects": [{"kind": "ServiceAccount", "name": "runtime-bash", "namespace": h}],
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), h)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create rolebinding");

    let sa = format!("system:serviceaccount:{h}:runtime-bash");
    expect_all(
        env,
        &sa,
        &[
            (true, vec!["patch", "pods", "--subresource=status", "-n", h]),
            (true, vec!["get", "pods", "-n", h]),
            (true, vec!["watch", "runs", "-n", h]),
            (true, vec!["patch", "runs", "--subresource=status", "-n", h]),
            (
                true,
                vec!["update", "runs", "--subresource=status", "-n", h],
            ),
            (true, vec!["get", "runtimes", "-n", h]),
            // Nothing in any other namespace.
            (
                false,
                vec!["patch", "pods", "--subresource=status", "-n", o],
            ),
            (
                false,
                vec!["patch", "runs", "--subresource=status", "-n", o],
            ),
            (false, vec!["get", "runs", "-n", o]),
            (false, vec!["list", "pods", "-n", o]),
            (false, vec!["list", "runs", "-A"]),
            (false, vec!["list", "pods", "-A"]),
            // No Secrets, no Pod or Run lifecycle, nothing cluster-scoped.
            (false, vec!["get", "secrets", "-n", h]),
            (false, vec!["list", "secrets", "-n", h]),
            (false, vec!["watch", "secrets", "-n", h]),
            (false, vec!["create", "pods", "-n", h]),
            (false, vec!["delete", "pods", "-n", h]),
            (false, vec!["update", "pods", "-n", h]),
            (false, vec!["create", "runs", "-n", h]),
            (false, vec!["delete", "runs", "-n", h]),
            (false, vec!["update", "runtimes", "-n", h]),
            (false, vec!["list", "nodes"]),
            (false, vec!["list", "namespaces"]),
        ],
    )
    .await;

    // The same with real requests carrying the ServiceAccount's token.
    let admin_runs: Api<kruntimes_api::Run> = Api::namespaced(client.clone(), h);
    let other_runs: Api<kruntimes_api::Run> = Api::namespaced(client, o);
    let run: kruntimes_api::Run = serde_yaml::from_str(
        &std::fs::read_to_string(common::repo_root().join("api/tests/fixtures/run-hello.yaml"))
            .expect("fixture"),
    )
    .expect("run");
    admin_runs
        .create(&PostParams::default(), &run)
        .await
        .expect("run in home");
    other_runs
        .create(&PostParams::default(), &run)
        .await
        .expect("run in other");
    let as_runtimed = env
        .client_as_service_account(h, "runtime-bash")
        .await
        .expect("sa client");
    let status = Patch::Merge(json!({"status": {"phase": "Running", "attempt": 1}}));
    let home_api: Api<kruntimes_api::Run> = Api::namespaced(as_runtimed.clone(), h);
    let patched = home_api
        .patch_status("hello", &PatchParams::default(), &status)
        .await
        .expect("own namespace");
    assert_eq!(
        patched.status.and_then(|s| s.phase),
        Some(kruntimes_api::RunPhase::Running)
    );
    let other_api: Api<kruntimes_api::Run> = Api::namespaced(as_runtimed.clone(), o);
    match other_api
        .patch_status("hello", &PatchParams::default(), &status)
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("patching a Run in another namespace must be forbidden, got {other:?}"),
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(as_runtimed, h);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("listing Secrets must be forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn namespace_editors_can_use_krt_through_aggregated_roles() {
    let env = platform().await;
    let ns = env.namespace().await.expect("namespace");
    let n = ns.name();
    env.create_service_account(n, "developer")
        .await
        .expect("sa");
    let client = env.client().await.expect("client");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "developer-edit", "namespace": n},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "developer", "namespace": n}],
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client, n)
        .create(&PostParams::default(), &binding)
        .await
        .expect("rolebinding");
    let dev = format!("system:serviceaccount:{n}:developer");
    // kube-controller-manager aggregates the chart's rules into "edit" asynchronously.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !can_i(env, &dev, &["create", "runs", "-n", n]).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "edit never gained create runs"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The operations guide's krt checks.
    expect_all(
        env,
        &dev,
        &[
            (true, vec!["get", "runs", "-n", n]),
            (true, vec!["get", "pods", "-n", n]),
            (true, vec!["create", "pods/portforward", "-n", n]),
            (true, vec!["patch", "runs", "-n", n]),
            (true, vec!["create", "workflows", "-n", n]),
            (
                false,
                vec!["update", "runs", "--subresource=status", "-n", n],
            ),
            (false, vec!["get", "runs", "-n", "default"]),
        ],
    )
    .await;
}
