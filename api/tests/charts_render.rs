//! `helm lint` and `helm template` of both charts with their default values and with
//! `ci/full-values.yaml`, which sets every knob: each knob must reach the rendered
//! objects. Also the guards: values schema, mutable image tags, nothing cluster-scoped
//! in the runtimes chart, hardened platform Pods.

mod common;

use std::collections::BTreeSet;

use common::charts::{documents, helm, leaves, read_yaml, render};
use common::repo_root;
use serde_json::Value;

const PLATFORM: &str = "./charts/kruntimes";
const RUNTIMES: &str = "./charts/kruntimes-runtimes";

/// Values subtrees passed through to Kubernetes objects as a whole: one knob each.
const PASSTHROUGH: &[&str] = &[
    "resources",
    "livenessProbe",
    "readinessProbe",
    "podSecurityContext",
    "securityContext",
    "affinity",
    "tolerations",
    "topologySpreadConstraints",
    "extraEnv",
    "env",
    "nodeSelector",
    "podAnnotations",
    "podLabels",
    "annotations",
    "labels",
    "commonLabels",
    "capacity",
    "artifactStore",
    "extraArgs",
    "imagePullSecrets",
    "allowedSecrets",
    "allowedConfigMaps",
];

/// How a knob whose value is not a distinctive string shows up.
enum Evidence {
    /// This text is in the full render.
    Present(&'static str),
    /// This text is in the default render but not in the full one.
    Absent(&'static str),
    /// This text is in the full render with these extra `--set` flags.
    With(&'static [&'static str], &'static str),
}

fn evidence_override(chart: &str, knob: &str) -> Option<Evidence> {
    use Evidence::*;
    Some(match (chart, knob) {
        (PLATFORM, "imageRegistry") => With(
            &["--set", "runtimed.image="],
            "--runtimed-image=registry.example.test:5000/kruntimes-mirror/runtimed:0.1.0",
        ),
        (PLATFORM, "allowMutableImageTags") => {
            Present("--maintainer-image=registry.example.test/kruntimes/maintainer\"")
        }
        (PLATFORM, "scheduler.leaderElection.enabled") => Present("--leader-elect=false"),
        (PLATFORM, "controller.leaderElection.enabled") => Present("--leader-elect=false"),
        (PLATFORM, "metrics.service.enabled") => Present("name: krt-full-controller-metrics"),
        (PLATFORM, "metrics.serviceMonitor.enabled") => Present("kind: ServiceMonitor"),
        (PLATFORM, "rbac.aggregateToDefaultRoles") => {
            Absent("rbac.authorization.k8s.io/aggregate-to-view")
        }
        (PLATFORM, "scheduler.logFormat") => Present("--log-format=text"),
        (PLATFORM, "controller.logFormat") => Present("--log-format=text"),
        (PLATFORM, "runtimed.imagePullPolicy") => Present("--runtimed-image-pull-policy=Never"),
        (PLATFORM, "imagePullPolicy") => Present("imagePullPolicy: Always"),
        (RUNTIMES, "imageRegistry") => With(
            &["--set", "python.image="],
            "image: \"registry.example.test:5000/runtimes-mirror/python-runtime:0.1.0\"",
        ),
        (RUNTIMES, "allowMutableImageTags") => {
            Present("image: \"registry.example.test/kruntimes/python-runtime\"")
        }
        (RUNTIMES, "imagePullPolicy") => Present("imagePullPolicy: Never"),
        (RUNTIMES, "bash.enabled") => Present("name: bash"),
        (RUNTIMES, "python.enabled") => Present("name: python"),
        (RUNTIMES, "bash.workspace.medium") => Present("medium: Memory"),
        (RUNTIMES, "python.workspace.medium") => Present("medium: Memory"),
        (RUNTIMES, "bash.artifactStore") => Present("pathStyle: true"),
        _ => return None,
    })
}

fn values_path(chart: &str, file: &str) -> std::path::PathBuf {
    repo_root().join(chart).join(file)
}

fn lint(chart: &str, extra: &[&str]) {
    let mut args = vec!["lint", "--strict", chart];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm {}:\n{stdout}\n{stderr}", args.join(" "));
    assert!(stdout.contains("0 chart(s) failed"), "{stdout}");
}

#[test]
fn both_charts_lint_with_default_and_full_values() {
    for chart in [PLATFORM, RUNTIMES] {
        lint(chart, &[]);
        lint(chart, &["-f", &format!("{chart}/ci/full-values.yaml")]);
    }
}

/// Every knob of values.yaml is set in ci/full-values.yaml, and every value set there
/// shows up in the rendered objects (and did not already with the defaults).
fn check_every_knob(chart: &str, namespace: &str) {
    let defaults = read_yaml(&values_path(chart, "values.yaml"));
    let full = read_yaml(&values_path(chart, "ci/full-values.yaml"));
    let knob = |path: &str| -> String {
        let parts: Vec<&str> = path.split('.').collect();
        match parts.iter().position(|p| PASSTHROUGH.contains(p)) {
            Some(i) => parts[..=i].join("."),
            None => path.to_string(),
        }
    };
    let default_knobs: BTreeSet<String> = leaves(&defaults).iter().map(|(p, _)| knob(p)).collect();
    let full_knobs: BTreeSet<String> = leaves(&full).iter().map(|(p, _)| knob(p)).collect();
    let untested: Vec<&String> = default_knobs.difference(&full_knobs).collect();
    assert!(
        untested.is_empty(),
        "{chart}: knobs missing from ci/full-values.yaml: {untested:?}"
    );
    let unknown: Vec<&String> = full_knobs.difference(&default_knobs).collect();
    assert!(
        unknown.is_empty(),
        "{chart}: ci/full-values.yaml sets knobs values.yaml lacks: {unknown:?}"
    );

    let full_file = format!("{chart}/ci/full-values.yaml");
    let base = render(chart, namespace, &[]);
    let rendered = render(chart, namespace, &["-f", &full_file]);
    // Group the leaves by knob: a pass-through subtree needs one visible leaf.
    let mut by_knob: std::collections::BTreeMap<String, Vec<(String, Value)>> = Default::default();
    for (path, value) in leaves(&full) {
        by_knob.entry(knob(&path)).or_default().push((path, value));
    }
    let mut missing = Vec::new();
    for (name, leaves) in by_knob {
        if let Some(evidence) = evidence_override(chart, &name) {
            let ok = match evidence {
                Evidence::Present(text) => rendered.contains(text),
                Evidence::Absent(text) => !rendered.contains(text) && base.contains(text),
                Evidence::With(sets, text) => {
                    let mut args = vec!["-f", full_file.as_str()];
                    args.extend_from_slice(sets);
                    render(chart, namespace, &args).contains(text) && !base.contains(text)
                }
            };
            if !ok {
                missing.push(format!("{name}: expected its evidence in the render"));
            }
            continue;
        }
        let visible = leaves.iter().any(|(path, value)| {
            let last = path.rsplit('.').next().unwrap_or_default();
            let scalar = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // The value, the sentinel key of a map, `key: value` or a `--flag=value`.
            let candidates = [
                scalar.clone(),
                last.to_string(),
                format!("{last}: {scalar}"),
                format!("={scalar}"),
            ];
            candidates.iter().any(|c| {
                c.len() >= 3 && rendered.contains(c.as_str()) && !base.contains(c.as_str())
            })
        });
        if !visible {
            missing.push(format!("{name} = {leaves:?}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{chart}: values that did not reach the rendered objects:\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_platform_knob_reaches_the_rendered_objects() {
    check_every_knob(PLATFORM, "kruntimes-system");
}

#[test]
fn every_runtimes_knob_reaches_the_rendered_objects() {
    check_every_knob(RUNTIMES, "team-a");
}

#[test]
fn platform_defaults_render_the_expected_objects() {
    let docs = documents(&render(PLATFORM, "kruntimes-system", &[]));
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    kinds.sort();
    let expected = [
        "ClusterRole/release-under-test-controller",
        "ClusterRole/release-under-test-edit",
        "ClusterRole/release-under-test-runtime-maintainer",
        "ClusterRole/release-under-test-runtimed",
        "ClusterRole/release-under-test-scheduler",
        "ClusterRole/release-under-test-view",
        "ClusterRoleBinding/release-under-test-controller",
        "ClusterRoleBinding/release-under-test-scheduler",
        "Deployment/release-under-test-controller",
        "Deployment/release-under-test-scheduler",
        "Role/release-under-test-controller-leader-election",
        "Role/release-under-test-scheduler-leader-election",
        "RoleBinding/release-under-test-controller-leader-election",
        "RoleBinding/release-under-test-scheduler-leader-election",
        "Service/release-under-test-controller-metrics",
        "Service/release-under-test-scheduler",
        "Service/release-under-test-scheduler-metrics",
        "ServiceAccount/release-under-test-controller",
        "ServiceAccount/release-under-test-scheduler",
    ];
    assert_eq!(kinds, expected, "no ServiceMonitor by default");

    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        let image = c["image"].as_str().unwrap_or_default();
        assert!(
            image.starts_with("ghcr.io/kruntimes/") && image.ends_with(":0.1.0"),
            "default image {image}"
        );
        assert!(
            c["livenessProbe"].is_object()
                && c["readinessProbe"].is_object()
                && c["resources"]["requests"].is_object()
        );
    }
    // The controller gets the runtimed image, the scheduler address and the ClusterRole to bind.
    let controller = docs
        .iter()
        .find(|d| {
            d["metadata"]["name"] == "release-under-test-controller" && d["kind"] == "Deployment"
        })
        .unwrap();
    let args: Vec<&str> = controller["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "--runtimed-image=ghcr.io/kruntimes/runtimed:0.1.0",
        "--scheduler-address=release-under-test-scheduler.kruntimes-system.svc:7443",
        "--runtimed-cluster-role=release-under-test-runtimed",
        "--leader-elect=true",
    ] {
        assert!(
            args.contains(&want),
            "controller args lack {want}: {args:?}"
        );
    }
}

#[test]
fn runtimes_chart_creates_only_namespaced_runtime_objects() {
    let docs = documents(&render(
        RUNTIMES,
        "team-a",
        &["-f", &format!("{RUNTIMES}/ci/full-values.yaml")],
    ));
    assert_eq!(docs.len(), 2);
    for d in &docs {
        assert_eq!(d["kind"], "Runtime");
        assert_eq!(d["metadata"]["namespace"], "team-a");
        let containers = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers[0]["name"], "runtime");
    }
    let defaults = documents(&render(RUNTIMES, "team-a", &[]));
    let images: Vec<&str> = defaults
        .iter()
        .filter_map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
        .collect();
    assert_eq!(
        images,
        [
            "ghcr.io/kruntimes/bash-runtime:0.1.0",
            "ghcr.io/kruntimes/python-runtime:0.1.0"
        ]
    );
    let disabled = render(RUNTIMES, "team-a", &["--set", "bash.enabled=false"]);
    assert!(!disabled.contains("name: bash") && disabled.contains("name: python"));
}

#[test]
fn platform_toggles_remove_what_they_disable() {
    let on = render(PLATFORM, "kruntimes-system", &[]);
    let off = render(
        PLATFORM,
        "kruntimes-system",
        &["--set", "metrics.service.enabled=false"],
    );
    assert_eq!(on.matches("kind: Service\n").count(), 3);
    assert_eq!(
        off.matches("kind: Service\n").count(),
        1,
        "only the scheduler link Service stays"
    );
    let (ok, _, stderr) = helm(&[
        "template",
        "x",
        PLATFORM,
        "--set",
        "metrics.service.enabled=false",
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ]);
    assert!(
        !ok && stderr.contains("metrics.serviceMonitor.enabled needs metrics.service.enabled"),
        "{stderr}"
    );
}

#[test]
fn images_accept_tags_and_digests_but_not_mutable_references() {
    let digest = format!(
        "example.test:5000/kruntimes/scheduler@sha256:{}",
        "a".repeat(64)
    );
    let out = render(
        PLATFORM,
        "kruntimes-system",
        &["--set", &format!("scheduler.image={digest}")],
    );
    assert!(out.contains(&digest));
    for (chart, key) in [
        (PLATFORM, "scheduler.image"),
        (PLATFORM, "controller.image"),
        (PLATFORM, "runtimed.image"),
        (RUNTIMES, "bash.image"),
        (RUNTIMES, "python.image"),
    ] {
        for bad in [
            "example.test/kruntimes/thing",
            "example.test:5000/kruntimes/thing:latest",
        ] {
            let (ok, _, stderr) = helm(&["template", "x", chart, "--set", &format!("{key}={bad}")]);
            assert!(!ok, "{chart} {key}={bad} was accepted");
            assert!(
                stderr.contains(key) && stderr.contains("mutable tag"),
                "{stderr}"
            );
        }
        let (ok, _, stderr) = helm(&[
            "template",
            "x",
            chart,
            "--set",
            &format!("{key}=example.test/kruntimes/thing:latest"),
            "--set",
            "allowMutableImageTags=true",
        ]);
        assert!(ok, "{stderr}");
    }
}

#[test]
fn values_schema_rejects_typos_and_out_of_range_values() {
    let cases = [
        (
            PLATFORM,
            "scheduler.replica=2",
            "additional properties 'replica' not allowed",
        ),
        (
            PLATFORM,
            "controler.image=x:1",
            "additional properties 'controler' not allowed",
        ),
        (PLATFORM, "scheduler.linkPort=70000", "/scheduler/linkPort"),
        (PLATFORM, "controller.logLevel=loud", "/controller/logLevel"),
        (PLATFORM, "runtimed.image=Not A Ref", "/runtimed/image"),
        (
            RUNTIMES,
            "bash.replica=2",
            "additional properties 'replica' not allowed",
        ),
        (RUNTIMES, "python.capacity.runs=0", "/python/capacity/runs"),
        (
            RUNTIMES,
            "bash.artifactStore.s3.bucket=Bad_Bucket",
            "/bash/artifactStore/s3/bucket",
        ),
        (
            RUNTIMES,
            "artifactStore.filesystem.subPath=../escape",
            "/artifactStore/filesystem",
        ),
        (
            RUNTIMES,
            "bash.workspace.medium=SSD",
            "/bash/workspace/medium",
        ),
    ];
    for (chart, set, text) in cases {
        let (ok, _, stderr) = helm(&["template", "x", chart, "--set", set]);
        assert!(!ok, "{chart} --set {set} was accepted");
        assert!(
            stderr.contains(text),
            "{chart} --set {set}: expected {text:?} in {stderr}"
        );
    }
}
