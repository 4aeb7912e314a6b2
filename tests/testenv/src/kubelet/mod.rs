//! The test kubelet: registers a Node that stays Ready, binds Pending Pods to
//! it (there is no kube-scheduler), and runs each Pod's containers as real
//! local processes in per-Pod namespaces (see [`sandbox`]), mapping images to
//! local commands through a configurable table ([`config::ImageRule`]).
//! Usable as a library (the harness embeds one) and as the
//! `kruntimes-test-kubelet` binary.

pub mod config;
pub mod directory;
pub mod downward;
pub mod env;
pub mod events;
pub mod network;
pub mod node;
pub(crate) mod pod;
pub mod probe;
pub mod process;
pub mod sandbox;
pub mod status;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::sync::mpsc;

pub use config::{ImageRule, KubeletConfig};
use directory::PodDirectory;
use network::{AbortOnDrop, Network};
use pod::{PodEvent, PodWorker};

use crate::error::{Error, Result};

/// State shared by the kubelet's tasks and Pod workers.
pub(crate) struct Shared {
    pub config: KubeletConfig,
    pub client: kube::Client,
    pub env_id: String,
    pub network: Arc<Network>,
    pub directory: Arc<PodDirectory>,
    pub recorder: events::Recorder,
    /// Pids of live container shims (for emergency teardown).
    pub processes: Arc<Mutex<HashSet<u32>>>,
    pub node_cpu_millis: u64,
    pub node_memory_bytes: u64,
    pub pods_dir: PathBuf,
    /// Set when the kubelet stops: no container may start any more.
    pub stopping: std::sync::atomic::AtomicBool,
}

struct WorkerHandle {
    tx: mpsc::UnboundedSender<PodEvent>,
    join: tokio::task::JoinHandle<()>,
}

type Workers = Arc<Mutex<HashMap<String, WorkerHandle>>>;

/// A running test kubelet. Its tasks live on the runtime that started it.
pub struct Kubelet {
    shared: Arc<Shared>,
    workers: Workers,
    tasks: Mutex<Vec<AbortOnDrop>>,
}

impl Kubelet {
    /// Registers the Node and starts binding and running Pods.
    ///
    /// `api_server` is the host address Pods' API traffic is forwarded to;
    /// `env_id` marks every process started (see [`crate::process::ENV_MARKER`]).
    pub async fn start(
        client: kube::Client,
        config: KubeletConfig,
        api_server: SocketAddr,
        env_id: &str,
    ) -> Result<Self> {
        config.validate()?;
        let pods_dir = config.state_dir.join("pods");
        std::fs::create_dir_all(&pods_dir)
            .map_err(|e| Error::io(format!("creating {}", pods_dir.display()), e))?;
        // Pod volumes hold Secrets and tokens: owner only. Containers still
        // reach them through their bind mounts.
        crate::controlplane::set_private(&config.state_dir)?;
        let directory = Arc::new(PodDirectory::default());
        let network = Network::new(&config.state_dir, api_server, directory.clone())
            .map_err(|e| Error::io("starting the API server forwarder", e))?;
        let cap = node::Capacity::of_host();
        node::register(&client, &config, cap).await?;
        let shared = Arc::new(Shared {
            recorder: events::Recorder::new(client.clone(), config.node_name.clone()),
            config: config.clone(),
            client: client.clone(),
            env_id: env_id.to_string(),
            network,
            directory,
            processes: Arc::new(Mutex::new(HashSet::new())),
            node_cpu_millis: cap.cpu_millis,
            node_memory_bytes: cap.memory_bytes,
            pods_dir,
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let workers: Workers = Arc::new(Mutex::new(HashMap::new()));
        let tasks = vec![
            AbortOnDrop(tokio::spawn(node::heartbeat(
                client.clone(),
                config.clone(),
                cap,
            ))),
            AbortOnDrop(tokio::spawn(bind_pods(client.clone(), config.clone()))),
            AbortOnDrop(tokio::spawn(watch_services(
                client.clone(),
                shared.network.clone(),
            ))),
            AbortOnDrop(tokio::spawn(watch_pods(shared.clone(), workers.clone()))),
        ];
        Ok(Self {
            shared,
            workers,
            tasks: Mutex::new(tasks),
        })
    }

    pub fn config(&self) -> &KubeletConfig {
        &self.shared.config
    }

    pub fn node_name(&self) -> &str {
        &self.shared.config.node_name
    }

    /// Connects to `port` on the Pod's own localhost (127.0.0.1 inside its
    /// network namespace): the port-forward path tests use.
    pub async fn connect(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream> {
        let entry = self
            .shared
            .directory
            .by_name(namespace, pod)
            .ok_or_else(|| {
                Error::Other(format!(
                    "pod {namespace}/{pod} has no running sandbox on node {}",
                    self.node_name()
                ))
            })?;
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        entry
            .sandbox
            .connect(addr, Duration::from_secs(5))
            .await
            .map_err(|e| Error::io(format!("connecting to {namespace}/{pod} port {port}"), e))
    }

    /// A host listener on 127.0.0.1:<random> forwarding every connection to
    /// `port` on the Pod's localhost (like `kubectl port-forward`).
    pub async fn port_forward(&self, namespace: &str, pod: &str, port: u16) -> Result<PortForward> {
        let entry = self
            .shared
            .directory
            .by_name(namespace, pod)
            .ok_or_else(|| {
                Error::Other(format!(
                    "pod {namespace}/{pod} has no running sandbox on node {}",
                    self.node_name()
                ))
            })?;
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| Error::io("binding the port-forward listener", e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("port-forward address", e))?;
        let sandbox = entry.sandbox.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let sandbox = sandbox.clone();
                tokio::spawn(async move {
                    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
                    if let Ok(mut up) = sandbox.connect(addr, Duration::from_secs(5)).await {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                    }
                });
            }
        });
        Ok(PortForward {
            local,
            _task: AbortOnDrop(task),
        })
    }

    /// The log of a container's latest run (kept until the Pod is deleted).
    pub async fn container_log(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> Result<String> {
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), namespace);
        let uid = api
            .get(pod)
            .await
            .map_err(|e| Error::kube(format!("reading pod {namespace}/{pod}"), e))?
            .metadata
            .uid
            .unwrap_or_default();
        let dir = self.shared.pods_dir.join(&uid).join("logs").join(container);
        let latest = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .flatten()
            .filter_map(|e| {
                let n = e
                    .file_name()
                    .to_string_lossy()
                    .strip_suffix(".log")?
                    .parse::<u32>()
                    .ok()?;
                Some((n, e.path()))
            })
            .max_by_key(|(n, _)| *n)
            .ok_or_else(|| Error::Other(format!("no log for container {container:?}")))?;
        std::fs::read_to_string(&latest.1).map_err(|e| Error::io("reading container log", e))
    }

    /// Namespace inodes (net, mnt) of every live sandbox.
    pub fn sandbox_namespaces(&self) -> Vec<(u64, u64)> {
        self.shared
            .directory
            .all()
            .into_iter()
            .map(|p| p.ns_inodes)
            .collect()
    }

    /// Pids of live container shims.
    pub fn container_pids(&self) -> Vec<u32> {
        self.shared
            .processes
            .lock()
            .map(|p| p.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Graceful stop: every Pod's containers get SIGTERM, the configured
    /// shutdown grace, then SIGKILL; sandboxes are released. Pod objects stay.
    pub async fn shutdown(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.clear();
        }
        let handles: Vec<WorkerHandle> = match self.workers.lock() {
            Ok(mut w) => w.drain().map(|(_, h)| h).collect(),
            Err(_) => Vec::new(),
        };
        for h in &handles {
            let _ = h.tx.send(PodEvent::Shutdown);
        }
        for h in handles {
            let _ = h.join.await;
        }
        let _ = std::fs::remove_dir_all(self.shared.config.state_dir.join("s"));
    }

    /// Synchronous last-resort stop (process exit, panics): SIGTERM to every
    /// container, up to `grace`, then SIGKILL of their process groups.
    pub fn kill_all_blocking(&self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Starts happen under this lock after checking `stopping`, so the
        // snapshot below holds every container that will ever run.
        let pids = self.container_pids();
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in &pids {
            let _ = killpg(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && pids.iter().any(|p| alive(*p)) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        // Tasks die with their AbortOnDrop handles; processes must not outlive us.
        self.kill_all_blocking(Duration::from_secs_f64(
            self.shared.config.shutdown_grace_seconds.min(5.0),
        ));
    }
}

/// A process is alive unless gone or a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A local port forwarding into a Pod; stops when dropped.
pub struct PortForward {
    local: SocketAddr,
    _task: AbortOnDrop,
}

impl PortForward {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Binds Pending Pods (no nodeName, a scheduler name we serve) to our Node.
async fn bind_pods(client: kube::Client, cfg: KubeletConfig) {
    let pods: Api<Pod> = Api::all(client.clone());
    let stream = watcher::watcher(pods, watcher::Config::default().fields("spec.nodeName="))
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let Ok(pod) = item else { continue };
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let scheduler = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.clone())
            .unwrap_or_else(|| "default-scheduler".into());
        if !cfg.scheduler_names.contains(&scheduler) {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let binding = Binding {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(cfg.node_name.clone()),
                ..Default::default()
            },
        };
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let res: std::result::Result<serde_json::Value, _> = api
            .create_subresource("binding", &name, &PostParams::default(), &binding)
            .await;
        match res {
            Ok(_) => tracing::debug!(%ns, %name, "bound"),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
            Err(e) => tracing::warn!(%ns, %name, error = %e, "binding pod"),
        }
    }
}

async fn watch_services(client: kube::Client, network: Arc<Network>) {
    let svcs: Api<Service> = Api::all(client);
    let stream = watcher::watcher(svcs, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut known: HashSet<(String, String)> = HashSet::new();
    while let Some(item) = stream.next().await {
        let Ok(ev) = item else { continue };
        let key = |s: &Service| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        };
        match ev {
            Event::Init => seen.clear(),
            Event::InitApply(s) => {
                seen.insert(key(&s));
                known.insert(key(&s));
                network.apply_service(&s).await;
            }
            Event::InitDone => {
                for k in known.difference(&seen).cloned().collect::<Vec<_>>() {
                    network.delete_service(&k.0, &k.1).await;
                    known.remove(&k);
                }
            }
            Event::Apply(s) => {
                known.insert(key(&s));
                network.apply_service(&s).await;
            }
            Event::Delete(s) => {
                let k = key(&s);
                known.remove(&k);
                network.delete_service(&k.0, &k.1).await;
            }
        }
    }
}

/// Watches Pods bound to our Node and feeds their workers.
async fn watch_pods(shared: Arc<Shared>, workers: Workers) {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let selector = format!("spec.nodeName={}", shared.config.node_name);
    let stream =
        watcher::watcher(pods, watcher::Config::default().fields(&selector)).default_backoff();
    futures::pin_mut!(stream);
    let next_ip = Arc::new(AtomicU32::new(1));
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(item) = stream.next().await {
        let Ok(ev) = item else { continue };
        match ev {
            Event::Init => seen.clear(),
            Event::InitApply(p) => {
                seen.insert(p.metadata.uid.clone().unwrap_or_default());
                dispatch(&shared, &workers, &next_ip, p).await;
            }
            Event::Apply(p) => dispatch(&shared, &workers, &next_ip, p).await,
            Event::Delete(p) => {
                let uid = p.metadata.uid.clone().unwrap_or_default();
                if let Ok(w) = workers.lock()
                    && let Some(h) = w.get(&uid)
                {
                    let _ = h.tx.send(PodEvent::Deleted);
                }
            }
            Event::InitDone => {
                if let Ok(w) = workers.lock() {
                    for (uid, h) in w.iter() {
                        if !seen.contains(uid) {
                            let _ = h.tx.send(PodEvent::Deleted);
                        }
                    }
                }
            }
        }
    }
}

async fn dispatch(shared: &Arc<Shared>, workers: &Workers, next_ip: &AtomicU32, pod: Pod) {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // The uid names the Pod's directory: accept only what the API server generates.
    if uid.is_empty() || uid.len() > 64 || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        tracing::warn!(uid, "ignoring pod with an unexpected uid");
        return;
    }
    {
        let Ok(w) = workers.lock() else { return };
        if let Some(h) = w.get(&uid) {
            let _ = h.tx.send(PodEvent::Update(Box::new(pod)));
            return;
        }
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    let terminal = matches!(phase.as_deref(), Some("Succeeded") | Some("Failed"));
    if terminal || pod.metadata.deletion_timestamp.is_some() {
        // Nothing runs for it here (e.g. after a kubelet restart): finish deletion.
        if pod.metadata.deletion_timestamp.is_some() {
            let api: Api<Pod> = Api::namespaced(
                shared.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
            );
            let _ = api
                .delete(
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..DeleteParams::default()
                    },
                )
                .await;
        }
        return;
    }
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    let n = next_ip.fetch_add(1, Ordering::Relaxed);
    let pod_ip = Ipv4Addr::new(127, 244, (n >> 8) as u8, (n & 0xff) as u8);
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = PodWorker::new(shared.clone(), pod, pod_ip, tx.clone(), rx);
    let workers2 = workers.clone();
    let uid2 = uid.clone();
    // Hold the map while spawning so the worker's own removal comes after insertion.
    let Ok(mut w) = workers.lock() else { return };
    let join = tokio::spawn(async move {
        worker.run().await;
        if let Ok(mut w) = workers2.lock() {
            w.remove(&uid2);
        }
    });
    w.insert(uid, WorkerHandle { tx, join });
}
