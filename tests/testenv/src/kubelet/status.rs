//! Pod status as the real kubelet computes it: container statuses, phase, and
//! the `PodReadyToStartContainers`, `Initialized`, `ContainersReady` and `Ready`
//! conditions (`Ready` also requires every readiness gate to be True). The
//! result is a strategic-merge patch for `pods/status` that names only the
//! conditions this kubelet owns, so conditions written by others survive.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

/// Condition types the kubelet owns and writes.
pub const OWNED_CONDITIONS: [&str; 4] = [
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<Time>,
    pub finished_at: Time,
    pub container_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: Time,
    },
    Terminated(Terminated),
}

/// One container as reported in status.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub ready: bool,
    pub started: bool,
    pub restart_count: i32,
    pub state: State,
    pub last: Option<Terminated>,
    /// An init container with `restartPolicy: Always` (native sidecar).
    pub sidecar: bool,
}

/// Everything the status depends on.
pub struct PodView<'a> {
    pub pod: &'a Pod,
    pub sandbox_ready: bool,
    pub initialized: bool,
    pub init: Vec<ContainerView>,
    pub containers: Vec<ContainerView>,
    pub pod_ip: String,
    pub host_ip: String,
    pub start_time: Time,
}

impl PodView<'_> {
    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    /// Pod phase, following the kubelet's getPhase.
    pub fn phase(&self) -> &'static str {
        let policy = self.restart_policy();
        if !self.initialized {
            let failed_init = self.init.iter().any(|c| {
                !c.sidecar && matches!(&c.state, State::Terminated(t) if t.exit_code != 0)
            });
            return if failed_init && policy == "Never" {
                "Failed"
            } else {
                "Pending"
            };
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for c in &self.containers {
            match &c.state {
                State::Running { .. } => running += 1,
                State::Terminated(t) => {
                    stopped += 1;
                    if t.exit_code == 0 {
                        succeeded += 1;
                    }
                }
                State::Waiting { .. } => match &c.last {
                    Some(t) => {
                        stopped += 1;
                        if t.exit_code == 0 {
                            succeeded += 1;
                        }
                    }
                    None => waiting += 1,
                },
            }
        }
        if waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped > 0 {
            match policy {
                "Always" => "Running",
                _ if stopped == succeeded => "Succeeded",
                "Never" => "Failed",
                _ => "Running",
            }
        } else {
            "Pending"
        }
    }

    /// `(status, reason, message)` of each owned condition.
    pub fn conditions(&self) -> Vec<(&'static str, bool, Option<String>, Option<String>)> {
        let phase = self.phase();
        let terminal = phase == "Succeeded" || phase == "Failed";
        let mut out = vec![(
            "PodReadyToStartContainers",
            self.sandbox_ready && !terminal,
            None,
            None,
        )];
        if self.initialized {
            out.push(("Initialized", true, None, None));
        } else {
            let incomplete: Vec<&str> = self
                .init
                .iter()
                .filter(|c| match &c.state {
                    State::Terminated(t) => t.exit_code != 0,
                    State::Running { .. } => !c.sidecar || !c.started,
                    State::Waiting { .. } => true,
                })
                .map(|c| c.name.as_str())
                .collect();
            out.push((
                "Initialized",
                false,
                Some("ContainersNotInitialized".into()),
                Some(format!(
                    "containers with incomplete status: [{}]",
                    incomplete.join(" ")
                )),
            ));
        }
        let containers_ready = if terminal {
            (false, Some("PodCompleted".to_string()), None)
        } else {
            let unready: Vec<&str> = self
                .init
                .iter()
                .filter(|c| c.sidecar && !c.ready)
                .chain(self.containers.iter().filter(|c| !c.ready))
                .map(|c| c.name.as_str())
                .collect();
            if unready.is_empty() {
                (true, None, None)
            } else {
                (
                    false,
                    Some("ContainersNotReady".to_string()),
                    Some(format!(
                        "containers with unready status: [{}]",
                        unready.join(" ")
                    )),
                )
            }
        };
        out.push((
            "ContainersReady",
            containers_ready.0,
            containers_ready.1.clone(),
            containers_ready.2.clone(),
        ));
        let ready = if !containers_ready.0 {
            containers_ready
        } else {
            let gates = self.gate_problems();
            if gates.is_empty() {
                (true, None, None)
            } else {
                (
                    false,
                    Some("ReadinessGatesNotReady".to_string()),
                    Some(gates.join(", ")),
                )
            }
        };
        out.push(("Ready", ready.0, ready.1, ready.2));
        out
    }

    fn gate_problems(&self) -> Vec<String> {
        let gates = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.readiness_gates.clone())
            .unwrap_or_default();
        let current = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        gates
            .iter()
            .filter_map(
                |g| match current.iter().find(|c| c.type_ == g.condition_type) {
                    None => Some(format!(
                        "corresponding condition of pod readiness gate {:?} does not exist.",
                        g.condition_type
                    )),
                    Some(c) if c.status != "True" => Some(format!(
                        "the status of pod readiness gate {:?} is not \"True\", but {}",
                        g.condition_type, c.status
                    )),
                    Some(_) => None,
                },
            )
            .collect()
    }

    /// Whether the Pod is Ready (what Services and port routing use).
    pub fn ready(&self) -> bool {
        self.conditions()
            .iter()
            .any(|(t, s, _, _)| *t == "Ready" && *s)
    }

    /// The strategic-merge patch for `pods/status`.
    pub fn patch(&self, now: &Time) -> Value {
        let existing = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let generation = self.pod.metadata.generation;
        let conditions: Vec<Value> = self
            .conditions()
            .into_iter()
            .map(|(type_, status, reason, message)| {
                let status = if status { "True" } else { "False" };
                // Keep the transition time while the status is unchanged.
                let since = existing
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == status)
                    .and_then(|c| c.last_transition_time.clone())
                    .unwrap_or_else(|| now.clone());
                json!({
                    "type": type_,
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": null,
                    "lastTransitionTime": since,
                    "observedGeneration": generation,
                })
            })
            .collect();
        // Container status lists are atomic in the API (a patch replaces them
        // whole), so a container's state cannot keep stale entries.
        let statuses = |list: &[ContainerView]| -> Value {
            Value::Array(list.iter().map(container_status).collect())
        };
        let mut status = json!({
            "phase": self.phase(),
            "conditions": conditions,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "containerStatuses": statuses(&self.containers),
            "observedGeneration": generation,
        });
        if !self.init.is_empty() {
            status["initContainerStatuses"] = statuses(&self.init);
        }
        json!({ "status": status })
    }
}

fn terminated_json(t: &Terminated) -> Value {
    json!({
        "exitCode": t.exit_code,
        "signal": t.signal,
        "reason": t.reason,
        "message": t.message,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
        "containerID": t.container_id,
    })
}

fn container_status(c: &ContainerView) -> Value {
    let state = match &c.state {
        State::Waiting { reason, message } => {
            json!({ "waiting": { "reason": reason, "message": message } })
        }
        State::Running { started_at } => json!({ "running": { "startedAt": started_at } }),
        State::Terminated(t) => json!({ "terminated": terminated_json(t) }),
    };
    let last = match &c.last {
        Some(t) => json!({ "terminated": terminated_json(t) }),
        None => json!({}),
    };
    json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id,
        "containerID": c.container_id,
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restart_count,
        "state": state,
        "lastState": last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str, gates: &[&str], conditions: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "spec": {
                "restartPolicy": policy,
                "containers": [{"name": "c", "image": "busybox"}],
                "readinessGates": gates.iter().map(|g| json!({"conditionType": g})).collect::<Vec<_>>(),
            },
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn ctr(state: State, ready: bool) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "busybox".into(),
            image_id: String::new(),
            container_id: None,
            ready,
            started: true,
            restart_count: 0,
            state,
            last: None,
            sidecar: false,
        }
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::now())
    }

    fn view<'a>(pod: &'a Pod, c: ContainerView) -> PodView<'a> {
        PodView {
            pod,
            sandbox_ready: true,
            initialized: true,
            init: vec![],
            containers: vec![c],
            pod_ip: "127.244.0.1".into(),
            host_ip: "127.0.0.1".into(),
            start_time: now(),
        }
    }

    #[test]
    fn readiness_gate_blocks_ready_until_true() {
        let running = State::Running { started_at: now() };
        let p = pod("Always", &["example.com/gate"], json!([]));
        let v = view(&p, ctr(running.clone(), true));
        assert_eq!(v.phase(), "Running");
        assert!(!v.ready());
        let ready = v.conditions().into_iter().find(|c| c.0 == "Ready").unwrap();
        assert_eq!(ready.2.as_deref(), Some("ReadinessGatesNotReady"));
        assert!(ready.3.unwrap().contains("does not exist"));

        let p = pod(
            "Always",
            &["example.com/gate"],
            json!([{"type": "example.com/gate", "status": "False"}]),
        );
        assert!(!view(&p, ctr(running.clone(), true)).ready());
        let p = pod(
            "Always",
            &["example.com/gate"],
            json!([{"type": "example.com/gate", "status": "True"}]),
        );
        let v = view(&p, ctr(running, true));
        assert!(v.ready());
        // The patch never names the gate's condition.
        let patch = v.patch(&now());
        let types: Vec<&str> = patch["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, OWNED_CONDITIONS.to_vec());
    }

    #[test]
    fn phases_follow_restart_policy() {
        let done = |code| {
            State::Terminated(Terminated {
                exit_code: code,
                signal: None,
                reason: "x".into(),
                message: None,
                started_at: None,
                finished_at: now(),
                container_id: None,
            })
        };
        let p = pod("Never", &[], json!([]));
        assert_eq!(view(&p, ctr(done(0), false)).phase(), "Succeeded");
        assert_eq!(view(&p, ctr(done(1), false)).phase(), "Failed");
        let p = pod("Always", &[], json!([]));
        assert_eq!(view(&p, ctr(done(1), false)).phase(), "Running");
        let waiting = State::Waiting {
            reason: "ErrImagePull".into(),
            message: None,
        };
        assert_eq!(view(&p, ctr(waiting, false)).phase(), "Pending");
    }
}
