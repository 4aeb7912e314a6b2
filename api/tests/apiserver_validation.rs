//! Every schema rule against a real kube-apiserver: for each rule one object that
//! satisfies it is accepted and one that breaks it is rejected with a message naming
//! the field. Objects are created with `dryRun=All`, so validation (OpenAPI bounds and
//! CEL) is the API server's own and nothing is stored.

mod common;

use common::{Case, Edit::Remove, Edit::Set, accept, reject, run_cases};
use kruntimes_testenv::TestEnv;
use serde_json::{Value, json};

fn run_template(ns: &str) -> Value {
    json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Run",
        "metadata": {"name": "valid", "namespace": ns},
        "spec": {"runtime": "bash", "source": {"inline": {"script": "echo hello"}}},
    })
}

fn git_source() -> Value {
    json!({"git": {"url": "https://github.com/example/repo.git", "commit": "0123456789abcdef0123456789abcdef01234567"}})
}

fn many<T: Clone + Into<Value>>(n: usize, item: T) -> Value {
    Value::Array(vec![item.into(); n])
}

fn env_vars(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"name": format!("V{i}"), "value": "x"}))
            .collect(),
    )
}

fn run_cases_list() -> Vec<Case> {
    vec![
        // spec.runtime
        accept(
            "runtime label-value syntax",
            vec![Set("/spec/runtime", json!("Py_3.12-fast"))],
        ),
        reject(
            "runtime bad syntax",
            vec![Set("/spec/runtime", json!("-bash"))],
            "spec.runtime",
            "should match",
        ),
        reject(
            "runtime too long",
            vec![Set("/spec/runtime", json!("a".repeat(64)))],
            "spec.runtime",
            "Too long",
        ),
        reject(
            "runtime required",
            vec![Remove("/spec/runtime")],
            "spec.runtime",
            "Required value",
        ),
        // spec.source
        accept(
            "git source with entrypoint",
            vec![
                Set("/spec/source", git_source()),
                Set(
                    "/spec/task",
                    json!({"entrypoint": "ci/build.sh", "args": ["--fast"]}),
                ),
            ],
        ),
        accept(
            "scp-like git url and sha256 commit",
            vec![
                Set(
                    "/spec/source",
                    json!({"git": {"url": "git@github.com:example/repo.git", "commit": "a".repeat(64)}}),
                ),
                Set("/spec/task/entrypoint", json!("run.py")),
            ],
        ),
        reject(
            "inline and git together",
            vec![Set("/spec/source/git", git_source()["git"].clone())],
            "spec.source",
            "exactly one of source.inline or source.git",
        ),
        reject(
            "no source kind",
            vec![Set("/spec/source", json!({}))],
            "spec.source",
            "exactly one of source.inline or source.git",
        ),
        reject(
            "source required",
            vec![Remove("/spec/source")],
            "spec.source",
            "Required value",
        ),
        accept(
            "inline script of exactly 256 KiB",
            vec![Set(
                "/spec/source/inline/script",
                json!("a".repeat(262_144)),
            )],
        ),
        reject(
            "inline script over 256 KiB characters",
            vec![Set(
                "/spec/source/inline/script",
                json!("a".repeat(262_145)),
            )],
            "spec.source.inline.script",
            "Too long",
        ),
        reject(
            "inline script over 256 KiB bytes of UTF-8",
            vec![Set("/spec/source/inline/script", json!("€".repeat(90_000)))],
            "spec.source.inline.script",
            "at most 262144 bytes",
        ),
        reject(
            "empty inline script",
            vec![Set("/spec/source/inline/script", json!(""))],
            "spec.source.inline.script",
            "should be at least 1 chars long",
        ),
        accept(
            "inline filename",
            vec![Set("/spec/source/inline/filename", json!("job.sh"))],
        ),
        reject(
            "inline filename with slash",
            vec![Set("/spec/source/inline/filename", json!("a/job.sh"))],
            "spec.source.inline.filename",
            "should match",
        ),
        reject(
            "inline filename dot-dot",
            vec![Set("/spec/source/inline/filename", json!(".."))],
            "spec.source.inline.filename",
            "must not be '.' or '..'",
        ),
        reject(
            "git url with credentials",
            vec![
                Set(
                    "/spec/source",
                    json!({"git": {"url": "https://user:token@github.com/x/y", "commit": "0123456789abcdef0123456789abcdef01234567"}}),
                ),
                Set("/spec/task/entrypoint", json!("run.sh")),
            ],
            "spec.source.git.url",
            "should match",
        ),
        reject(
            "git url with file scheme",
            vec![
                Set(
                    "/spec/source",
                    json!({"git": {"url": "file:///etc/repo", "commit": "0123456789abcdef0123456789abcdef01234567"}}),
                ),
                Set("/spec/task/entrypoint", json!("run.sh")),
            ],
            "spec.source.git.url",
            "should match",
        ),
        reject(
            "git commit is a branch name",
            vec![
                Set(
                    "/spec/source",
                    json!({"git": {"url": "https://github.com/x/y", "commit": "main"}}),
                ),
                Set("/spec/task/entrypoint", json!("run.sh")),
            ],
            "spec.source.git.commit",
            "should",
        ),
        // spec.task
        reject(
            "git source without entrypoint",
            vec![Set("/spec/source", git_source())],
            "spec.task",
            "task.entrypoint is required with source.git",
        ),
        reject(
            "inline source with entrypoint",
            vec![Set("/spec/task/entrypoint", json!("x.sh"))],
            "spec.task",
            "not allowed with source.inline",
        ),
        accept(
            "inline source with args",
            vec![Set("/spec/task/args", json!(["a", "b"]))],
        ),
        reject(
            "entrypoint with dot-dot",
            vec![
                Set("/spec/source", git_source()),
                Set("/spec/task/entrypoint", json!("../etc/passwd")),
            ],
            "spec.task.entrypoint",
            "without '.' or '..' segments",
        ),
        reject(
            "entrypoint with dot segment",
            vec![
                Set("/spec/source", git_source()),
                Set("/spec/task/entrypoint", json!("a/./b.sh")),
            ],
            "spec.task.entrypoint",
            "without '.' or '..' segments",
        ),
        reject(
            "absolute entrypoint",
            vec![
                Set("/spec/source", git_source()),
                Set("/spec/task/entrypoint", json!("/bin/sh")),
            ],
            "spec.task.entrypoint",
            "should match",
        ),
        reject(
            "too many args",
            vec![Set("/spec/task/args", many(257, "x"))],
            "spec.task.args",
            "Too many",
        ),
        reject(
            "argument too long",
            vec![Set("/spec/task/args", json!(["x".repeat(4097)]))],
            "spec.task.args[0]",
            "Too long",
        ),
        // spec.env
        accept(
            "env value and allowed refs",
            vec![Set(
                "/spec/env",
                json!([
                    {"name": "A", "value": ""},
                    {"name": "TOKEN", "secretKeyRef": {"name": "ci-token", "key": "token"}},
                    {"name": "CFG", "configMapKeyRef": {"name": "settings.v1", "key": "app.conf"}},
                ]),
            )],
        ),
        accept("128 env vars", vec![Set("/spec/env", env_vars(128))]),
        reject(
            "129 env vars",
            vec![Set("/spec/env", env_vars(129))],
            "spec.env",
            "Too many",
        ),
        reject(
            "duplicate env names",
            vec![Set(
                "/spec/env",
                json!([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
            )],
            "spec.env[1]",
            "Duplicate value",
        ),
        reject(
            "env name not an identifier",
            vec![Set("/spec/env", json!([{"name": "1A", "value": "1"}]))],
            "spec.env[0].name",
            "should match",
        ),
        reject(
            "reserved env prefix",
            vec![Set(
                "/spec/env",
                json!([{"name": "KRUNTIMES_OUTPUTS", "value": "1"}]),
            )],
            "spec.env[0].name",
            "reserved for runtimed",
        ),
        reject(
            "env value and secret ref",
            vec![Set(
                "/spec/env",
                json!([{"name": "A", "value": "1", "secretKeyRef": {"name": "s", "key": "k"}}]),
            )],
            "spec.env[0]",
            "exactly one of value, secretKeyRef or configMapKeyRef",
        ),
        reject(
            "env without value",
            vec![Set("/spec/env", json!([{"name": "A"}]))],
            "spec.env[0]",
            "exactly one of value, secretKeyRef or configMapKeyRef",
        ),
        reject(
            "env value too long",
            vec![Set(
                "/spec/env",
                json!([{"name": "A", "value": "x".repeat(32_769)}]),
            )],
            "spec.env[0].value",
            "Too long",
        ),
        reject(
            "secret name invalid",
            vec![Set(
                "/spec/env",
                json!([{"name": "A", "secretKeyRef": {"name": "Bad_Name", "key": "k"}}]),
            )],
            "spec.env[0].secretKeyRef.name",
            "should match",
        ),
        reject(
            "configmap key invalid",
            vec![Set(
                "/spec/env",
                json!([{"name": "A", "configMapKeyRef": {"name": "c", "key": "a/b"}}]),
            )],
            "spec.env[0].configMapKeyRef.key",
            "should match",
        ),
        // spec.timeout
        accept("timeout 1h30m", vec![Set("/spec/timeout", json!("1h30m"))]),
        accept("timeout 1s", vec![Set("/spec/timeout", json!("1s"))]),
        reject(
            "timeout above 168h",
            vec![Set("/spec/timeout", json!("169h"))],
            "spec.timeout",
            "between 1s and 168h",
        ),
        reject(
            "timeout below 1s",
            vec![Set("/spec/timeout", json!("500ms"))],
            "spec.timeout",
            "between 1s and 168h",
        ),
        reject(
            "timeout not a duration",
            vec![Set("/spec/timeout", json!("ten minutes"))],
            "spec.timeout",
            "between 1s and 168h",
        ),
        // spec.retry
        accept(
            "retry policy",
            vec![Set(
                "/spec/retry",
                json!({"maxAttempts": 10, "backoffSeconds": 0, "maxBackoffSeconds": 60, "retryOn": ["PodLost", "Failed", "Timeout"]}),
            )],
        ),
        reject(
            "too many attempts",
            vec![Set("/spec/retry", json!({"maxAttempts": 11}))],
            "spec.retry.maxAttempts",
            "less than or equal to 10",
        ),
        reject(
            "zero attempts",
            vec![Set("/spec/retry", json!({"maxAttempts": 0}))],
            "spec.retry.maxAttempts",
            "greater than or equal to 1",
        ),
        reject(
            "max backoff below backoff",
            vec![Set(
                "/spec/retry",
                json!({"backoffSeconds": 100, "maxBackoffSeconds": 10}),
            )],
            "spec.retry.maxBackoffSeconds",
            "greater than or equal to retry.backoffSeconds",
        ),
        reject(
            "backoff too long",
            vec![Set(
                "/spec/retry",
                json!({"backoffSeconds": 3601, "maxBackoffSeconds": 3601}),
            )],
            "spec.retry.backoffSeconds",
            "less than or equal to 3600",
        ),
        reject(
            "unknown retry reason",
            vec![Set("/spec/retry", json!({"retryOn": ["Always"]}))],
            "spec.retry.retryOn[0]",
            "Unsupported value",
        ),
        reject(
            "duplicate retry reason",
            vec![Set(
                "/spec/retry",
                json!({"retryOn": ["PodLost", "PodLost"]}),
            )],
            "spec.retry.retryOn[1]",
            "Duplicate value",
        ),
        reject(
            "empty retryOn",
            vec![Set("/spec/retry", json!({"retryOn": []}))],
            "spec.retry.retryOn",
            "should have at least 1 items",
        ),
        // spec.ttlSecondsAfterFinished
        accept(
            "ttl zero",
            vec![Set("/spec/ttlSecondsAfterFinished", json!(0))],
        ),
        reject(
            "negative ttl",
            vec![Set("/spec/ttlSecondsAfterFinished", json!(-1))],
            "spec.ttlSecondsAfterFinished",
            "greater than or equal to 0",
        ),
        reject(
            "ttl above a year",
            vec![Set("/spec/ttlSecondsAfterFinished", json!(31_536_001))],
            "spec.ttlSecondsAfterFinished",
            "less than or equal to 31536000",
        ),
        // spec.resources
        accept(
            "several logical resources",
            vec![Set(
                "/spec/resources",
                json!([{"name": "runs", "quantity": 1}, {"name": "gpu-slots", "quantity": 2}]),
            )],
        ),
        reject(
            "no resources",
            vec![Set("/spec/resources", json!([]))],
            "spec.resources",
            "should have at least 1 items",
        ),
        reject(
            "zero quantity",
            vec![Set(
                "/spec/resources",
                json!([{"name": "runs", "quantity": 0}]),
            )],
            "spec.resources[0].quantity",
            "greater than or equal to 1",
        ),
        reject(
            "resource name invalid",
            vec![Set(
                "/spec/resources",
                json!([{"name": "Runs!", "quantity": 1}]),
            )],
            "spec.resources[0].name",
            "should match",
        ),
        reject(
            "duplicate resource",
            vec![Set(
                "/spec/resources",
                json!([{"name": "runs", "quantity": 1}, {"name": "runs", "quantity": 2}]),
            )],
            "spec.resources[1]",
            "Duplicate value",
        ),
        reject(
            "too many resources",
            vec![Set(
                "/spec/resources",
                Value::Array(
                    (0..17)
                        .map(|i| json!({"name": format!("r{i}"), "quantity": 1}))
                        .collect(),
                ),
            )],
            "spec.resources",
            "Too many",
        ),
        // spec.artifacts
        accept(
            "artifact policy",
            vec![Set(
                "/spec/artifacts",
                json!({"collect": "OnFailure", "maxCount": 256, "maxTotalBytes": 68_719_476_736_i64}),
            )],
        ),
        reject(
            "unknown collect policy",
            vec![Set("/spec/artifacts", json!({"collect": "Sometimes"}))],
            "spec.artifacts.collect",
            "Unsupported value",
        ),
        reject(
            "too many artifacts allowed",
            vec![Set("/spec/artifacts", json!({"maxCount": 257}))],
            "spec.artifacts.maxCount",
            "less than or equal to 256",
        ),
        reject(
            "too many artifact bytes allowed",
            vec![Set(
                "/spec/artifacts",
                json!({"maxTotalBytes": 68_719_476_737_i64}),
            )],
            "spec.artifacts.maxTotalBytes",
            "less than or equal to",
        ),
        // unknown fields are rejected under strict field validation by kubectl; pruned here
    ]
}

fn runtime_template(ns: &str) -> Value {
    json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Runtime",
        "metadata": {"name": "bash", "namespace": ns},
        "spec": {"template": {"spec": {"containers": [{"name": "runtime", "image": "ghcr.io/kruntimes/bash-runtime:0.1.0"}]}}},
    })
}

fn containers(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"name": n, "image": "busybox:1.36"}))
            .collect(),
    )
}

fn runtime_cases() -> Vec<Case> {
    vec![
        // metadata.name (root rule)
        reject(
            "runtime name not a DNS label",
            vec![Set("/metadata/name", json!("bash.v2"))],
            "metadata.name of a Runtime",
            "DNS-1123 label",
        ),
        reject(
            "runtime name too long",
            vec![Set("/metadata/name", json!("a".repeat(64)))],
            "metadata.name of a Runtime",
            "at most 63",
        ),
        // spec.template
        accept(
            "template with sidecars of its own",
            vec![Set(
                "/spec/template/spec/containers",
                containers(&["runtime", "helper"]),
            )],
        ),
        reject(
            "template without runtime container",
            vec![Set("/spec/template/spec/containers", containers(&["main"]))],
            "spec.template.spec.containers",
            "named 'runtime'",
        ),
        reject(
            "template defines runtimed",
            vec![Set(
                "/spec/template/spec/containers",
                containers(&["runtime", "runtimed"]),
            )],
            "spec.template.spec.containers",
            "'runtimed' is reserved",
        ),
        reject(
            "init container named runtimed",
            vec![Set(
                "/spec/template/spec/initContainers",
                containers(&["runtimed"]),
            )],
            "spec.template.spec.containers",
            "'runtimed' is reserved",
        ),
        reject(
            "reserved volume name",
            vec![Set(
                "/spec/template/spec/volumes",
                json!([{"name": "kruntimes-sockets", "emptyDir": {}}]),
            )],
            "spec.template.spec.volumes",
            "reserved",
        ),
        reject(
            "too many containers",
            vec![Set(
                "/spec/template/spec/containers",
                containers(&[
                    "runtime", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m",
                    "n", "o", "p",
                ]),
            )],
            "spec.template.spec.containers",
            "Too many",
        ),
        reject(
            "template without spec",
            vec![Remove("/spec/template/spec")],
            "spec.template.spec.containers",
            "named 'runtime'",
        ),
        reject(
            "template required",
            vec![Remove("/spec/template")],
            "spec.template",
            "Required value",
        ),
        // spec.server
        accept(
            "server on a port",
            vec![Set("/spec/server", json!({"port": 9000}))],
        ),
        accept(
            "server on another socket",
            vec![Set(
                "/spec/server",
                json!({"socketPath": "/run/kruntimes/custom.sock"}),
            )],
        ),
        reject(
            "server socket and port",
            vec![Set(
                "/spec/server",
                json!({"socketPath": "/run/kruntimes/a.sock", "port": 9000}),
            )],
            "spec.server",
            "exactly one of server.socketPath or server.port",
        ),
        reject(
            "server without endpoint",
            vec![Set("/spec/server", json!({}))],
            "spec.server",
            "exactly one of server.socketPath or server.port",
        ),
        reject(
            "socket outside the shared volume",
            vec![Set(
                "/spec/server",
                json!({"socketPath": "/tmp/runtime.sock"}),
            )],
            "spec.server.socketPath",
            "should match",
        ),
        reject(
            "socket path dot-dot",
            vec![Set(
                "/spec/server",
                json!({"socketPath": "/run/kruntimes/.."}),
            )],
            "spec.server.socketPath",
            "must name a file",
        ),
        reject(
            "port zero",
            vec![Set("/spec/server", json!({"port": 0}))],
            "spec.server.port",
            "greater than or equal to 1",
        ),
        reject(
            "port too large",
            vec![Set("/spec/server", json!({"port": 65536}))],
            "spec.server.port",
            "less than or equal to 65535",
        ),
        // spec.replicas
        accept("zero replicas", vec![Set("/spec/replicas", json!(0))]),
        reject(
            "negative replicas",
            vec![Set("/spec/replicas", json!(-1))],
            "spec.replicas",
            "greater than or equal to 0",
        ),
        reject(
            "too many replicas",
            vec![Set("/spec/replicas", json!(1001))],
            "spec.replicas",
            "less than or equal to 1000",
        ),
        // spec.capacity
        accept(
            "capacity",
            vec![Set(
                "/spec/capacity",
                json!([{"name": "runs", "quantity": 8}, {"name": "memory-gb", "quantity": 16}]),
            )],
        ),
        reject(
            "empty capacity",
            vec![Set("/spec/capacity", json!([]))],
            "spec.capacity",
            "should have at least 1 items",
        ),
        reject(
            "capacity too large",
            vec![Set(
                "/spec/capacity",
                json!([{"name": "runs", "quantity": 1_000_001}]),
            )],
            "spec.capacity[0].quantity",
            "less than or equal to 1000000",
        ),
        // spec.artifactStore
        accept(
            "filesystem store",
            vec![Set(
                "/spec/artifactStore",
                json!({"filesystem": {"claimName": "artifacts", "subPath": "team-a/runs"}}),
            )],
        ),
        accept(
            "s3 store",
            vec![Set(
                "/spec/artifactStore",
                json!({"s3": {"bucket": "kruntimes-artifacts", "prefix": "prod/eu", "region": "eu-west-1", "endpoint": "http://[::1]:7070", "pathStyle": true, "credentialsSecret": {"name": "s3-creds"}}}),
            )],
        ),
        reject(
            "both stores",
            vec![Set(
                "/spec/artifactStore",
                json!({"filesystem": {"claimName": "a"}, "s3": {"bucket": "bkt"}}),
            )],
            "spec.artifactStore",
            "exactly one of artifactStore.filesystem or artifactStore.s3",
        ),
        reject(
            "no store kind",
            vec![Set("/spec/artifactStore", json!({}))],
            "spec.artifactStore",
            "exactly one of artifactStore.filesystem or artifactStore.s3",
        ),
        reject(
            "claim name invalid",
            vec![Set(
                "/spec/artifactStore",
                json!({"filesystem": {"claimName": "Artifacts"}}),
            )],
            "spec.artifactStore.filesystem.claimName",
            "should match",
        ),
        reject(
            "subPath traversal",
            vec![Set(
                "/spec/artifactStore",
                json!({"filesystem": {"claimName": "a", "subPath": "x/../../etc"}}),
            )],
            "spec.artifactStore.filesystem.subPath",
            "must not contain '.' or '..' segments",
        ),
        reject(
            "absolute subPath",
            vec![Set(
                "/spec/artifactStore",
                json!({"filesystem": {"claimName": "a", "subPath": "/etc"}}),
            )],
            "spec.artifactStore.filesystem.subPath",
            "should match",
        ),
        reject(
            "bucket name invalid",
            vec![Set(
                "/spec/artifactStore",
                json!({"s3": {"bucket": "My_Bucket"}}),
            )],
            "spec.artifactStore.s3.bucket",
            "should match",
        ),
        reject(
            "bucket name too short",
            vec![Set("/spec/artifactStore", json!({"s3": {"bucket": "ab"}}))],
            "spec.artifactStore.s3.bucket",
            "at least 3",
        ),
        reject(
            "prefix traversal",
            vec![Set(
                "/spec/artifactStore",
                json!({"s3": {"bucket": "bkt", "prefix": "a/.."}}),
            )],
            "spec.artifactStore.s3.prefix",
            "must not contain '.' or '..' segments",
        ),
        reject(
            "prefix with leading slash",
            vec![Set(
                "/spec/artifactStore",
                json!({"s3": {"bucket": "bkt", "prefix": "/a"}}),
            )],
            "spec.artifactStore.s3.prefix",
            "should match",
        ),
        reject(
            "endpoint not http",
            vec![Set(
                "/spec/artifactStore",
                json!({"s3": {"bucket": "bkt", "endpoint": "ftp://s3.local"}}),
            )],
            "spec.artifactStore.s3.endpoint",
            "should match",
        ),
        reject(
            "region invalid",
            vec![Set(
                "/spec/artifactStore",
                json!({"s3": {"bucket": "bkt", "region": "EU West"}}),
            )],
            "spec.artifactStore.s3.region",
            "should match",
        ),
        reject(
            "credentials key invalid",
            vec![Set(
                "/spec/artifactStore",
                json!({"s3": {"bucket": "bkt", "credentialsSecret": {"name": "c", "accessKeyIdKey": "a b"}}}),
            )],
            "spec.artifactStore.s3.credentialsSecret.accessKeyIdKey",
            "should match",
        ),
        // spec.workspace
        accept(
            "workspace in memory",
            vec![Set(
                "/spec/workspace",
                json!({"sizeLimit": "1Ti", "medium": "Memory"}),
            )],
        ),
        reject(
            "workspace too large",
            vec![Set("/spec/workspace", json!({"sizeLimit": "2Ti"}))],
            "spec.workspace.sizeLimit",
            "at most 1Ti",
        ),
        reject(
            "workspace size not a quantity",
            vec![Set("/spec/workspace", json!({"sizeLimit": "10GB"}))],
            "spec.workspace.sizeLimit",
            "should match",
        ),
        reject(
            "workspace medium unknown",
            vec![Set("/spec/workspace", json!({"medium": "SSD"}))],
            "spec.workspace.medium",
            "Unsupported value",
        ),
        // spec.allowedSecrets / allowedConfigMaps
        accept(
            "allowed secrets and config maps",
            vec![
                Set(
                    "/spec/allowedSecrets",
                    json!(["ci-token", "registry.creds"]),
                ),
                Set("/spec/allowedConfigMaps", json!(["settings"])),
            ],
        ),
        reject(
            "duplicate allowed secret",
            vec![Set("/spec/allowedSecrets", json!(["a", "a"]))],
            "spec.allowedSecrets[1]",
            "Duplicate value",
        ),
        reject(
            "allowed secret name invalid",
            vec![Set("/spec/allowedSecrets", json!(["../x"]))],
            "spec.allowedSecrets[0]",
            "should match",
        ),
        reject(
            "too many allowed config maps",
            vec![Set(
                "/spec/allowedConfigMaps",
                Value::Array((0..65).map(|i| json!(format!("c{i}"))).collect()),
            )],
            "spec.allowedConfigMaps",
            "Too many",
        ),
    ]
}

fn workflow_template(ns: &str) -> Value {
    let run = |script: &str| json!({"runtime": "bash", "source": {"inline": {"script": script}}});
    json!({
        "apiVersion": "kruntimes.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"name": "build", "namespace": ns},
        "spec": {"steps": [
            {"name": "compile", "run": run("echo IMAGE=x >> $KRUNTIMES_OUTPUTS")},
            {"name": "test", "dependsOn": ["compile"], "parameters": [{"name": "IMAGE", "fromStep": "compile", "output": "IMAGE"}], "run": run("echo $IMAGE")},
            {"name": "publish", "dependsOn": ["compile", "test"], "run": run("true")},
        ]},
    })
}

fn steps(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"name": format!("s{i}"), "run": {"runtime": "bash", "source": {"inline": {"script": "true"}}}}))
            .collect(),
    )
}

fn workflow_cases() -> Vec<Case> {
    vec![
        reject(
            "workflow name too long",
            vec![Set("/metadata/name", json!("w".repeat(190)))],
            "metadata.name of a Workflow",
            "at most 189",
        ),
        accept("32 steps", vec![Set("/spec/steps", steps(32))]),
        reject(
            "33 steps",
            vec![Set("/spec/steps", steps(33))],
            "spec.steps",
            "Too many",
        ),
        reject(
            "no steps",
            vec![Set("/spec/steps", json!([]))],
            "spec.steps",
            "should have at least 1 items",
        ),
        reject(
            "duplicate step names",
            vec![
                Set("/spec/steps/1/name", json!("compile")),
                Remove("/spec/steps/1/dependsOn"),
                Remove("/spec/steps/1/parameters"),
                Set("/spec/steps/2/dependsOn", json!(["compile"])),
            ],
            "spec.steps[1]",
            "Duplicate value",
        ),
        reject(
            "step name invalid",
            vec![Set("/spec/steps/2/name", json!("Publish"))],
            "spec.steps[2].name",
            "should match",
        ),
        reject(
            "dependency on a later step",
            vec![Set(
                "/spec/steps/1/dependsOn",
                json!(["compile", "publish"]),
            )],
            "spec.steps",
            "must name a step listed before it",
        ),
        reject(
            "dependency on an unknown step",
            vec![Set("/spec/steps/2/dependsOn", json!(["deploy"]))],
            "spec.steps",
            "must name a step listed before it",
        ),
        reject(
            "dependency on itself",
            vec![Set("/spec/steps/2/dependsOn", json!(["publish"]))],
            "spec.steps[2].dependsOn",
            "cannot depend on itself",
        ),
        reject(
            "duplicate dependency",
            vec![Set(
                "/spec/steps/2/dependsOn",
                json!(["compile", "compile"]),
            )],
            "spec.steps[2].dependsOn[1]",
            "Duplicate value",
        ),
        reject(
            "parameter from a step not depended on",
            vec![
                Set(
                    "/spec/steps/2/parameters",
                    json!([{"name": "IMAGE", "fromStep": "compile", "output": "IMAGE"}]),
                ),
                Set("/spec/steps/2/dependsOn", json!(["test"])),
            ],
            "spec.steps[2].parameters",
            "must be listed in dependsOn",
        ),
        reject(
            "parameter shadows env",
            vec![Set(
                "/spec/steps/1/run/env",
                json!([{"name": "IMAGE", "value": "y"}]),
            )],
            "spec.steps[1].parameters",
            "must not repeat a name of run.env",
        ),
        reject(
            "reserved parameter name",
            vec![Set("/spec/steps/1/parameters/0/name", json!("KRUNTIMES_X"))],
            "spec.steps[1].parameters[0].name",
            "reserved for runtimed",
        ),
        reject(
            "parameter output key invalid",
            vec![Set("/spec/steps/1/parameters/0/output", json!("a-b"))],
            "spec.steps[1].parameters[0].output",
            "should match",
        ),
        reject(
            "cancel inside a step",
            vec![Set("/spec/steps/0/run/cancelRequested", json!(true))],
            "spec.steps[0].run.cancelRequested",
            "not allowed in a step",
        ),
        reject(
            "step run obeys Run rules",
            vec![Set(
                "/spec/steps/0/run/source/git",
                git_source()["git"].clone(),
            )],
            "spec.steps[0].run.source",
            "exactly one of source.inline or source.git",
        ),
        reject(
            "workflow ttl negative",
            vec![Set("/spec/ttlSecondsAfterFinished", json!(-5))],
            "spec.ttlSecondsAfterFinished",
            "greater than or equal to 0",
        ),
    ]
}

async fn check(template: fn(&str) -> Value, cases: fn() -> Vec<Case>) {
    let env = TestEnv::shared().await.expect("test environment");
    let client = common::install_crds(env).await;
    let ns = env.namespace().await.expect("namespace");
    let failures = run_cases(&client, &ns, &template(&ns), cases()).await;
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn run_validation_rules() {
    check(run_template, run_cases_list).await;
}

#[tokio::test]
async fn runtime_validation_rules() {
    check(runtime_template, runtime_cases).await;
}

#[tokio::test]
async fn workflow_validation_rules() {
    check(workflow_template, workflow_cases).await;
}
