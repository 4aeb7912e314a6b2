//! Helpers shared by the testenv integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kruntimes_testenv::{ImageRule, TestEnv, TestEnvOptions};
use kube::Api;

/// Image whose containers run `kruntimes-testenv-container`.
pub const IMAGE: &str = "kruntimes.test/container";
/// Upper bound for any wait; a hang guard, not a speed assertion.
pub const WAIT: Duration = Duration::from_secs(180);

pub fn options() -> TestEnvOptions {
    TestEnvOptions {
        images: vec![ImageRule::command(
            IMAGE,
            env!("CARGO_BIN_EXE_kruntimes-testenv-container"),
        )],
        ..TestEnvOptions::default()
    }
}

/// The shared environment; panics with the harness error (which names
/// tests/controlplane/build.sh when binaries are missing).
pub async fn env() -> &'static TestEnv {
    match TestEnv::shared_with(options).await {
        Ok(env) => env,
        Err(e) => panic!("{e}"),
    }
}

/// Polls `f` until it returns Some, failing with `what` after [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

pub fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").as_deref() == Some("True")
}

pub fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// Waits until the Pod satisfies `pred`, returning it.
pub async fn wait_pod(api: &Api<Pod>, name: &str, what: &str, pred: impl Fn(&Pod) -> bool) -> Pod {
    wait_for(&format!("pod {name}: {what}"), || async {
        api.get_opt(name).await.ok().flatten().filter(|p| pred(p))
    })
    .await
}

pub fn pod_from(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("valid pod JSON")
}
