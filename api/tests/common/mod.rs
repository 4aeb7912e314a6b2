//! Helpers shared by the API server tests: CRD installation from the committed YAML,
//! dry-run creates that return the API server's verdict, and JSON patching of
//! object templates.

#![allow(dead_code)] // each test binary uses a different subset

pub mod charts;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kruntimes_testenv::TestEnv;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::Value;

/// Repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Applies the committed CRDs (server-side apply, idempotent) and waits until the
/// API server has established them.
pub async fn install_crds(env: &TestEnv) -> Client {
    let client = env.client().await.expect("admin client");
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = repo_root().join(kruntimes_api::crd::CRD_DIR);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("crd dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read crd");
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("parse crd");
        let name = crd.metadata.name.clone().expect("crd name");
        api.patch(
            &name,
            &PatchParams::apply("kruntimes-api-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("installing {}: {e}", path.display()));
        names.push(name);
    }
    for name in names {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let crd = api.get(&name).await.expect("get crd");
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "CRD {name} not established"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Discovery can lag behind Established for a moment; wait for the resources.
    for kind in ["Run", "Runtime", "Workflow"] {
        let api = dynamic(&client, "default", kind);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while api.list(&Default::default()).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "{kind} not served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    client
}

/// A dynamic API for one kruntimes kind in a namespace.
pub fn dynamic(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kruntimes.io", "v1alpha1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    let ar = ApiResource::from_gvk_with_plural(&gvk, &plural);
    Api::namespaced_with(client.clone(), namespace, &ar)
}

/// Creates `object` with `dryRun=All`: full validation, nothing stored.
/// Returns the API server's error message on rejection.
pub async fn dry_run_create(
    client: &Client,
    namespace: &str,
    object: &Value,
) -> Result<(), String> {
    let kind = object["kind"].as_str().expect("kind");
    let obj: DynamicObject = serde_json::from_value(object.clone()).expect("dynamic object");
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match dynamic(client, namespace, kind).create(&pp, &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message.clone()),
        Err(e) => panic!("transport error creating {kind}: {e}"),
    }
}

/// Sets the value at a `/`-separated path, creating objects on the way. Array indices
/// are numbers; `-` appends.
pub fn set(target: &mut Value, path: &str, value: Value) {
    let mut cur = target;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if let Ok(idx) = part.parse::<usize>() {
            let arr = cur.as_array_mut().expect("array on path");
            if last {
                arr[idx] = value;
                return;
            }
            cur = &mut arr[idx];
        } else if *part == "-" {
            cur.as_array_mut().expect("array on path").push(value);
            return;
        } else {
            let obj = cur.as_object_mut().expect("object on path");
            if last {
                obj.insert((*part).to_string(), value);
                return;
            }
            cur = obj
                .entry((*part).to_string())
                .or_insert_with(|| Value::Object(Default::default()));
        }
    }
}

/// Removes the value at a `/`-separated path.
pub fn remove(target: &mut Value, path: &str) {
    let (parent, key) = path.rsplit_once('/').expect("path with parent");
    if let Some(obj) = target.pointer_mut(parent).and_then(Value::as_object_mut) {
        obj.remove(key);
    }
}

/// One validation case: a change to a valid template and the expected verdict.
pub struct Case {
    /// What the case shows.
    pub name: &'static str,
    /// Mutations applied to the valid template.
    pub edits: Vec<Edit>,
    /// `None`: must be accepted. `Some((field, text))`: must be rejected with a message
    /// naming `field` and containing `text`.
    pub reject: Option<(&'static str, &'static str)>,
}

/// A mutation of a template.
pub enum Edit {
    /// Set a value at a path.
    Set(&'static str, Value),
    /// Remove the value at a path.
    Remove(&'static str),
}

/// Shorthand for an accepted case.
pub fn accept(name: &'static str, edits: Vec<Edit>) -> Case {
    Case {
        name,
        edits,
        reject: None,
    }
}

/// Shorthand for a rejected case.
pub fn reject(
    name: &'static str,
    edits: Vec<Edit>,
    field: &'static str,
    text: &'static str,
) -> Case {
    Case {
        name,
        edits,
        reject: Some((field, text)),
    }
}

/// Runs every case against the API server; returns a description of each mismatch.
pub async fn run_cases(
    client: &Client,
    namespace: &str,
    template: &Value,
    cases: Vec<Case>,
) -> Vec<String> {
    let mut failures = Vec::new();
    // The template itself must be valid, or every reject case proves nothing.
    if let Err(e) = dry_run_create(client, namespace, template).await {
        failures.push(format!("the valid template was rejected: {e}"));
        return failures;
    }
    for case in cases {
        let mut object = template.clone();
        for edit in case.edits {
            match edit {
                Edit::Set(path, value) => set(&mut object, path, value),
                Edit::Remove(path) => remove(&mut object, path),
            }
        }
        let verdict = dry_run_create(client, namespace, &object).await;
        match (&case.reject, verdict) {
            (None, Ok(())) => {}
            (None, Err(msg)) => {
                failures.push(format!("{}: expected accept, got: {msg}", case.name))
            }
            (Some((field, _)), Ok(())) => failures.push(format!(
                "{}: expected rejection naming {field}, was accepted",
                case.name
            )),
            (Some((field, text)), Err(msg)) => {
                if !msg.contains(field) || !msg.contains(text) {
                    failures.push(format!(
                        "{}: expected a message naming {field:?} and containing {text:?}, got: {msg}",
                        case.name
                    ));
                }
            }
        }
    }
    failures
}
