//! The kubelet's Node: registration with capacity, addresses and conditions,
//! a Lease in `kube-node-lease` renewed every 10s, and a periodic status
//! heartbeat, so the node lifecycle controller keeps the Node Ready.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::config::KubeletConfig;
use crate::binaries::K8S_VERSION;
use crate::error::{Error, Result};

const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_RENEW: Duration = Duration::from_secs(10);
const STATUS_INTERVAL: Duration = Duration::from_secs(60);

/// Host resources reported as Node capacity.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl Capacity {
    pub fn of_host() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .unwrap_or(1 << 20);
        Self {
            cpu_millis: cpus * 1000,
            memory_bytes: mem_kib * 1024,
        }
    }
}

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

fn status_patch(cfg: &KubeletConfig, cap: Capacity, transition: &Time) -> serde_json::Value {
    let heartbeat = Time(now());
    let resources = json!({
        "cpu": format!("{}m", cap.cpu_millis),
        "memory": format!("{}Ki", cap.memory_bytes / 1024),
        "pods": "110",
        "ephemeral-storage": "100Gi",
    });
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition,
        })
    };
    json!({
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": cfg.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": "kruntimes-test-node",
                "systemUUID": "kruntimes-test-node",
                "bootID": "kruntimes-test-node",
                "kernelVersion": kernel_version(),
                "osImage": "kruntimes test kubelet",
                "containerRuntimeVersion": format!("testenv://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": K8S_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            },
        }
    })
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Creates (or adopts) the Node and its Lease, and sets a Ready status.
pub async fn register(client: &kube::Client, cfg: &KubeletConfig, cap: Capacity) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = cfg.node_labels.clone();
    labels.insert("kubernetes.io/hostname".into(), cfg.node_name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert(
        "kubernetes.io/arch".into(),
        std::env::consts::ARCH
            .replace("x86_64", "amd64")
            .replace("aarch64", "arm64"),
    );
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": cfg.node_name, "labels": labels },
    }))
    .map_err(|e| Error::Other(e.to_string()))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(Error::kube(format!("creating node {}", cfg.node_name), e)),
    }
    let transition = Time(now());
    nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Strategic(status_patch(cfg, cap, &transition)),
        )
        .await
        .map_err(|e| Error::kube("setting node status", e))?;
    renew_lease(client, cfg).await
}

async fn renew_lease(client: &kube::Client, cfg: &KubeletConfig) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let nodes: Api<Node> = Api::all(client.clone());
    let renew = MicroTime(now());
    let patch = json!({
        "spec": {
            "holderIdentity": cfg.node_name,
            "leaseDurationSeconds": cfg.lease_duration_seconds,
            "renewTime": renew,
        }
    });
    match leases
        .patch(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let uid = nodes
                .get(&cfg.node_name)
                .await
                .map_err(|e| Error::kube("reading node", e))?
                .metadata
                .uid;
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {
                    "name": cfg.node_name,
                    "namespace": LEASE_NAMESPACE,
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Node", "name": cfg.node_name, "uid": uid,
                    }],
                },
                "spec": patch["spec"],
            }))
            .map_err(|e| Error::Other(e.to_string()))?;
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
                .map_err(|e| Error::kube("creating node lease", e))
        }
        Err(e) => Err(Error::kube("renewing node lease", e)),
    }
}

/// Renews the Lease and refreshes the Node status forever.
pub async fn heartbeat(client: kube::Client, cfg: KubeletConfig, cap: Capacity) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut last_status = tokio::time::Instant::now();
    let transition = Time(now());
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        if let Err(e) = renew_lease(&client, &cfg).await {
            tracing::warn!(error = %e, "node lease");
        }
        if last_status.elapsed() >= STATUS_INTERVAL {
            last_status = tokio::time::Instant::now();
            if let Err(e) = nodes
                .patch_status(
                    &cfg.node_name,
                    &PatchParams::default(),
                    &Patch::Strategic(status_patch(&cfg, cap, &transition)),
                )
                .await
            {
                tracing::warn!(error = %e, "node status");
            }
        }
    }
}
