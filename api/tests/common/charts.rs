//! Helm helpers for the chart tests: the harness's helm binary (v3, built by
//! tests/controlplane/build.sh), rendering, and flattening values files.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The helm binary built by tests/controlplane/build.sh.
pub fn helm_binary() -> PathBuf {
    kruntimes_testenv::Binaries::locate()
        .expect("control-plane binaries (run tests/controlplane/build.sh)")
        .helm
}

/// Runs helm offline (lint/template) with a private config dir; returns (success, stdout, stderr).
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let home = std::env::temp_dir().join(format!("kruntimes-helm-{}", std::process::id()));
    let out = Command::new(helm_binary())
        .args(args)
        .current_dir(super::repo_root())
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of a chart; panics with helm's stderr on failure.
pub fn render(chart: &str, namespace: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "release-under-test",
        chart,
        "--namespace",
        namespace,
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm {}: {stderr}", args.join(" "));
    stdout
}

/// The rendered documents, parsed.
pub fn documents(rendered: &str) -> Vec<Value> {
    rendered
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|v| v.is_object())
        .collect()
}

/// Reads a YAML file into JSON.
pub fn read_yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Leaves of a values tree as (dotted path, value). Empty maps and lists are leaves.
pub fn leaves(value: &Value) -> Vec<(String, Value)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
        let join = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match v {
            Value::Object(map) if !map.is_empty() => {
                map.iter().for_each(|(k, c)| walk(&join(k), c, out))
            }
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .enumerate()
                .for_each(|(i, c)| walk(&join(&i.to_string()), c, out)),
            _ => out.push((prefix.to_string(), v.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}
