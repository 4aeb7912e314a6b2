//! The control plane and test kubelet against real Kubernetes controllers:
//! Deployments, restarts, readiness gates, per-Pod localhost, Services, the
//! in-cluster API path, volumes and RBAC. One control plane for the binary,
//! a fresh namespace per test.

mod common;

use std::collections::BTreeSet;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

async fn http_get(mut s: tokio::net::TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_becomes_ready_pods_and_scale_down_sends_sigterm() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let client = env.client().await.unwrap();
    let term_dir = tempfile::tempdir().unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);

    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "web",
                        "image": IMAGE,
                        "args": ["serve", "--listen", "0.0.0.0:8080", "--term-file", "/term/$(POD_NAME)"],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                        "volumeMounts": [{"name": "term", "mountPath": "/term"}],
                    }],
                    "volumes": [{"name": "term", "hostPath": {"path": term_dir.path(), "type": "Directory"}}],
                },
            },
        },
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deploy)
        .await
        .unwrap();

    // kube-controller-manager turns the Deployment into a ReplicaSet...
    let rs = wait_for("a ReplicaSet owned by the Deployment", || async {
        rss.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|rs| {
                rs.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "Deployment" && o.name == "web")
            })
    })
    .await;
    let rs_name = rs.metadata.name.clone().unwrap();

    // ...and Pods, which the kubelet binds, runs and reports Running and Ready.
    let ready = wait_for("2 Running+Ready pods owned by the ReplicaSet", || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        let ready: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| phase(p) == "Running" && is_ready(p))
            .filter(|p| {
                p.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.kind == "ReplicaSet" && o.name == rs_name)
            })
            .collect();
        (ready.len() == 2).then_some(ready)
    })
    .await;
    for p in &ready {
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some(env.kubelet().node_name())
        );
    }
    // The Deployment controller saw the readiness too.
    wait_for("deployment readyReplicas=2", || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.ready_replicas == Some(2)).then_some(())
    })
    .await;
    assert!(
        std::fs::read_dir(term_dir.path()).unwrap().next().is_none(),
        "no SIGTERM before scale-down"
    );

    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    let names: BTreeSet<String> = ready
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let remaining = wait_for("one pod left after scale-down", || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .ok()?;
        (list.items.len() == 1).then(|| list.items[0].metadata.name.clone().unwrap())
    })
    .await;
    assert!(names.contains(&remaining));
    let removed = names.iter().find(|n| **n != remaining).unwrap();
    let marker = std::fs::read_to_string(term_dir.path().join(removed))
        .unwrap_or_else(|e| panic!("removed pod {removed} recorded no SIGTERM: {e}"));
    assert!(marker.starts_with("SIGTERM "), "{marker}");
    let pid: u32 = marker.trim().rsplit(' ').next().unwrap().parse().unwrap();
    assert!(!alive(pid), "process {pid} of the removed pod still runs");
    assert!(
        !term_dir.path().join(&remaining).exists(),
        "the remaining pod was not signalled"
    );
    let left = pods.get(&remaining).await.unwrap();
    assert!(is_ready(&left));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_container_restarts_with_backoff_and_restart_count() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let client = env.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pod_from(json!({
        "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "c", "image": IMAGE, "args": ["exit", "3"]}]},
    }));
    // Watch every status update, so short back-off windows cannot be missed.
    let stream = pods
        .watch(&WatchParams::default().fields("metadata.name=crasher"), "0")
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    futures::pin_mut!(stream);
    let mut messages: Vec<String> = Vec::new();
    let mut last: Option<Pod> = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let Ok(WatchEvent::Modified(p)) = ev else {
            continue;
        };
        let Some(cs) = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
        else {
            continue;
        };
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref())
            && w.reason.as_deref() == Some("CrashLoopBackOff")
        {
            let m = w.message.clone().unwrap();
            if messages.last() != Some(&m) {
                messages.push(m);
            }
        }
        let done = cs.restart_count >= 3;
        last = Some(p);
        if done {
            break;
        }
    }
    let pod = last.expect("status updates");
    let cs = &pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    assert!(cs.restart_count >= 3, "restartCount {}", cs.restart_count);
    let term = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!(term.exit_code, 3);
    assert_eq!(term.reason.as_deref(), Some("Error"));
    assert_eq!(
        phase(&pod),
        "Running",
        "restartPolicy Always keeps the pod Running"
    );
    // The harness uses a 1s initial back-off, doubling: the kubelet says so.
    assert!(
        messages.len() >= 2
            && messages[0].starts_with("back-off 1s restarting failed container=c pod=crasher_")
            && messages[1].starts_with("back-off 2s "),
        "back-off messages: {messages:?}"
    );
    let events: Api<Event> = Api::namespaced(client, &ns);
    wait_for("a BackOff event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("BackOff"))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_gate_is_honoured_and_preserved() {
    const GATE: &str = "kruntimes.io/RuntimedReady";
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let client = env.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let flag = tempfile::tempdir().unwrap();
    let pod = pod_from(json!({
        "metadata": {"name": "gated"},
        "spec": {
            "readinessGates": [{"conditionType": GATE}],
            "containers": [{
                "name": "c", "image": IMAGE,
                "args": ["serve", "--listen", "127.0.0.1:9000"],
                "readinessProbe": {"exec": {"command": ["test", "-f", "/flag/ready"]}, "periodSeconds": 1},
                "volumeMounts": [{"name": "flag", "mountPath": "/flag"}],
            }],
            "volumes": [{"name": "flag", "hostPath": {"path": flag.path()}}],
        },
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_pod(&pods, "gated", "Running, container not ready", |p| {
        phase(p) == "Running" && condition(p, "ContainersReady").as_deref() == Some("False")
    })
    .await;

    std::fs::write(flag.path().join("ready"), "").unwrap();
    let p = wait_pod(&pods, "gated", "ContainersReady", |p| {
        condition(p, "ContainersReady").as_deref() == Some("True")
    })
    .await;
    let ready = p
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .clone();
    assert_eq!(
        ready.status, "False",
        "the gate's condition does not exist yet"
    );
    assert_eq!(ready.reason.as_deref(), Some("ReadinessGatesNotReady"));

    // Another client (as a runtimed sidecar would) sets the gate's condition.
    let gate_patch = json!({"status": {"conditions": [{
        "type": GATE, "status": "True", "reason": "Ready", "message": "set by the test",
        "lastTransitionTime": "2024-01-01T00:00:00Z",
    }]}});
    pods.patch_status(
        "gated",
        &PatchParams::default(),
        &Patch::Strategic(&gate_patch),
    )
    .await
    .unwrap();
    wait_pod(&pods, "gated", "Ready", is_ready).await;

    // The kubelet's own updates (container becoming unready, then ready
    // again) must leave the gate's condition intact.
    std::fs::remove_file(flag.path().join("ready")).unwrap();
    let p = wait_pod(&pods, "gated", "ContainersReady=False", |p| {
        condition(p, "ContainersReady").as_deref() == Some("False")
    })
    .await;
    assert!(!is_ready(&p));
    let gate = |p: &Pod| {
        p.status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == GATE)
            .cloned()
    };
    let g = gate(&p).expect("gate condition survived the kubelet's status update");
    assert_eq!(g.status, "True");
    assert_eq!(g.message.as_deref(), Some("set by the test"));
    std::fs::write(flag.path().join("ready"), "").unwrap();
    let p = wait_pod(&pods, "gated", "Ready again", is_ready).await;
    let g = gate(&p).unwrap();
    assert_eq!(
        g.last_transition_time.unwrap().0.to_string(),
        "2024-01-01T00:00:00Z",
        "the kubelet never rewrote the gate condition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_on_the_same_localhost_port_are_both_reachable() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let client = env.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    for name in ["alpha", "beta"] {
        let pod = pod_from(json!({
            "metadata": {"name": name},
            "spec": {"containers": [{
                "name": "c", "image": IMAGE,
                "args": ["serve", "--listen", "127.0.0.1:9093", "--reply", name],
                "readinessProbe": {"tcpSocket": {"port": 9093, "host": "127.0.0.1"}, "periodSeconds": 1},
            }]},
        }));
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    for name in ["alpha", "beta"] {
        wait_pod(&pods, name, "Ready", is_ready).await;
    }
    for name in ["alpha", "beta"] {
        // Straight into the Pod's own localhost...
        let s = env.kubelet().connect(&ns, name, 9093).await.unwrap();
        assert_eq!(http_get(s).await, name);
        // ...and through a local port-forward listener.
        let fwd = env.kubelet().port_forward(&ns, name, 9093).await.unwrap();
        let s = tokio::net::TcpStream::connect(fwd.local_addr())
            .await
            .unwrap();
        assert_eq!(http_get(s).await, name);
    }
    // Nothing listens on the host's 127.0.0.1:9093 because of them.
    assert!(
        tokio::net::TcpStream::connect("127.0.0.1:9093")
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_services_and_the_api_server_over_loopback() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let client = env.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let server = pod_from(json!({
        "metadata": {"name": "srv", "labels": {"app": "srv"}},
        "spec": {"containers": [{
            "name": "c", "image": IMAGE,
            "args": ["serve", "--listen", "0.0.0.0:8080", "--reply", "from-srv"],
            "ports": [{"name": "http", "containerPort": 8080}],
        }]},
    }));
    pods.create(&PostParams::default(), &server).await.unwrap();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "srv"}, "ports": [{"port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    wait_pod(&pods, "srv", "Ready", is_ready).await;

    for (name, args) in [
        ("fetch-short", json!(["fetch", "http://web:80/"])),
        (
            "fetch-fqdn",
            json!([
                "fetch",
                format!("http://web.{}.svc.cluster.local:80/", &*ns)
            ]),
        ),
        ("api", json!(["api"])),
    ] {
        let pod = pod_from(json!({
            "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": IMAGE, "args": args}]},
        }));
        // The Service may be routed a moment after it is created: retry by
        // recreating the client Pod until it succeeds.
        let p = wait_for(&format!("{name} to succeed"), || async {
            if pods.get_opt(name).await.ok()?.is_none() {
                pods.create(&PostParams::default(), &pod).await.ok()?;
            }
            let p = pods.get(name).await.ok()?;
            match phase(&p).as_str() {
                "Succeeded" => Some(p),
                "Failed" => {
                    let log = env
                        .kubelet()
                        .container_log(&ns, name, "c")
                        .await
                        .unwrap_or_default();
                    eprintln!("{name} failed, retrying: {log}");
                    let _ = pods
                        .delete(name, &kube::api::DeleteParams::default().grace_period(0))
                        .await;
                    wait_for("deletion", || async {
                        pods.get_opt(name).await.ok()?.is_none().then_some(())
                    })
                    .await;
                    None
                }
                _ => None,
            }
        })
        .await;
        let log = env.kubelet().container_log(&ns, name, "c").await.unwrap();
        match name {
            "api" => assert_eq!(log.trim(), kruntimes_testenv::K8S_VERSION),
            _ => assert_eq!(log.trim(), "from-srv"),
        }
        assert_eq!(phase(&p), "Succeeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_env_and_projected_token_reach_the_container() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let client = env.client().await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cm"}, "data": {"greeting": "hello", "file.txt": "content"}})).unwrap(),
    )
    .await
    .unwrap();
    let script = r#"
set -e
cat /etc/secret/password > /out/secret
cat /etc/cm/file.txt > /out/cmfile
echo "$GREETING $PASSWORD $POD_NAME $POD_NS $POD_IP $EXPANDED" > /out/env
cat /var/run/secrets/tokens/scheduler > /out/token
cat /var/run/secrets/kubernetes.io/serviceaccount/namespace > /out/sa-namespace
test -s /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
cat /etc/podinfo/labels > /out/labels
hostname > /out/hostname
cat /proc/net/dev > /out/netdev
echo scratch > /scratch/x && cat /scratch/x > /out/scratch
"#;
    let pod = pod_from(json!({
        "metadata": {"name": "vols", "labels": {"tier": "test"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "c", "image": "busybox:1.36",
                "command": ["sh", "-c", script],
                "env": [
                    {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
                    {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "EXPANDED", "value": "$(POD_NAME)-x"},
                ],
                "volumeMounts": [
                    {"name": "out", "mountPath": "/out"},
                    {"name": "secret", "mountPath": "/etc/secret", "readOnly": true},
                    {"name": "cm", "mountPath": "/etc/cm"},
                    {"name": "podinfo", "mountPath": "/etc/podinfo"},
                    {"name": "tokens", "mountPath": "/var/run/secrets/tokens"},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            }],
            "volumes": [
                {"name": "out", "hostPath": {"path": out.path()}},
                {"name": "secret", "secret": {"secretName": "s"}},
                {"name": "cm", "configMap": {"name": "cm"}},
                {"name": "podinfo", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
                {"name": "tokens", "projected": {"sources": [{"serviceAccountToken": {
                    "audience": "kruntimes-scheduler", "expirationSeconds": 3600, "path": "scheduler"}}]}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let p = wait_pod(&pods, "vols", "terminal", |p| {
        matches!(phase(p).as_str(), "Succeeded" | "Failed")
    })
    .await;
    let log = env
        .kubelet()
        .container_log(&ns, "vols", "c")
        .await
        .unwrap_or_default();
    assert_eq!(phase(&p), "Succeeded", "container log: {log}");
    let read = |f: &str| std::fs::read_to_string(out.path().join(f)).unwrap();
    assert_eq!(read("secret"), "hunter2");
    assert_eq!(read("cmfile"), "content");
    let pod_ip = p.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert_eq!(
        read("env").trim(),
        format!("hello hunter2 vols {} {pod_ip} vols-x", &*ns)
    );
    assert_eq!(read("sa-namespace"), &*ns);
    assert_eq!(read("labels").trim(), r#"tier="test""#);
    assert_eq!(read("hostname").trim(), "vols");
    assert_eq!(read("scratch").trim(), "scratch");
    // Only loopback exists in the Pod's network namespace.
    let ifaces: Vec<String> = read("netdev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .collect();
    assert_eq!(ifaces, vec!["lo".to_string()]);

    // The projected token is bound to the Pod and carries its audience.
    let review = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": read("token"), "audiences": ["kruntimes-scheduler"]},
    });
    let req = http::Request::post("/apis/authentication.k8s.io/v1/tokenreviews")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&review).unwrap())
        .unwrap();
    let resp: serde_json::Value = client.request(req).await.unwrap();
    let status = &resp["status"];
    assert_eq!(status["authenticated"], true, "{resp}");
    assert_eq!(
        status["user"]["username"],
        format!("system:serviceaccount:{}:default", &*ns)
    );
    assert_eq!(
        status["user"]["extra"]["authentication.kubernetes.io/pod-name"][0],
        "vols"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_image_waits_with_err_image_pull() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client().await.unwrap(), &ns);
    let pod = pod_from(json!({
        "metadata": {"name": "nope"},
        "spec": {"containers": [{"name": "c", "image": "registry.example.invalid/nope:1"}]},
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let p = wait_pod(&pods, "nope", "ErrImagePull", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref()?.waiting.as_ref()?.reason.clone())
            .as_deref()
            == Some("ErrImagePull")
    })
    .await;
    assert_eq!(phase(&p), "Pending");
    assert!(!is_ready(&p));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denies_what_the_role_does_not_grant_and_kubectl_agrees() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let client = env.client().await.unwrap();
    env.create_service_account(&ns, "reader").await.unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    }))
    .unwrap();
    Api::<Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let rb: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": &*ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &rb)
        .await
        .unwrap();

    let sa = env.client_as_service_account(&ns, "reader").await.unwrap();
    Api::<Pod>::namespaced(sa.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("the Role grants list pods");
    match Api::<Secret>::namespaced(sa.clone(), &ns)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("listing secrets must be forbidden, got {other:?}"),
    }
    match Api::<Pod>::namespaced(sa, "default")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("pods in another namespace must be forbidden, got {other:?}"),
    }

    let who = format!("--as=system:serviceaccount:{}:reader", &*ns);
    let can_i = |verb: &'static str, resource: &'static str, namespace: String| {
        let who = who.clone();
        async move {
            let out = env
                .kubectl()
                .args(["auth", "can-i", verb, resource, "-n", &namespace, &who])
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    };
    assert_eq!(can_i("list", "pods", ns.to_string()).await, "yes");
    assert_eq!(can_i("list", "secrets", ns.to_string()).await, "no");
    assert_eq!(can_i("list", "pods", "default".into()).await, "no");
    assert_eq!(can_i("delete", "pods", ns.to_string()).await, "no");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_and_helm_talk_to_the_control_plane() {
    let env = env().await;
    let version = env
        .kubectl_output(&["version", "-o", "json"])
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(
        v["serverVersion"]["gitVersion"],
        kruntimes_testenv::K8S_VERSION
    );
    assert_eq!(
        v["clientVersion"]["gitVersion"],
        kruntimes_testenv::K8S_VERSION
    );
    let nodes = env
        .kubectl_output(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .await
        .unwrap();
    assert_eq!(nodes.trim(), "True");
    let out = env.helm().args(["list", "-A"]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_sidecars_and_liveness_restarts() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let client = env.client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let flag = tempfile::tempdir().unwrap();
    std::fs::write(flag.path().join("alive"), "").unwrap();
    let pod = pod_from(json!({
        "metadata": {"name": "lifecycle"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "initContainers": [
                {"name": "setup", "image": "busybox", "command": ["sh", "-c", "echo from-init > /work/init"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "sidecar", "image": IMAGE, "restartPolicy": "Always",
                 "args": ["grpc-health", "--listen", "0.0.0.0:9500"],
                 "readinessProbe": {"grpc": {"port": 9500}, "periodSeconds": 1}},
            ],
            "containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c", "cat /work/init > /flag/seen; exec sleep 3600"],
                "livenessProbe": {"exec": {"command": ["test", "-f", "/flag/alive"]}, "periodSeconds": 1, "failureThreshold": 1},
                "volumeMounts": [{"name": "work", "mountPath": "/work"}, {"name": "flag", "mountPath": "/flag"}],
            }],
            "volumes": [{"name": "work", "emptyDir": {}}, {"name": "flag", "hostPath": {"path": flag.path()}}],
        },
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let p = wait_pod(&pods, "lifecycle", "Ready", is_ready).await;
    assert_eq!(condition(&p, "Initialized").as_deref(), Some("True"));
    let status = p.status.as_ref().unwrap();
    let init = status.init_container_statuses.as_ref().unwrap();
    let setup = init.iter().find(|c| c.name == "setup").unwrap();
    let done = setup.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (done.exit_code, done.reason.as_deref()),
        (0, Some("Completed"))
    );
    let sidecar = init.iter().find(|c| c.name == "sidecar").unwrap();
    assert!(
        sidecar.ready && sidecar.state.as_ref().unwrap().running.is_some(),
        "{sidecar:?}"
    );
    // The main container started after the init container finished.
    assert_eq!(
        std::fs::read_to_string(flag.path().join("seen")).unwrap(),
        "from-init\n"
    );

    // A failing liveness probe restarts the container (SIGTERM, which sleep
    // as PID 1 ignores, then SIGKILL after the 2s grace period).
    std::fs::remove_file(flag.path().join("alive")).unwrap();
    let p = wait_pod(&pods, "lifecycle", "main restarted", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|c| c[0].restart_count >= 1)
    })
    .await;
    let last = p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .last_state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(
        last.exit_code, 137,
        "killed after the grace period: {last:?}"
    );
    std::fs::write(flag.path().join("alive"), "").unwrap();
    wait_pod(&pods, "lifecycle", "Ready again", is_ready).await;
    let events: Api<Event> = Api::namespaced(client, &ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    assert!(
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Unhealthy")
                && e.message
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("Liveness probe failed")),
        "an Unhealthy event was recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pvc_from_the_default_storage_class_is_mounted() {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let client = env.client().await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }))
    .unwrap();
    pvcs.create(&PostParams::default(), &pvc).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pod_from(json!({
        "metadata": {"name": "writer"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "echo persisted > /data/file"],
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        },
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let p = wait_pod(&pods, "writer", "terminal", |p| {
        matches!(phase(p).as_str(), "Succeeded" | "Failed")
    })
    .await;
    assert_eq!(phase(&p), "Succeeded");
    // kube-controller-manager provisioned a hostPath PV; the file is in it.
    let pv_name = pvcs
        .get("data")
        .await
        .unwrap()
        .spec
        .unwrap()
        .volume_name
        .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(client);
    let path = pvs
        .get(&pv_name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .host_path
        .unwrap()
        .path;
    let path = std::path::PathBuf::from(path);
    assert_eq!(
        std::fs::read_to_string(path.join("file")).unwrap(),
        "persisted\n"
    );

    // Releasing the claim lets the Delete reclaim policy remove the directory.
    pods.delete("writer", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    wait_for("pod gone", || async {
        pods.get_opt("writer").await.ok()?.is_none().then_some(())
    })
    .await;
    pvcs.delete("data", &Default::default()).await.unwrap();
    wait_for("PV deleted", || async {
        pvs.get_opt(&pv_name).await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!path.exists(), "{} left behind", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_kills_after_the_grace_period_and_removes_the_pod() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client().await.unwrap(), &ns);
    let out = tempfile::tempdir().unwrap();
    // `read < /proc/self/stat` is opened by the shell itself: its host pid,
    // which `exec sleep` keeps. sleep as PID 1 ignores SIGTERM.
    let pod = pod_from(json!({
        "metadata": {"name": "stubborn"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c",
                "read -r stat < /proc/self/stat; echo ${stat%% *} > /out/pid; exec sleep 3600"],
                "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
            "volumes": [{"name": "out", "hostPath": {"path": out.path()}}],
        },
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_pod(&pods, "stubborn", "Running", |p| phase(p) == "Running").await;
    let pid: u32 = wait_for("the pid file", || async {
        std::fs::read_to_string(out.path().join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
    .await;
    assert!(alive(pid), "the container process {pid} runs");
    pods.delete("stubborn", &kube::api::DeleteParams::default())
        .await
        .unwrap();
    wait_for("the pod to be removed", || async {
        pods.get_opt("stubborn").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!alive(pid), "process {pid} outlived its deleted pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_lease_is_renewed() {
    use k8s_openapi::api::coordination::v1::Lease;
    let env = env().await;
    let leases: Api<Lease> = Api::namespaced(env.client().await.unwrap(), "kube-node-lease");
    let node = env.kubelet().node_name().to_string();
    let first = wait_for("the node lease", || async {
        leases.get_opt(&node).await.ok()??.spec?.renew_time
    })
    .await;
    wait_for("a later renewTime", || async {
        let t = leases.get(&node).await.ok()?.spec?.renew_time?;
        (t.0 > first.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_context_and_host_aliases_are_applied() {
    let env = env().await;
    let ns = env.namespace().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(env.client().await.unwrap(), &ns);
    let script = "id -u; \
        if touch /tmp/x 2>/dev/null; then echo tmp-writable; else echo tmp-readonly; fi; \
        echo ok > /scratch/f && echo scratch-writable; \
        grep -q 'hostalias.test' /etc/hosts && echo alias-ok";
    let pod = pod_from(json!({
        "metadata": {"name": "restricted"},
        "spec": {
            "restartPolicy": "Never",
            "hostAliases": [{"ip": "127.5.5.5", "hostnames": ["hostalias.test"]}],
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": true},
            "containers": [{
                "name": "c", "image": "busybox", "command": ["sh", "-c", script],
                "securityContext": {"readOnlyRootFilesystem": true},
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_pod(&pods, "restricted", "terminal", |p| {
        matches!(phase(p).as_str(), "Succeeded" | "Failed")
    })
    .await;
    let log = env
        .kubelet()
        .container_log(&ns, "restricted", "c")
        .await
        .unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec!["1000", "tmp-readonly", "scratch-writable", "alias-ok"]
    );

    // runAsNonRoot with an image that runs as root is refused.
    let pod = pod_from(json!({
        "metadata": {"name": "root-refused"},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "60"],
                                 "securityContext": {"runAsNonRoot": true}}]},
    }));
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let p = wait_pod(&pods, "root-refused", "CreateContainerConfigError", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c[0].state.as_ref()?.waiting.clone())
            .is_some_and(|w| w.reason.as_deref() == Some("CreateContainerConfigError"))
    })
    .await;
    let w = p.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap();
    assert!(
        w.message
            .unwrap()
            .contains("runAsNonRoot and image will run as root"),
        "message names the rule"
    );
}
