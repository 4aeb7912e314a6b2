//! The kubelet's directory of running Pods: who is where, which sandbox, which
//! IP, whether Ready. Service routing and port-forward look Pods up here.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use super::sandbox::Sandbox;

/// What the directory knows about one Pod with a live sandbox.
#[derive(Clone)]
pub struct PodEntry {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub pod_ip: Ipv4Addr,
    pub ready: bool,
    /// Named container ports (for Service `targetPort` names).
    pub named_ports: BTreeMap<String, u16>,
    pub sandbox: Arc<Sandbox>,
    /// Namespace inodes (net, mnt) for teardown checks.
    pub ns_inodes: (u64, u64),
}

#[derive(Default)]
pub struct PodDirectory {
    pods: Mutex<HashMap<String, PodEntry>>,
}

impl PodDirectory {
    pub fn upsert(&self, entry: PodEntry) {
        if let Ok(mut pods) = self.pods.lock() {
            pods.insert(entry.uid.clone(), entry);
        }
    }

    pub fn set_ready(&self, uid: &str, ready: bool) {
        if let Ok(mut pods) = self.pods.lock()
            && let Some(p) = pods.get_mut(uid)
        {
            p.ready = ready;
        }
    }

    pub fn remove(&self, uid: &str) {
        if let Ok(mut pods) = self.pods.lock() {
            pods.remove(uid);
        }
    }

    pub fn by_name(&self, namespace: &str, name: &str) -> Option<PodEntry> {
        self.pods.lock().ok().and_then(|pods| {
            pods.values()
                .find(|p| p.namespace == namespace && p.name == name)
                .cloned()
        })
    }

    /// Ready Pods in `namespace` whose labels include `selector`, by name.
    pub fn ready_matching(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<PodEntry> {
        let mut out: Vec<PodEntry> = self
            .pods
            .lock()
            .map(|pods| {
                pods.values()
                    .filter(|p| {
                        p.namespace == namespace
                            && p.ready
                            && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn all(&self) -> Vec<PodEntry> {
        self.pods
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }
}
