//! One Pod's worker: creates its sandbox and volumes, runs init containers
//! (including native sidecars) then containers as real processes, restarts them
//! per `restartPolicy` with exponential back-off, runs probes, reports status,
//! and on deletion sends SIGTERM, waits the grace period, SIGKILLs and removes
//! the Pod from the API.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::Shared;
use super::directory::PodEntry;
use super::downward::{PodRuntimeInfo, expand};
use super::env::{EnvList, resolve as resolve_env};
use super::network::{AbortOnDrop, POD_API_SERVER_PORT, PodHosts};
use super::probe::{self, ProbeKind, ProbeResult, ProbeTarget};
use super::process::{Launch, Namespaces, RunAs, spawn};
use super::sandbox::{MountSpec, Sandbox};
use super::status::{ContainerView, PodView, State, Terminated};
use super::volumes::{self, PodVolumes, VolumeContext, validate_rel_path};
use crate::certs::POD_API_SERVER_IP;

/// Retry delay for sandbox/volume set-up failures.
const SETUP_RETRY: Duration = Duration::from_secs(2);
/// Grace period when the Pod object is gone but no grace was recorded.
const DEFAULT_GRACE: i64 = 30;

/// Messages to a Pod worker.
#[derive(Debug)]
pub enum PodEvent {
    Update(Box<Pod>),
    /// The Pod object is gone from the API.
    Deleted,
    Exited {
        container: String,
        generation: u64,
        code: i32,
        signal: Option<i32>,
    },
    /// The kubelet stops: kill containers, keep the Pod object.
    Shutdown,
}

struct Ctr {
    spec: Container,
    init: bool,
    sidecar: bool,
    generation: u64,
    restart_count: i32,
    state: Option<State>,
    last: Option<Terminated>,
    backoff: Option<Duration>,
    retry_at: Option<Instant>,
    mount_ns: Option<Arc<OwnedFd>>,
    pid: Option<u32>,
    ready: bool,
    started: bool,
    probes: Vec<AbortOnDrop>,
    image_id: String,
    container_id: Option<String>,
    run_started: Option<Instant>,
}

impl Ctr {
    fn new(spec: Container, init: bool) -> Self {
        let sidecar = init && spec.restart_policy.as_deref() == Some("Always");
        Self {
            spec,
            init,
            sidecar,
            generation: 0,
            restart_count: 0,
            state: None,
            last: None,
            backoff: None,
            retry_at: None,
            mount_ns: None,
            pid: None,
            ready: false,
            started: false,
            probes: Vec::new(),
            image_id: String::new(),
            container_id: None,
            run_started: None,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, Some(State::Running { .. }))
    }

    fn terminated(&self) -> Option<&Terminated> {
        match &self.state {
            Some(State::Terminated(t)) => Some(t),
            _ => None,
        }
    }

    fn due(&self) -> bool {
        self.retry_at.is_none_or(|t| Instant::now() >= t)
    }
}

pub struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    uid: String,
    namespace: String,
    name: String,
    pod_dir: PathBuf,
    pod_ip: Ipv4Addr,
    info: PodRuntimeInfo,
    rx: mpsc::UnboundedReceiver<PodEvent>,
    tx: mpsc::UnboundedSender<PodEvent>,
    probe_rx: mpsc::UnboundedReceiver<ProbeResult>,
    probe_tx: mpsc::UnboundedSender<ProbeResult>,
    sandbox: Option<Arc<Sandbox>>,
    volumes: Option<PodVolumes>,
    setup_error: Option<String>,
    setup_retry_at: Option<Instant>,
    init: Vec<Ctr>,
    containers: Vec<Ctr>,
    initialized: bool,
    start_time: Time,
    last_patch: Option<serde_json::Value>,
    patch_retry: bool,
    volume_refresh_at: Instant,
    api_deleted: bool,
    released: bool,
}

impl PodWorker {
    pub fn new(
        shared: Arc<Shared>,
        pod: Pod,
        pod_ip: Ipv4Addr,
        tx: mpsc::UnboundedSender<PodEvent>,
        rx: mpsc::UnboundedReceiver<PodEvent>,
    ) -> Self {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let init = spec
            .init_containers
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| Ctr::new(c, true))
            .collect::<Vec<_>>();
        let containers = spec
            .containers
            .clone()
            .into_iter()
            .map(|c| Ctr::new(c, false))
            .collect();
        // A kubelet restart must not re-run init containers of a started Pod.
        let initialized = init.is_empty()
            || pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c.type_ == "Initialized" && c.status == "True")
                });
        let (probe_tx, probe_rx) = mpsc::unbounded_channel();
        let info = PodRuntimeInfo {
            pod_ip: pod_ip.to_string(),
            host_ip: "127.0.0.1".into(),
            node_name: shared.config.node_name.clone(),
            node_cpu_millis: shared.node_cpu_millis,
            node_memory_bytes: shared.node_memory_bytes,
        };
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .unwrap_or_else(now);
        Self {
            pod_dir: shared.pods_dir.join(&uid),
            shared,
            pod,
            uid,
            namespace,
            name,
            pod_ip,
            info,
            rx,
            tx,
            probe_rx,
            probe_tx,
            sandbox: None,
            volumes: None,
            setup_error: None,
            setup_retry_at: None,
            init,
            containers,
            initialized,
            start_time,
            last_patch: None,
            patch_retry: false,
            volume_refresh_at: Instant::now(),
            api_deleted: false,
            released: false,
        }
    }

    /// Runs until the Pod is gone (or the kubelet stops).
    pub async fn run(mut self) {
        self.volume_refresh_at = Instant::now() + self.resync_period();
        let mut shutdown = false;
        loop {
            if self.api_deleted || shutdown || self.pod.metadata.deletion_timestamp.is_some() {
                self.terminate(shutdown).await;
                return;
            }
            self.sync().await;
            let wake = self.next_wake();
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    None | Some(PodEvent::Shutdown) => shutdown = true,
                    Some(ev) => self.handle(ev),
                },
                Some(p) = self.probe_rx.recv() => self.handle_probe(p),
                _ = sleep_until(wake) => {}
            }
            // Drain whatever else is queued before the next sync.
            while let Ok(ev) = self.rx.try_recv() {
                match ev {
                    PodEvent::Shutdown => shutdown = true,
                    ev => self.handle(ev),
                }
            }
            while let Ok(p) = self.probe_rx.try_recv() {
                self.handle_probe(p);
            }
        }
    }

    fn resync_period(&self) -> Duration {
        Duration::from_secs_f64(self.shared.config.volume_resync_seconds)
    }

    fn handle(&mut self, ev: PodEvent) {
        match ev {
            PodEvent::Update(pod) => self.pod = *pod,
            PodEvent::Deleted => self.api_deleted = true,
            PodEvent::Exited {
                container,
                generation,
                code,
                signal,
            } => self.on_exit(&container, generation, code, signal),
            PodEvent::Shutdown => {}
        }
    }

    fn ctr_mut(&mut self, name: &str) -> Option<&mut Ctr> {
        self.init
            .iter_mut()
            .chain(self.containers.iter_mut())
            .find(|c| c.spec.name == name)
    }

    fn on_exit(&mut self, name: &str, generation: u64, code: i32, signal: Option<i32>) {
        let shared = self.shared.clone();
        let Some(c) = self.ctr_mut(name) else { return };
        if c.generation != generation {
            return;
        }
        if let Some(pid) = c.pid.take()
            && let Ok(mut p) = shared.processes.lock()
        {
            p.remove(&pid);
        }
        c.probes.clear();
        c.ready = false;
        c.started = false;
        let started_at = match &c.state {
            Some(State::Running { started_at }) => Some(started_at.clone()),
            _ => None,
        };
        c.state = Some(State::Terminated(Terminated {
            exit_code: code,
            signal,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at,
            finished_at: now(),
            container_id: c.container_id.clone(),
        }));
    }

    fn handle_probe(&mut self, p: ProbeResult) {
        let pod = self.pod.clone();
        let recorder = self.shared.recorder.clone();
        let Some(c) = self.ctr_mut(&p.container) else {
            return;
        };
        if c.generation != p.generation || !c.running() {
            return;
        }
        let what = match p.kind {
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Startup => "Startup",
        };
        if !p.success {
            recorder.record(
                &pod,
                Some(&c.spec.name),
                true,
                "Unhealthy",
                &format!("{what} probe failed: {}", p.message),
            );
        }
        match p.kind {
            ProbeKind::Readiness => c.ready = p.success && c.started,
            ProbeKind::Startup => {
                if p.success {
                    c.started = true;
                    c.ready = c.spec.readiness_probe.is_none();
                } else if let Some(pid) = c.pid {
                    // A failed startup probe kills the container, like liveness.
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
            ProbeKind::Liveness => {
                if !p.success
                    && let Some(pid) = c.pid
                {
                    recorder.record(
                        &pod,
                        Some(&c.spec.name),
                        false,
                        "Killing",
                        &format!(
                            "Container {} failed liveness probe, will be restarted",
                            c.spec.name
                        ),
                    );
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    let grace = grace_period(&pod);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(grace as u64)).await;
                        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    });
                }
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.volume_refresh_at;
        if let Some(t) = self.setup_retry_at {
            wake = wake.min(t);
        }
        if let Some(t) = self.volumes.as_ref().and_then(|v| v.next_token_refresh()) {
            wake = wake.min(t);
        }
        for c in self.init.iter().chain(&self.containers) {
            if let Some(t) = c.retry_at {
                wake = wake.min(t);
            }
        }
        if self.patch_retry {
            wake = wake.min(Instant::now() + Duration::from_secs(1));
        }
        wake
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    async fn sync(&mut self) {
        if !self.released {
            if self.sandbox.is_none() {
                self.setup().await;
            } else {
                self.maybe_refresh_volumes().await;
            }
            if self.sandbox.is_some() {
                self.run_containers().await;
            }
        }
        let phase = self.view().phase();
        if (phase == "Succeeded" || phase == "Failed") && !self.released {
            // Terminal: stop sidecars and release the sandbox, as the kubelet does.
            self.stop_all(Duration::from_secs(grace_period(&self.pod) as u64))
                .await;
            self.release(false).await;
        }
        self.patch_status().await;
    }

    async fn setup(&mut self) {
        if self.setup_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match self.try_setup().await {
            Ok(()) => {
                self.setup_error = None;
                self.setup_retry_at = None;
            }
            Err(msg) => {
                if self.setup_error.as_deref() != Some(msg.as_str()) {
                    self.shared
                        .recorder
                        .record(&self.pod, None, true, "FailedMount", &msg);
                }
                tracing::debug!(pod = %self.name, error = %msg, "pod setup");
                self.setup_error = Some(msg);
                self.setup_retry_at = Some(Instant::now() + SETUP_RETRY);
            }
        }
    }

    async fn try_setup(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.pod_dir)
            .map_err(|e| format!("creating {}: {e}", self.pod_dir.display()))?;
        let ctx = VolumeContext {
            client: &self.shared.client,
            pod: &self.pod,
            info: &self.info,
        };
        let vols = volumes::setup(&ctx, &self.pod_dir).await?;
        let hosts = self.pod_dir.join("hosts");
        let hostname = self.hostname();
        let pod_hosts = PodHosts {
            namespace: self.namespace.clone(),
            hostname: hostname.clone(),
            pod_ip: self.pod_ip,
            aliases: self.host_aliases()?,
        };
        let content = self.shared.network.hosts_content(&pod_hosts).await;
        std::fs::write(&hosts, content).map_err(|e| format!("writing hosts file: {e}"))?;
        let pod_dir = self.pod_dir.clone();
        let memory_dirs = vols.memory_dirs.clone();
        let hn = hostname.clone();
        let hosts2 = hosts.clone();
        let sandbox = tokio::task::spawn_blocking(move || {
            Sandbox::create(&pod_dir, &hn, &hosts2, memory_dirs)
        })
        .await
        .map_err(|e| format!("creating pod sandbox: {e}"))?
        .map_err(|e| format!("creating pod sandbox: {e}"))?;
        let sandbox = Arc::new(sandbox);
        self.shared
            .network
            .attach(&self.uid, &pod_hosts, &hosts, sandbox.clone())
            .await
            .map_err(|e| format!("starting pod forwarders: {e}"))?;
        let named_ports = self
            .containers
            .iter()
            .flat_map(|c| c.spec.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        self.shared.directory.upsert(PodEntry {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            labels: self.pod.metadata.labels.clone().unwrap_or_default(),
            pod_ip: self.pod_ip,
            ready: false,
            named_ports,
            ns_inodes: sandbox.namespace_inodes(),
            sandbox: sandbox.clone(),
        });
        self.sandbox = Some(sandbox);
        self.volumes = Some(vols);
        Ok(())
    }

    /// `spec.hostAliases` as hosts-file lines; IPs must parse and names may
    /// not contain whitespace, so nothing can be smuggled into the file.
    fn host_aliases(&self) -> Result<String, String> {
        let mut out = String::new();
        for a in self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_aliases.clone())
            .unwrap_or_default()
        {
            let ip: IpAddr =
                a.ip.parse()
                    .map_err(|_| format!("hostAliases ip {:?} is not an IP address", a.ip))?;
            let names = a.hostnames.unwrap_or_default();
            if let Some(bad) = names.iter().find(|n| {
                n.is_empty() || n.len() > 253 || n.chars().any(|c| c.is_whitespace() || c == '#')
            }) {
                return Err(format!("hostAliases hostname {bad:?} is not a valid name"));
            }
            out.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
        Ok(out)
    }

    fn hostname(&self) -> String {
        let spec = self.pod.spec.as_ref();
        let mut h = spec
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone());
        h.truncate(63);
        h
    }

    async fn maybe_refresh_volumes(&mut self) {
        let token_due = self
            .volumes
            .as_ref()
            .and_then(|v| v.next_token_refresh())
            .is_some_and(|t| Instant::now() >= t);
        if !token_due && Instant::now() < self.volume_refresh_at {
            return;
        }
        self.volume_refresh_at = Instant::now() + self.resync_period();
        let Some(mut vols) = self.volumes.take() else {
            return;
        };
        let ctx = VolumeContext {
            client: &self.shared.client,
            pod: &self.pod,
            info: &self.info,
        };
        if let Err(e) = volumes::refresh(&ctx, &self.pod_dir, &mut vols).await {
            tracing::warn!(pod = %self.name, error = %e, "refreshing volumes");
        }
        self.volumes = Some(vols);
    }

    async fn run_containers(&mut self) {
        let policy = self.restart_policy();
        if !self.initialized {
            let mut done = true;
            for i in 0..self.init.len() {
                let c = &self.init[i];
                if c.sidecar {
                    match &c.state {
                        Some(State::Running { .. }) if c.started => continue,
                        Some(State::Running { .. }) => {
                            done = false;
                            break;
                        }
                        _ => {
                            if self.init[i].due() {
                                self.restart_or_start(true, i).await;
                            }
                            done = false;
                            break;
                        }
                    }
                }
                match c.terminated().map(|t| t.exit_code) {
                    Some(0) => continue,
                    Some(_) if policy == "Never" => {
                        done = false;
                        break;
                    }
                    _ if c.running() => {
                        done = false;
                        break;
                    }
                    _ => {
                        if self.init[i].due() {
                            self.restart_or_start(true, i).await;
                        }
                        done = false;
                        break;
                    }
                }
            }
            if !done {
                return;
            }
            self.initialized = true;
        } else {
            // Sidecars keep running next to the containers.
            for i in 0..self.init.len() {
                let c = &self.init[i];
                if c.sidecar && !c.running() && c.due() {
                    self.restart_or_start(true, i).await;
                }
            }
        }
        for i in 0..self.containers.len() {
            let c = &self.containers[i];
            if c.running() || !c.due() {
                continue;
            }
            let restart = match c.terminated().map(|t| t.exit_code) {
                None => true,
                Some(code) => match policy.as_str() {
                    "Always" => true,
                    "OnFailure" => code != 0,
                    _ => false,
                },
            };
            if restart {
                self.restart_or_start(false, i).await;
            }
        }
        let ready = self.view().ready();
        self.shared.directory.set_ready(&self.uid, ready);
    }

    /// Starts a container that never ran, or restarts an exited one honouring
    /// the back-off (first restart immediately, then initial, doubling, capped).
    async fn restart_or_start(&mut self, init: bool, i: usize) {
        let cfg_initial = self.shared.config.backoff_initial();
        let cfg_max = self.shared.config.backoff_max();
        let pod_desc = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let c = if init {
            &mut self.init[i]
        } else {
            &mut self.containers[i]
        };
        if let Some(t) = c.terminated().cloned() {
            // Reset the back-off after a long healthy run, like the kubelet.
            if c.run_started.is_some_and(|s| s.elapsed() > cfg_max * 2) {
                c.backoff = None;
            }
            match c.backoff {
                None => {
                    c.backoff = Some(cfg_initial);
                }
                Some(b) if c.retry_at.is_none() => {
                    c.last = Some(t);
                    c.state = Some(State::Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: Some(format!(
                            "back-off {} restarting failed container={} pod={pod_desc}",
                            go_duration(b),
                            c.spec.name
                        )),
                    });
                    c.retry_at = Some(Instant::now() + b);
                    let name = c.spec.name.clone();
                    self.shared.recorder.record(
                        &self.pod,
                        Some(&name),
                        true,
                        "BackOff",
                        "Back-off restarting failed container",
                    );
                    return;
                }
                Some(b) => {
                    c.backoff = Some((b * 2).min(cfg_max));
                }
            }
            c.last = Some(t);
            c.restart_count += 1;
        } else if matches!(c.state, Some(State::Waiting { ref reason, .. }) if reason == "CrashLoopBackOff")
        {
            // Back-off elapsed.
            c.backoff = c.backoff.map(|b| (b * 2).min(cfg_max));
            c.restart_count += 1;
        }
        c.retry_at = None;
        self.start(init, i).await;
    }

    async fn start(&mut self, init: bool, i: usize) {
        match self.prepare_launch(init, i).await {
            Ok((launch, mount_ns, image_id)) => {
                let log = self.log_path(init, i);
                let env_id = self.shared.env_id.clone();
                let Some(sandbox) = self.sandbox.clone() else {
                    return;
                };
                let c = if init {
                    &mut self.init[i]
                } else {
                    &mut self.containers[i]
                };
                let ns = Namespaces {
                    net: sandbox.net_fd(),
                    uts: sandbox.uts_fd(),
                    mnt: mount_ns.as_fd(),
                };
                if let Some(parent) = log.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let spawned = {
                    let Ok(mut procs) = self.shared.processes.lock() else {
                        return;
                    };
                    if self
                        .shared
                        .stopping
                        .load(std::sync::atomic::Ordering::SeqCst)
                    {
                        return;
                    }
                    spawn(&launch, ns, Some(&log), &env_id).inspect(|child| {
                        procs.insert(child.id());
                    })
                };
                match spawned {
                    Ok(mut child) => {
                        let pid = child.id();
                        c.generation += 1;
                        c.pid = Some(pid);
                        c.image_id = image_id;
                        c.container_id = Some(format!(
                            "testenv://{}/{}/{}",
                            self.uid, c.spec.name, c.restart_count
                        ));
                        c.state = Some(State::Running { started_at: now() });
                        c.run_started = Some(Instant::now());
                        c.mount_ns = Some(mount_ns.clone());
                        c.started = c.spec.startup_probe.is_none();
                        c.ready = c.started && c.spec.readiness_probe.is_none();
                        let generation = c.generation;
                        let name = c.spec.name.clone();
                        let tx = self.tx.clone();
                        tokio::task::spawn_blocking(move || {
                            use std::os::unix::process::ExitStatusExt;
                            let (code, signal) = match child.wait() {
                                Ok(s) => match (s.code(), s.signal()) {
                                    (Some(code), _) => (code, None),
                                    (None, Some(sig)) => (128 + sig, Some(sig)),
                                    _ => (255, None),
                                },
                                Err(_) => (255, None),
                            };
                            let _ = tx.send(PodEvent::Exited {
                                container: name,
                                generation,
                                code,
                                signal,
                            });
                        });
                        let target = ProbeTarget {
                            sandbox: sandbox.clone(),
                            mount_ns,
                            pod_ip: IpAddr::V4(self.pod_ip),
                            launch,
                            env_id,
                        };
                        let probes = [
                            (ProbeKind::Startup, c.spec.startup_probe.clone()),
                            (ProbeKind::Readiness, c.spec.readiness_probe.clone()),
                            (ProbeKind::Liveness, c.spec.liveness_probe.clone()),
                        ];
                        for (kind, p) in probes {
                            if let Some(p) = p {
                                c.probes.push(AbortOnDrop(tokio::spawn(probe::run(
                                    kind,
                                    p,
                                    c.spec.clone(),
                                    generation,
                                    target.clone(),
                                    self.probe_tx.clone(),
                                ))));
                            }
                        }
                        let name = c.spec.name.clone();
                        let image = c.spec.image.clone().unwrap_or_default();
                        let recorder = self.shared.recorder.clone();
                        recorder.record(
                            &self.pod,
                            Some(&name),
                            false,
                            "Pulled",
                            &format!("Container image {image:?} already present on machine"),
                        );
                        recorder.record(
                            &self.pod,
                            Some(&name),
                            false,
                            "Created",
                            &format!("Created container: {name}"),
                        );
                        recorder.record(
                            &self.pod,
                            Some(&name),
                            false,
                            "Started",
                            &format!("Started container {name}"),
                        );
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        self.fail_start(init, i, "RunContainerError", msg);
                    }
                }
            }
            Err((reason, msg)) => self.fail_start(init, i, reason, msg),
        }
    }

    fn fail_start(&mut self, init: bool, i: usize, reason: &str, msg: String) {
        let retry = self.shared.config.backoff_initial();
        let pod = self.pod.clone();
        let recorder = self.shared.recorder.clone();
        let c = if init {
            &mut self.init[i]
        } else {
            &mut self.containers[i]
        };
        let changed = !matches!(&c.state, Some(State::Waiting { reason: r, message: Some(m) }) if r == reason && *m == msg);
        if changed {
            recorder.record(
                &pod,
                Some(&c.spec.name),
                true,
                "Failed",
                &format!("Error: {msg}"),
            );
        }
        c.state = Some(State::Waiting {
            reason: reason.into(),
            message: Some(msg),
        });
        c.retry_at = Some(Instant::now() + retry);
    }

    fn log_path(&self, init: bool, i: usize) -> PathBuf {
        let c = if init {
            &self.init[i]
        } else {
            &self.containers[i]
        };
        self.pod_dir
            .join("logs")
            .join(&c.spec.name)
            .join(format!("{}.log", c.restart_count))
    }

    /// Image table lookup, env, mounts: everything before exec. Errors carry
    /// the waiting reason a real kubelet would report.
    async fn prepare_launch(
        &mut self,
        init: bool,
        i: usize,
    ) -> Result<(Launch, Arc<OwnedFd>, String), (&'static str, String)> {
        let spec = if init {
            self.init[i].spec.clone()
        } else {
            self.containers[i].spec.clone()
        };
        // Container names become log paths; the API validates them, we re-check.
        volumes::validate_name(&spec.name)
            .map_err(|e| ("CreateContainerConfigError", format!("container name: {e}")))?;
        let image = spec.image.clone().unwrap_or_default();
        let rule = self
            .shared
            .config
            .image_rule(&image)
            .cloned()
            .ok_or_else(|| {
                (
                    "ErrImagePull",
                    format!(
                        "failed to pull and unpack image {image:?}: the test kubelet's image table has no rule for it"
                    ),
                )
            })?;

        let mut base = EnvList::default();
        base.set(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        base.set("HOSTNAME", self.hostname());
        for (k, v) in &rule.env {
            base.set(k.clone(), v.clone());
        }
        for (k, v) in &self.shared.config.extra_env {
            base.set(k.clone(), v.clone());
        }
        let api = format!("{POD_API_SERVER_IP}:{POD_API_SERVER_PORT}");
        base.set("KUBERNETES_SERVICE_HOST", POD_API_SERVER_IP);
        base.set("KUBERNETES_SERVICE_PORT", POD_API_SERVER_PORT.to_string());
        base.set(
            "KUBERNETES_SERVICE_PORT_HTTPS",
            POD_API_SERVER_PORT.to_string(),
        );
        base.set("KUBERNETES_PORT", format!("tcp://{api}"));
        base.set(
            format!("KUBERNETES_PORT_{POD_API_SERVER_PORT}_TCP"),
            format!("tcp://{api}"),
        );
        let ctx = VolumeContext {
            client: &self.shared.client,
            pod: &self.pod,
            info: &self.info,
        };
        let env = resolve_env(&ctx, &spec, base)
            .await
            .map_err(|e| ("CreateContainerConfigError", e))?;

        let lookup = |k: &str| env.get(k);
        let (entry, args): (Vec<String>, Vec<String>) = match (&spec.command, &spec.args) {
            (Some(cmd), args) => (cmd.clone(), args.clone().unwrap_or_default()),
            (None, Some(args)) => (rule.entrypoint.clone(), args.clone()),
            (None, None) => (rule.entrypoint.clone(), rule.cmd.clone()),
        };
        let mut argv: Vec<String> = entry
            .iter()
            .chain(&args)
            .map(|a| expand(a, lookup))
            .collect();
        if argv.is_empty() {
            return Err((
                "CreateContainerError",
                format!(
                    "no command specified for container {:?} and image {image:?} has no entrypoint",
                    spec.name
                ),
            ));
        }
        if let Some(mapped) = rule.programs.get(&argv[0]).or_else(|| {
            Path::new(&argv[0])
                .file_name()
                .and_then(|f| rule.programs.get(f.to_string_lossy().as_ref()))
        }) {
            argv[0] = mapped.clone();
        }

        let mount_ns = match (init, i) {
            (true, i) if self.init[i].mount_ns.is_some() => self.init[i].mount_ns.clone(),
            (false, i) if self.containers[i].mount_ns.is_some() => {
                self.containers[i].mount_ns.clone()
            }
            _ => None,
        };
        let mount_ns = match mount_ns {
            Some(ns) => ns,
            None => {
                let mounts = self
                    .mounts_for(&spec, &env)
                    .map_err(|e| ("CreateContainerConfigError", e))?;
                let sandbox = self
                    .sandbox
                    .clone()
                    .ok_or(("CreateContainerError", "no sandbox".to_string()))?;
                let read_only_root = spec
                    .security_context
                    .as_ref()
                    .and_then(|sc| sc.read_only_root_filesystem)
                    .unwrap_or(false);
                let fd = sandbox
                    .container_mount_ns(mounts, read_only_root)
                    .await
                    .map_err(|e| ("CreateContainerError", e.to_string()))?;
                Arc::new(fd)
            }
        };

        let working_dir = spec
            .working_dir
            .clone()
            .or(rule.working_dir.clone())
            .unwrap_or_else(|| "/".into());
        let run_as = self.run_as(&spec, rule.user)?;
        let launch = Launch {
            argv,
            env: env.into_vec(),
            working_dir,
            run_as,
        };
        Ok((launch, mount_ns, format!("testenv-image://{}", rule.image)))
    }

    fn mounts_for(&self, spec: &Container, env: &EnvList) -> Result<Vec<MountSpec>, String> {
        let vols = self
            .volumes
            .as_ref()
            .ok_or_else(|| "volumes not ready".to_string())?;
        let mut out = Vec::new();
        for vm in spec.volume_mounts.iter().flatten() {
            let base = vols
                .paths
                .get(&vm.name)
                .ok_or_else(|| format!("volume {:?} not found in pod spec", vm.name))?;
            let target = PathBuf::from(&vm.mount_path);
            if !target.is_absolute()
                || target
                    .components()
                    .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            {
                return Err(format!(
                    "mountPath {:?} of volume {:?} must be absolute without '.' or '..'",
                    vm.mount_path, vm.name
                ));
            }
            let sub = match (&vm.sub_path, &vm.sub_path_expr) {
                (Some(p), _) if !p.is_empty() => Some(p.clone()),
                (_, Some(e)) if !e.is_empty() => Some(expand(e, |k| env.get(k))),
                _ => None,
            };
            let source = match sub {
                Some(sub) => {
                    validate_rel_path(&sub)
                        .map_err(|e| format!("subPath of {:?}: {e}", vm.name))?;
                    let p = base.join(&sub);
                    // The resolved path must stay inside the volume (no symlink escape).
                    if !p.exists() {
                        std::fs::create_dir_all(&p)
                            .map_err(|e| format!("creating subPath {}: {e}", p.display()))?;
                    }
                    let real = std::fs::canonicalize(&p)
                        .map_err(|e| format!("resolving subPath {}: {e}", p.display()))?;
                    let real_base = std::fs::canonicalize(base)
                        .map_err(|e| format!("resolving volume {}: {e}", base.display()))?;
                    if !real.starts_with(&real_base) {
                        return Err(format!(
                            "subPath {sub:?} of volume {:?} resolves outside the volume",
                            vm.name
                        ));
                    }
                    real
                }
                None => base.clone(),
            };
            let read_only = vm.read_only.unwrap_or(false)
                || vols.read_only.get(&vm.name).copied().unwrap_or(false);
            out.push(MountSpec {
                source,
                target,
                read_only,
            });
        }
        Ok(out)
    }

    /// The identity to run as: `runAsUser` (container, then Pod), else the
    /// image's USER, else root; refused like the kubelet does when
    /// `runAsNonRoot` is set and that identity is root.
    fn run_as(
        &self,
        spec: &Container,
        image_user: Option<u32>,
    ) -> Result<Option<RunAs>, (&'static str, String)> {
        let pod_sc = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone());
        let sc = spec.security_context.clone();
        let bad = |what: &str, v: i64| {
            (
                "CreateContainerConfigError",
                format!("{what} {v} is out of range (0..=4294967295)"),
            )
        };
        let uid = match sc
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_sc.as_ref().and_then(|s| s.run_as_user))
        {
            Some(u) => Some(u32::try_from(u).map_err(|_| bad("runAsUser", u))?),
            None => image_user,
        };
        let non_root = sc
            .as_ref()
            .and_then(|s| s.run_as_non_root)
            .or(pod_sc.as_ref().and_then(|s| s.run_as_non_root))
            .unwrap_or(false);
        if non_root && uid.unwrap_or(0) == 0 {
            return Err((
                "CreateContainerConfigError",
                format!(
                    "container has runAsNonRoot and image will run as root (pod: \"{}_{}({})\", container: {})",
                    self.name, self.namespace, self.uid, spec.name
                ),
            ));
        }
        let Some(uid) = uid else { return Ok(None) };
        let gid = match sc
            .as_ref()
            .and_then(|s| s.run_as_group)
            .or(pod_sc.as_ref().and_then(|s| s.run_as_group))
        {
            Some(g) => u32::try_from(g).map_err(|_| bad("runAsGroup", g))?,
            None => 0,
        };
        let mut groups: Vec<u32> = pod_sc
            .as_ref()
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|g| u32::try_from(g).ok())
            .collect();
        if let Some(fs) = pod_sc.as_ref().and_then(|s| s.fs_group) {
            groups.extend(u32::try_from(fs).ok());
        }
        Ok(Some(RunAs { uid, gid, groups }))
    }

    fn view(&self) -> PodView<'_> {
        let pending_reason = if self.sandbox.is_none() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let to_view = |c: &Ctr, waiting_reason: &str| ContainerView {
            name: c.spec.name.clone(),
            image: c.spec.image.clone().unwrap_or_default(),
            image_id: c.image_id.clone(),
            container_id: c.container_id.clone(),
            ready: c.ready,
            started: c.started && c.running(),
            restart_count: c.restart_count,
            state: c.state.clone().unwrap_or_else(|| State::Waiting {
                reason: waiting_reason.into(),
                message: None,
            }),
            last: c.last.clone(),
            sidecar: c.sidecar,
        };
        let init_reason = if self.sandbox.is_none() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let ctr_reason = if !self.initialized {
            pending_reason
        } else {
            "ContainerCreating"
        };
        PodView {
            pod: &self.pod,
            sandbox_ready: self.sandbox.is_some(),
            initialized: self.initialized,
            init: self.init.iter().map(|c| to_view(c, init_reason)).collect(),
            containers: self
                .containers
                .iter()
                .map(|c| to_view(c, ctr_reason))
                .collect(),
            pod_ip: self.pod_ip.to_string(),
            host_ip: "127.0.0.1".into(),
            start_time: self.start_time.clone(),
        }
    }

    async fn patch_status(&mut self) {
        let patch = self.view().patch(&now());
        if self.last_patch.as_ref() == Some(&patch) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace);
        match api
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(pod) => {
                // Our own view of others' conditions gets fresher too.
                if pod.metadata.uid.as_deref() == Some(self.uid.as_str()) {
                    self.pod = pod;
                }
                // Transition times come from the server; recompute to compare.
                self.last_patch = Some(self.view().patch(&now()));
                self.patch_retry = false;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.api_deleted = true;
                self.patch_retry = false;
            }
            Err(e) => {
                tracing::warn!(pod = %self.name, error = %e, "patching pod status");
                self.patch_retry = true;
            }
        }
    }

    /// SIGTERM to running containers (regular ones first, then sidecars), wait
    /// up to `grace`, SIGKILL what is left and wait for every exit.
    async fn stop_all(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for sidecars in [false, true] {
            let pids: Vec<(String, u32)> = self
                .init
                .iter()
                .filter(|c| c.sidecar == sidecars && sidecars)
                .chain(self.containers.iter().filter(|_| !sidecars))
                .filter_map(|c| Some((c.spec.name.clone(), c.pid?)))
                .collect();
            for (name, pid) in &pids {
                self.shared.recorder.record(
                    &self.pod,
                    Some(name),
                    false,
                    "Killing",
                    &format!("Stopping container {name}"),
                );
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
            }
            // Sidecars get at least a short window after the containers stop.
            let phase_deadline = if sidecars {
                deadline.max(Instant::now() + Duration::from_secs(2))
            } else {
                deadline
            };
            self.wait_exits(
                |c| c.sidecar == sidecars || (!sidecars && !c.init),
                phase_deadline,
            )
            .await;
        }
        let remaining: Vec<u32> = self
            .init
            .iter()
            .chain(&self.containers)
            .filter_map(|c| c.pid)
            .collect();
        for pid in &remaining {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        self.wait_exits(|_| true, Instant::now() + Duration::from_secs(10))
            .await;
        for c in self.init.iter_mut().chain(self.containers.iter_mut()) {
            c.probes.clear();
            c.ready = false;
        }
    }

    async fn wait_exits(&mut self, which: impl Fn(&Ctr) -> bool, deadline: Instant) {
        loop {
            let running = self
                .init
                .iter()
                .chain(&self.containers)
                .any(|c| c.pid.is_some() && which(c));
            if !running || Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(PodEvent::Exited { container, generation, code, signal }) => {
                        self.on_exit(&container, generation, code, signal);
                    }
                    Some(PodEvent::Update(p)) => self.pod = *p,
                    Some(PodEvent::Deleted) => self.api_deleted = true,
                    Some(_) => {}
                    None => return,
                },
                _ = sleep_until(deadline) => return,
            }
        }
    }

    /// Drops the sandbox and forwarders; with `remove_files` also the Pod's
    /// directory (volumes, logs). Logs of a finished Pod stay until it is deleted.
    async fn release(&mut self, remove_files: bool) {
        if !self.released {
            self.released = true;
            self.shared.network.detach(&self.uid).await;
            self.shared.directory.remove(&self.uid);
            for c in self.init.iter_mut().chain(self.containers.iter_mut()) {
                c.mount_ns = None;
            }
            self.sandbox = None;
            self.volumes = None;
        }
        if remove_files {
            let dir = self.pod_dir.clone();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
        }
    }

    async fn terminate(&mut self, shutdown: bool) {
        let grace = if shutdown {
            Duration::from_secs_f64(self.shared.config.shutdown_grace_seconds)
        } else {
            Duration::from_secs(grace_period(&self.pod) as u64)
        };
        self.stop_all(grace).await;
        if shutdown {
            self.release(true).await;
            return;
        }
        if !self.api_deleted {
            self.patch_status().await;
        }
        self.release(true).await;
        if !self.api_deleted {
            let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), &self.namespace);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&self.name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => tracing::warn!(pod = %self.name, error = %e, "deleting pod"),
            }
        }
    }
}

/// `deletionGracePeriodSeconds`, else `terminationGracePeriodSeconds`, else 30.
fn grace_period(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(DEFAULT_GRACE)
        .max(0)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
}

/// Formats like Go's time.Duration String(): 10s, 1m20s, 5m0s.
pub fn go_duration(d: Duration) -> String {
    let total = d.as_secs_f64();
    if total < 60.0 {
        let s = format!("{total:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        return format!("{s}s");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else {
        format!("{m}m{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }
}
