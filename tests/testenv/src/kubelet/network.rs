//! Pod networking on loopback only. Each Pod's network namespace has nothing
//! but `lo`; the API server and Services appear on 127.100.x.y addresses of that
//! loopback, named in the Pod's own hosts file. A forwarder listening there
//! carries each connection over a Unix socket into the host, where the API
//! server is dialled on the host loopback and a Service's ready backend Pod is
//! dialled inside its own namespace at `podIP:targetPort`, as kube-proxy would.
//! No routable or private-range address is ever configured anywhere.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use super::directory::PodDirectory;
use super::sandbox::Sandbox;
use crate::certs::POD_API_SERVER_IP;

/// In-Pod address and port of the API server (`KUBERNETES_SERVICE_HOST/PORT`).
pub const POD_API_SERVER_PORT: u16 = 443;
/// Most Services the kubelet routes (addresses come from 127.100.0.0/16).
pub const MAX_SERVICES: u32 = 65_000;
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Aborts a task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct SvcPort {
    port: u16,
    sock: PathBuf,
    _host: AbortOnDrop,
}

struct SvcEntry {
    ip: Ipv4Addr,
    ports: Vec<SvcPort>,
    /// (ports, selector) the entry was built from, to detect changes.
    fingerprint: String,
}

/// What a Pod's hosts file says about the Pod itself.
#[derive(Debug, Clone)]
pub struct PodHosts {
    pub namespace: String,
    pub hostname: String,
    pub pod_ip: Ipv4Addr,
    /// `spec.hostAliases`, already rendered as hosts lines.
    pub aliases: String,
}

struct AttachedPod {
    hosts: PodHosts,
    hosts_file: PathBuf,
    sandbox: Arc<Sandbox>,
    _api: Option<AbortOnDrop>,
    listeners: HashMap<(String, String, u16), AbortOnDrop>,
}

struct Inner {
    services: BTreeMap<(String, String), SvcEntry>,
    pods: HashMap<String, AttachedPod>,
    next_ip: u32,
    next_sock: u64,
}

/// Service routing and API server forwarding for all Pods of the kubelet.
pub struct Network {
    sock_dir: PathBuf,
    api_server: SocketAddr,
    api_sock: PathBuf,
    directory: Arc<PodDirectory>,
    inner: Mutex<Inner>,
    _api_host: std::sync::Mutex<Option<AbortOnDrop>>,
}

impl Network {
    /// Starts the host side of the API server forwarder under `state_dir/s`.
    pub fn new(
        state_dir: &Path,
        api_server: SocketAddr,
        directory: Arc<PodDirectory>,
    ) -> std::io::Result<Arc<Self>> {
        let sock_dir = state_dir.join("s");
        std::fs::create_dir_all(&sock_dir)?;
        {
            use std::os::unix::fs::PermissionsExt;
            // The forwarder sockets are for the kubelet only.
            std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let api_sock = sock_dir.join("api.sock");
        let _ = std::fs::remove_file(&api_sock);
        let listener = UnixListener::bind(&api_sock)?;
        let host = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    if let Ok(Ok(upstream)) = tokio::time::timeout(
                        DIAL_TIMEOUT,
                        tokio::net::TcpStream::connect(api_server),
                    )
                    .await
                    {
                        splice(conn, upstream).await;
                    }
                });
            }
        });
        Ok(Arc::new(Self {
            sock_dir,
            api_server,
            api_sock,
            directory,
            inner: Mutex::new(Inner {
                services: BTreeMap::new(),
                pods: HashMap::new(),
                next_ip: 2,
                next_sock: 0,
            }),
            _api_host: std::sync::Mutex::new(Some(AbortOnDrop(host))),
        }))
    }

    pub fn api_server(&self) -> SocketAddr {
        self.api_server
    }

    /// Hosts file of a Pod: itself, the API server and every Service.
    pub async fn hosts_content(&self, pod: &PodHosts) -> String {
        let inner = self.inner.lock().await;
        render_hosts(&inner, pod)
    }

    /// Starts the Pod's forwarders (API server and every Service).
    pub async fn attach(
        &self,
        uid: &str,
        hosts: &PodHosts,
        hosts_file: &Path,
        sandbox: Arc<Sandbox>,
    ) -> std::io::Result<()> {
        let api_addr = SocketAddr::new(
            POD_API_SERVER_IP
                .parse()
                .map_err(|_| std::io::Error::other("bad POD_API_SERVER_IP"))?,
            POD_API_SERVER_PORT,
        );
        let api = spawn_pod_listener(&sandbox, api_addr, self.api_sock.clone()).await?;
        let mut inner = self.inner.lock().await;
        let mut pod = AttachedPod {
            hosts: hosts.clone(),
            hosts_file: hosts_file.to_path_buf(),
            sandbox,
            _api: Some(api),
            listeners: HashMap::new(),
        };
        for ((ns, name), svc) in &inner.services {
            for p in &svc.ports {
                let addr = SocketAddr::new(svc.ip.into(), p.port);
                match spawn_pod_listener(&pod.sandbox, addr, p.sock.clone()).await {
                    Ok(l) => {
                        pod.listeners.insert((ns.clone(), name.clone(), p.port), l);
                    }
                    Err(e) => tracing::warn!(%addr, error = %e, "service forwarder"),
                }
            }
        }
        write_hosts(&pod.hosts_file, &render_hosts(&inner, hosts));
        inner.pods.insert(uid.to_string(), pod);
        Ok(())
    }

    /// Stops the Pod's forwarders.
    pub async fn detach(&self, uid: &str) {
        self.inner.lock().await.pods.remove(uid);
    }

    /// Adds or updates a Service (TCP ports; ExternalName and selector-less
    /// Services are not routed).
    pub async fn apply_service(self: &Arc<Self>, svc: &Service) {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        // Pods reach the API server through the dedicated forwarder.
        if ns == "default" && name == "kubernetes" {
            return;
        }
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            return;
        }
        let selector = spec.selector.clone().unwrap_or_default();
        let ports: Vec<(u16, IntOrString)> = spec
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok()?;
                let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
                Some((port, target))
            })
            .collect();
        let fingerprint = format!("{ports:?}{selector:?}");
        let key = (ns.clone(), name.clone());
        let mut inner = self.inner.lock().await;
        if inner
            .services
            .get(&key)
            .is_some_and(|s| s.fingerprint == fingerprint)
        {
            return;
        }
        let ip = match inner.services.remove(&key) {
            Some(old) => old.ip,
            None => {
                if inner.next_ip >= MAX_SERVICES {
                    tracing::warn!(ns, name, limit = MAX_SERVICES, "too many services");
                    return;
                }
                let n = inner.next_ip;
                inner.next_ip += 1;
                Ipv4Addr::new(127, 100, (n >> 8) as u8, (n & 0xff) as u8)
            }
        };
        for pod in inner.pods.values_mut() {
            pod.listeners
                .retain(|(pns, pname, _), _| !(pns == &ns && pname == &name));
        }
        let mut entry = SvcEntry {
            ip,
            ports: Vec::new(),
            fingerprint,
        };
        for (port, target) in ports {
            inner.next_sock += 1;
            let sock = self.sock_dir.join(format!("{}.sock", inner.next_sock));
            let _ = std::fs::remove_file(&sock);
            let listener = match UnixListener::bind(&sock) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(sock = %sock.display(), error = %e, "service socket");
                    continue;
                }
            };
            let host = tokio::spawn(serve_service(
                listener,
                self.directory.clone(),
                ns.clone(),
                selector.clone(),
                target,
            ));
            entry.ports.push(SvcPort {
                port,
                sock,
                _host: AbortOnDrop(host),
            });
        }
        let mut added = Vec::new();
        for (uid, pod) in &inner.pods {
            for p in &entry.ports {
                let addr = SocketAddr::new(ip.into(), p.port);
                match spawn_pod_listener(&pod.sandbox, addr, p.sock.clone()).await {
                    Ok(l) => added.push((uid.clone(), (ns.clone(), name.clone(), p.port), l)),
                    Err(e) => tracing::warn!(%addr, error = %e, "service forwarder"),
                }
            }
        }
        for (uid, key, l) in added {
            if let Some(pod) = inner.pods.get_mut(&uid) {
                pod.listeners.insert(key, l);
            }
        }
        inner.services.insert(key, entry);
        rewrite_all_hosts(&inner);
    }

    pub async fn delete_service(&self, namespace: &str, name: &str) {
        let mut inner = self.inner.lock().await;
        if let Some(old) = inner
            .services
            .remove(&(namespace.to_string(), name.to_string()))
        {
            for p in &old.ports {
                let _ = std::fs::remove_file(&p.sock);
            }
            for pod in inner.pods.values_mut() {
                pod.listeners
                    .retain(|(pns, pname, _), _| !(pns == namespace && pname == name));
            }
            rewrite_all_hosts(&inner);
        }
    }

    /// The in-Pod address of a Service, if routed.
    pub async fn service_ip(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.inner
            .lock()
            .await
            .services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| s.ip)
    }
}

fn render_hosts(inner: &Inner, pod: &PodHosts) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file (kruntimes test kubelet).\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    out.push_str(&format!("{}\t{}\n", pod.pod_ip, pod.hostname));
    out.push_str(&format!(
        "{POD_API_SERVER_IP}\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default{}\n",
        if pod.namespace == "default" { " kubernetes" } else { "" }
    ));
    for ((ns, name), svc) in &inner.services {
        out.push_str(&format!(
            "{}\t{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}{}\n",
            svc.ip,
            if *ns == pod.namespace {
                format!(" {name}")
            } else {
                String::new()
            }
        ));
    }
    if !pod.aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        out.push_str(&pod.aliases);
    }
    out
}

fn rewrite_all_hosts(inner: &Inner) {
    for pod in inner.pods.values() {
        write_hosts(&pod.hosts_file, &render_hosts(inner, &pod.hosts));
    }
}

/// Rewrites in place: the file is bind-mounted, a rename would not be seen.
fn write_hosts(path: &Path, content: &str) {
    if let Err(e) = std::fs::write(path, content) {
        tracing::warn!(path = %path.display(), error = %e, "writing hosts file");
    }
}

/// Listens on `addr` inside the Pod and carries each connection to `sock`.
async fn spawn_pod_listener(
    sandbox: &Sandbox,
    addr: SocketAddr,
    sock: PathBuf,
) -> std::io::Result<AbortOnDrop> {
    let listener = sandbox.listen(addr).await?;
    Ok(AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let sock = sock.clone();
            tokio::spawn(async move {
                if let Ok(up) = UnixStream::connect(&sock).await {
                    splice(conn, up).await;
                }
            });
        }
    })))
}

/// Host side of one Service port: round-robin over ready matching Pods.
async fn serve_service(
    listener: UnixListener,
    directory: Arc<PodDirectory>,
    namespace: String,
    selector: BTreeMap<String, String>,
    target: IntOrString,
) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        if selector.is_empty() {
            continue;
        }
        let backends = directory.ready_matching(&namespace, &selector);
        if backends.is_empty() {
            // Like a Service without endpoints: the connection is refused.
            continue;
        }
        let pick = &backends[next.fetch_add(1, Ordering::Relaxed) % backends.len()];
        let port = match &target {
            IntOrString::Int(p) => u16::try_from(*p).ok(),
            IntOrString::String(name) => pick.named_ports.get(name).copied(),
        };
        let Some(port) = port else { continue };
        let sandbox = pick.sandbox.clone();
        let addr = SocketAddr::new(pick.pod_ip.into(), port);
        tokio::spawn(async move {
            if let Ok(up) = sandbox.connect(addr, DIAL_TIMEOUT).await {
                splice(conn, up).await;
            }
        });
    }
}

async fn splice<A, B>(mut a: A, mut b: B)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}
