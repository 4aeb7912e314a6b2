//! Update semantics against a real kube-apiserver: spec immutability (CEL transition
//! rules), the one-way `cancelRequested`, and the status subresource (status is
//! written only through `/status`, which in turn cannot change the spec).

mod common;

use kruntimes_api::run::RunPhase;
use kruntimes_api::{Run, RunStatus, Workflow};
use kruntimes_testenv::TestEnv;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

async fn setup() -> (kube::Client, kruntimes_testenv::TestNamespace) {
    let env = TestEnv::shared().await.expect("test environment");
    let client = common::install_crds(env).await;
    let ns = env.namespace().await.expect("namespace");
    (client, ns)
}

fn run_object(name: &str) -> Run {
    serde_json::from_value(json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Run",
        "metadata": {"name": name},
        "spec": {
            "runtime": "bash",
            "source": {"inline": {"script": "sleep 1"}},
            "task": {"args": ["a"]},
            "env": [{"name": "A", "value": "1"}],
            "timeout": "10m",
            "retry": {"maxAttempts": 2},
            "ttlSecondsAfterFinished": 60,
        },
    }))
    .expect("run")
}

/// Merge-patches the main resource; returns the API server's message on rejection.
async fn patch_spec(api: &Api<Run>, name: &str, patch: Value) -> Result<Run, String> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message.clone(),
            other => panic!("transport error: {other}"),
        })
}

#[tokio::test]
async fn run_spec_is_immutable_except_cancel_and_ttl() {
    let (client, ns) = setup().await;
    let api: Api<Run> = Api::namespaced(client, &ns);
    api.create(&PostParams::default(), &run_object("immutable"))
        .await
        .expect("create");

    let immutable = [
        (
            "runtime",
            json!({"spec": {"runtime": "python"}}),
            "spec.runtime",
            "runtime is immutable",
        ),
        (
            "source",
            json!({"spec": {"source": {"inline": {"script": "rm -rf /"}}}}),
            "spec.source",
            "source is immutable",
        ),
        (
            "task",
            json!({"spec": {"task": {"args": ["b"]}}}),
            "spec.task",
            "task is immutable",
        ),
        (
            "task removed",
            json!({"spec": {"task": null}}),
            "spec.task",
            "task is immutable",
        ),
        (
            "env",
            json!({"spec": {"env": [{"name": "A", "value": "2"}]}}),
            "spec.env",
            "env is immutable",
        ),
        (
            "env removed",
            json!({"spec": {"env": null}}),
            "spec.env",
            "env is immutable",
        ),
        (
            "timeout",
            json!({"spec": {"timeout": "20m"}}),
            "spec.timeout",
            "timeout is immutable",
        ),
        (
            "retry",
            json!({"spec": {"retry": {"maxAttempts": 3}}}),
            "spec.retry",
            "retry is immutable",
        ),
        (
            "retry removed",
            json!({"spec": {"retry": null}}),
            "spec.retry",
            "retry is immutable",
        ),
        (
            "resources",
            json!({"spec": {"resources": [{"name": "runs", "quantity": 2}]}}),
            "spec.resources",
            "resources is immutable",
        ),
        (
            "artifacts",
            json!({"spec": {"artifacts": {"collect": "Never"}}}),
            "spec.artifacts",
            "artifacts is immutable",
        ),
    ];
    let mut failures = Vec::new();
    for (what, patch, field, text) in immutable {
        match patch_spec(&api, "immutable", patch).await {
            Ok(_) => failures.push(format!("{what}: update was accepted")),
            Err(msg) if msg.contains(field) && msg.contains(text) => {}
            Err(msg) => failures.push(format!("{what}: unexpected message {msg}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // ttlSecondsAfterFinished stays adjustable (like a Job's).
    let run = patch_spec(
        &api,
        "immutable",
        json!({"spec": {"ttlSecondsAfterFinished": 5}}),
    )
    .await
    .expect("ttl update");
    assert_eq!(run.spec.ttl_seconds_after_finished, Some(5));

    // Cancel is one-way: false -> true is accepted, true -> false and removal are not.
    let run = patch_spec(
        &api,
        "immutable",
        json!({"spec": {"cancelRequested": true}}),
    )
    .await
    .expect("cancel");
    assert!(run.spec.cancel_requested);
    let generation = run.metadata.generation;
    let err = patch_spec(
        &api,
        "immutable",
        json!({"spec": {"cancelRequested": false}}),
    )
    .await
    .expect_err("uncancel");
    assert!(
        err.contains("spec.cancelRequested") && err.contains("cannot be set back to false"),
        "{err}"
    );
    // Removing the field lets the default (false) apply, which is the same un-cancel.
    let err = patch_spec(
        &api,
        "immutable",
        json!({"spec": {"cancelRequested": null}}),
    )
    .await
    .expect_err("remove cancel");
    assert!(err.contains("spec.cancelRequested"), "{err}");
    // Setting it to true again is a no-op, not an error.
    let run = patch_spec(
        &api,
        "immutable",
        json!({"spec": {"cancelRequested": true}}),
    )
    .await
    .expect("cancel again");
    assert_eq!(run.metadata.generation, generation);
}

#[tokio::test]
async fn run_status_is_written_only_through_the_status_subresource() {
    let (client, ns) = setup().await;
    let api: Api<Run> = Api::namespaced(client, &ns);

    // Status sent on create is dropped.
    let mut run = run_object("status");
    run.status = Some(RunStatus {
        phase: Some(RunPhase::Succeeded),
        ..Default::default()
    });
    let created = api
        .create(&PostParams::default(), &run)
        .await
        .expect("create");
    assert!(
        created.status.is_none_or(|s| s.phase.is_none()),
        "status must be ignored on create"
    );

    // Status sent to the main resource is ignored, and does not bump the generation.
    let generation = created.metadata.generation;
    let updated = patch_spec(&api, "status", json!({"status": {"phase": "Succeeded"}}))
        .await
        .expect("patch main");
    assert!(
        updated.status.is_none_or(|s| s.phase.is_none()),
        "main resource must not write status"
    );
    assert_eq!(updated.metadata.generation, generation);

    // The status subresource writes status (with schema validation) and ignores spec.
    let status = json!({
        "spec": {"runtime": "other"},
        "status": {
            "phase": "Succeeded",
            "podName": "runtime-bash-7d9f-abcde",
            "podUid": "6f1c1d2e-0000-4000-8000-000000000001",
            "attempt": 1,
            "exitCode": 0,
            "outputs": {"IMAGE": "ghcr.io/x/y:1"},
            "artifacts": [{"name": "report.json", "driver": "s3", "location": "s3://bkt/namespaces/ns/runs/uid/report.json", "size": 12, "digest": format!("sha256:{}", "ab".repeat(32)), "contentType": "application/json"}],
            "artifactStore": {"s3": {"bucket": "bkt", "region": "us-east-1"}},
            "conditions": [{"type": "Completed", "status": "True", "reason": "Succeeded", "message": "exit code 0", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            "createdAt": "2026-01-01T00:00:00.123000Z",
            "finishedAt": "2026-01-01T00:00:01.456000Z",
        },
    });
    let written = api
        .patch_status("status", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status patch");
    let s = written.status.expect("status");
    assert_eq!(s.phase, Some(RunPhase::Succeeded));
    assert_eq!(
        s.outputs.get("IMAGE").map(String::as_str),
        Some("ghcr.io/x/y:1")
    );
    assert_eq!(
        written.spec.runtime, "bash",
        "status subresource must not change spec"
    );
    assert_eq!(written.metadata.generation, generation);
    // Millisecond timestamps survive the round trip.
    let finished = serde_json::to_value(&s.finished_at).expect("json");
    assert!(
        finished
            .as_str()
            .is_some_and(|t| t.starts_with("2026-01-01T00:00:01.456")),
        "{finished}"
    );

    // Status bounds are enforced too: writers cannot exceed them.
    let bad = [
        (json!({"status": {"exitCode": 256}}), "status.exitCode"),
        (json!({"status": {"phase": "Exploded"}}), "status.phase"),
        (
            json!({"status": {"message": "m".repeat(4097)}}),
            "status.message",
        ),
        (
            json!({"status": {"artifacts": [{"name": "a", "driver": "s3", "location": "l", "size": 1, "digest": "md5:00", "contentType": "x"}]}}),
            "status.artifacts[0].digest",
        ),
        (
            json!({"status": {"outputs": (0..65).map(|i| (format!("K{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}}),
            "status.outputs",
        ),
        (
            json!({"status": {"conditions": [{"type": "Completed", "status": "Maybe", "reason": "X", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}),
            "status.conditions[0].status",
        ),
    ];
    for (patch, field) in bad {
        let err = api
            .patch_status("status", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect_err(field);
        let msg = match err {
            kube::Error::Api(s) => s.message,
            other => panic!("{other}"),
        };
        assert!(msg.contains(field), "expected {field} in {msg}");
    }
}

#[tokio::test]
async fn workflow_steps_are_immutable_and_cancel_is_one_way() {
    let (client, ns) = setup().await;
    let api: Api<Workflow> = Api::namespaced(client, &ns);
    let wf: Workflow = serde_json::from_value(json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "wf"},
        "spec": {"steps": [{"name": "only", "run": {"runtime": "bash", "source": {"inline": {"script": "true"}}}}]},
    }))
    .expect("workflow");
    api.create(&PostParams::default(), &wf)
        .await
        .expect("create");
    let msg = |e: kube::Error| match e {
        kube::Error::Api(s) => s.message,
        other => panic!("{other}"),
    };
    let err = api
        .patch("wf", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"steps": [{"name": "other", "run": {"runtime": "bash", "source": {"inline": {"script": "true"}}}}]}})))
        .await
        .map_err(msg)
        .expect_err("steps change");
    assert!(
        err.contains("spec.steps") && err.contains("steps are immutable"),
        "{err}"
    );
    api.patch(
        "wf",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"cancelRequested": true}})),
    )
    .await
    .expect("cancel");
    let err = api
        .patch(
            "wf",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"cancelRequested": false}})),
        )
        .await
        .map_err(msg)
        .expect_err("uncancel");
    assert!(
        err.contains("spec.cancelRequested") && err.contains("cannot be set back to false"),
        "{err}"
    );
}

#[tokio::test]
async fn runtime_spec_is_mutable_and_scalable() {
    let (client, ns) = setup().await;
    let api = common::dynamic(&client, &ns, "Runtime");
    let rt: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Runtime",
        "metadata": {"name": "python"},
        "spec": {"template": {"spec": {"containers": [{"name": "runtime", "image": "ghcr.io/kruntimes/python-runtime:0.1.0"}]}}},
    }))
    .expect("runtime");
    api.create(&PostParams::default(), &rt)
        .await
        .expect("create");
    // The Runtime is a desired state the controller converges to: replicas and the
    // template may change; the scale subresource drives replicas.
    api.patch("python", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"template": {"spec": {"containers": [{"name": "runtime", "image": "ghcr.io/kruntimes/python-runtime:0.2.0"}]}}}})))
        .await
        .expect("template update");
    let scale = api
        .patch_scale(
            "python",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    let got = api.get("python").await.expect("get");
    assert_eq!(got.data["spec"]["replicas"], json!(3));
}
