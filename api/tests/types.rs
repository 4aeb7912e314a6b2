//! Offline checks of the types and generated schemas: the shapes other components rely
//! on (names, defaults, serialization) and the presence of every bound and rule.
//! The API server's verdict on each rule is tested in `apiserver_validation.rs`.

use kruntimes_api::constants::{self, conditions, labels};
use kruntimes_api::run::{ArtifactCollect, InlineSource, RunSource};
use kruntimes_api::{Run, RunPhase, RunSpec, Runtime, Workflow};
use kube::{CustomResourceExt, Resource};
use serde_json::{Value, json};

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    serde_json::to_value(crd).unwrap()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn crd_named(name: &str) -> Value {
    let crds = kruntimes_api::crd::crds().unwrap();
    let crd = crds
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap();
    schema_of(crd)
}

#[test]
fn resource_identity() {
    assert_eq!(Run::api_version(&()), constants::API_VERSION);
    assert_eq!(Run::plural(&()), "runs");
    assert_eq!(Runtime::plural(&()), "runtimes");
    assert_eq!(Workflow::plural(&()), "workflows");
    assert_eq!(Run::crd_name(), "runs.kruntimes.io");
    assert_eq!(Runtime::shortnames(), ["krtm"]);
    assert_eq!(constants::runtime_deployment_name("bash"), "runtime-bash");
    assert_eq!(conditions::RUNTIMED_READY, "kruntimes.io/RuntimedReady");
    assert_eq!(labels::RUNTIME, "runtime");
    assert_eq!(labels::component::RUNTIME_MAINTAINER, "runtime-maintainer");
}

#[test]
fn minimal_run_deserializes_with_defaults() {
    let run: Run = serde_json::from_value(json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Run",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {"runtime": "bash", "source": {"inline": {"script": "echo hi"}}},
    }))
    .unwrap();
    assert_eq!(run.spec.timeout, std::time::Duration::from_secs(3600));
    assert!(!run.spec.cancel_requested);
    assert_eq!(run.spec.resources, kruntimes_api::resources::one_run());
    assert_eq!(run.spec.artifacts.collect, ArtifactCollect::Always);
    assert!(run.status.is_none());
}

#[test]
fn phases_and_terminality() {
    let terminal: Vec<RunPhase> = [
        RunPhase::Pending,
        RunPhase::Scheduled,
        RunPhase::Running,
        RunPhase::Succeeded,
        RunPhase::Failed,
        RunPhase::Timeout,
        RunPhase::Cancelled,
    ]
    .into_iter()
    .filter(|p| p.is_terminal())
    .collect();
    assert_eq!(
        terminal,
        [
            RunPhase::Succeeded,
            RunPhase::Failed,
            RunPhase::Timeout,
            RunPhase::Cancelled
        ]
    );
    assert_eq!(
        serde_json::to_value(RunPhase::Timeout).unwrap(),
        json!("Timeout")
    );
    let schema = crd_named("runs.kruntimes.io");
    assert_eq!(
        schema["properties"]["status"]["properties"]["phase"]["enum"],
        json!([
            "Pending",
            "Scheduled",
            "Running",
            "Succeeded",
            "Failed",
            "Timeout",
            "Cancelled"
        ])
    );
}

#[test]
fn run_spec_round_trips_through_json() {
    let spec = RunSpec {
        runtime: "python".into(),
        source: RunSource {
            inline: Some(InlineSource {
                script: "print(1)".into(),
                filename: Some("main.py".into()),
            }),
            git: None,
        },
        task: None,
        env: vec![],
        timeout: "90s".parse().unwrap(),
        cancel_requested: false,
        retry: None,
        ttl_seconds_after_finished: Some(60),
        resources: kruntimes_api::resources::one_run(),
        artifacts: Default::default(),
    };
    let value = serde_json::to_value(&spec).unwrap();
    assert_eq!(value["timeout"], json!("90s"));
    assert!(
        value.get("retry").is_none(),
        "unset options are omitted, not null"
    );
    let back: RunSpec = serde_json::from_value(value).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn no_nullable_and_every_string_and_list_is_bounded() {
    // Walk our own schemas (not the embedded upstream pod template) and require a
    // maximum on every string, list and map: the team rule "every size has a bound".
    fn walk(path: &str, v: &Value, missing: &mut Vec<String>) {
        if path.starts_with("spec.template.") {
            return;
        }
        assert!(v.get("nullable").is_none(), "{path} is nullable");
        match v["type"].as_str() {
            Some("string")
                if v.get("maxLength").is_none()
                    && v.get("enum").is_none()
                    && v.get("format").is_none() =>
            {
                missing.push(path.into())
            }
            Some("array") if v.get("maxItems").is_none() => missing.push(path.into()),
            Some("object")
                if v.get("additionalProperties").is_some() && v.get("maxProperties").is_none() =>
            {
                missing.push(path.into())
            }
            _ => {}
        }
        if let Some(props) = v["properties"].as_object() {
            for (k, c) in props {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if p != "metadata" && p != "apiVersion" && p != "kind" {
                    walk(&p, c, missing);
                }
            }
        }
        if v.get("items").is_some() {
            walk(&format!("{path}[]"), &v["items"], missing);
        }
        if let Some(ap) = v.get("additionalProperties").filter(|a| a.is_object()) {
            walk(&format!("{path}{{}}"), ap, missing);
        }
    }
    for name in [
        "runs.kruntimes.io",
        "runtimes.kruntimes.io",
        "workflows.kruntimes.io",
    ] {
        let mut missing = Vec::new();
        walk("", &crd_named(name), &mut missing);
        assert!(missing.is_empty(), "{name}: unbounded fields {missing:?}");
    }
}

#[test]
fn status_subresource_short_names_and_columns() {
    for crd in kruntimes_api::crd::crds().unwrap() {
        let v = &crd.spec.versions[0];
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        );
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.iter().any(|c| c.name == "Age"))
        );
    }
}
