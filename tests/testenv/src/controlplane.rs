//! A real Kubernetes control plane on loopback: etcd, kube-apiserver (RBAC,
//! ServiceAccount token issuing, generated PKI) and kube-controller-manager,
//! each a child process on free 127.0.0.1 ports, stopped (process groups) on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::PostParams;

use crate::binaries::Binaries;
use crate::certs::Pki;
use crate::error::{Error, Result};
use crate::kubeconfig;
use crate::ports::free_ports;
use crate::process::ManagedProcess;

/// Audience and issuer of ServiceAccount tokens (what a real cluster uses).
pub const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Env var: keep a temporary state dir (logs, kubeconfig) after shutdown.
pub const KEEP_ENV: &str = "KRUNTIMES_TESTENV_KEEP";

/// How long start-up may take on a busy 2-core machine before we give up.
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(180);
const CONTROLLERS_READY_TIMEOUT: Duration = Duration::from_secs(120);
const START_ATTEMPTS: usize = 3;

/// Options for [`ControlPlane::start`].
#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// Directory for data, logs and PKI; a fresh temp dir when `None`
    /// (removed on drop). A given directory is kept.
    pub state_dir: Option<PathBuf>,
    /// Binary directory; [`Binaries::default_dir`] when `None`.
    pub bin_dir: Option<PathBuf>,
}

/// A running control plane. Dropping it stops every process.
#[derive(Debug)]
pub struct ControlPlane {
    id: String,
    state_dir: PathBuf,
    remove_state_dir: bool,
    binaries: Binaries,
    pki: Pki,
    kubeconfig: PathBuf,
    api_port: u16,
    etcd_port: u16,
    /// etcd, kube-apiserver, kube-controller-manager, in start order.
    processes: Mutex<Vec<ManagedProcess>>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and waits until the
    /// API server is ready and controllers run (the `default` ServiceAccount and
    /// `kube-root-ca.crt` exist).
    pub async fn start(opts: ControlPlaneOptions) -> Result<Self> {
        let binaries = match &opts.bin_dir {
            Some(dir) => Binaries::in_dir(dir)?,
            None => Binaries::locate()?,
        };
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let (state_dir, remove_state_dir) = match &opts.state_dir {
            Some(dir) => (dir.clone(), false),
            None => {
                cleanup_stale_state_dirs();
                let keep = std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty() && v != "0");
                (
                    std::env::temp_dir().join(format!("kruntimes-testenv-{id}")),
                    !keep,
                )
            }
        };
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
        // Keys, tokens and Pod secrets live below: owner only.
        set_private(&state_dir)?;
        std::fs::write(state_dir.join("owner.pid"), std::process::id().to_string())
            .map_err(|e| Error::io("writing owner.pid", e))?;
        let pki = Pki::generate(&state_dir.join("pki"))?;

        let mut last_err = None;
        for attempt in 1..=START_ATTEMPTS {
            let mut cp = ControlPlane {
                id: id.clone(),
                state_dir: state_dir.clone(),
                remove_state_dir,
                binaries: binaries.clone(),
                pki: pki.clone(),
                kubeconfig: state_dir.join("admin.kubeconfig"),
                api_port: 0,
                etcd_port: 0,
                processes: Mutex::new(Vec::new()),
            };
            match cp.boot().await {
                Ok(()) => return Ok(cp),
                Err(e) => {
                    let retry = e.to_string().contains("address already in use");
                    tracing::warn!(attempt, error = %e, "control plane start failed");
                    // Don't remove the state dir yet: the next attempt reuses it.
                    cp.remove_state_dir = false;
                    cp.shutdown();
                    if !retry {
                        if remove_state_dir {
                            let _ = std::fs::remove_dir_all(&state_dir);
                        }
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        if remove_state_dir {
            let _ = std::fs::remove_dir_all(&state_dir);
        }
        Err(last_err.unwrap_or_else(|| Error::Other("control plane did not start".into())))
    }

    async fn boot(&mut self) -> Result<()> {
        let ports = free_ports(4)?;
        let (etcd_port, etcd_peer, api_port, kcm_port) = (ports[0], ports[1], ports[2], ports[3]);
        self.api_port = api_port;
        self.etcd_port = etcd_port;
        let logs = self.state_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| Error::io("creating logs dir", e))?;
        let etcd_data = self.state_dir.join("etcd");
        // A failed attempt may have left a half-initialised member behind.
        let _ = std::fs::remove_dir_all(&etcd_data);

        let mut etcd = Command::new(&self.binaries.etcd);
        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        etcd.arg("--name=testenv")
            .arg(format!("--data-dir={}", etcd_data.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=testenv={peer_url}"))
            // Test data is disposable; fsync dominates etcd latency on a shared disk.
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        self.push(ManagedProcess::spawn(
            "etcd",
            etcd,
            &logs.join("etcd.log"),
            &self.id,
        )?)?;

        let pki = &self.pki;
        let mut api = Command::new(&self.binaries.kube_apiserver);
        api.arg(format!("--etcd-servers={client_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg("--advertise-address=127.0.0.1")
            // Its Endpoints would name 127.0.0.1, which validation rejects; Pods
            // reach the API server through the test kubelet's forwarder instead.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!(
                "--cert-dir={}",
                self.state_dir.join("pki").display()
            ))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg(format!("--service-account-issuer={SA_ISSUER}"))
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--api-audiences={SA_ISSUER}"))
            .arg("--authorization-mode=Node,RBAC")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .arg("--v=1");
        self.push(ManagedProcess::spawn(
            "kube-apiserver",
            api,
            &logs.join("kube-apiserver.log"),
            &self.id,
        )?)?;

        kubeconfig::write(
            &self.kubeconfig,
            &self.server_url(),
            &pki.ca_cert,
            "testenv-admin",
            None,
            serde_json::json!({
                "client-certificate": pki.admin_cert.to_string_lossy(),
                "client-key": pki.admin_key.to_string_lossy(),
            }),
        )?;
        self.wait_apiserver_ready().await?;

        let kc = self.kubeconfig.display().to_string();
        let mut kcm = Command::new(&self.binaries.kube_controller_manager);
        kcm.arg(format!("--kubeconfig={kc}"))
            .arg(format!("--authentication-kubeconfig={kc}"))
            .arg(format!("--authorization-kubeconfig={kc}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={kcm_port}"))
            .arg(format!(
                "--cert-dir={}",
                self.state_dir.join("pki").display()
            ))
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg("--use-service-account-credentials=true")
            .arg("--controllers=*")
            .arg("--leader-elect=false")
            .arg(format!(
                "--cluster-signing-cert-file={}",
                pki.ca_cert.display()
            ))
            .arg(format!(
                "--cluster-signing-key-file={}",
                pki.ca_key.display()
            ))
            // Dynamic hostPath PVs for PVC-backed volumes (development provisioner).
            .arg("--enable-hostpath-provisioner=true")
            .arg("--v=1");
        self.push(ManagedProcess::spawn(
            "kube-controller-manager",
            kcm,
            &logs.join("kube-controller-manager.log"),
            &self.id,
        )?)?;
        self.wait_controllers_ready().await?;
        self.install_defaults().await?;
        Ok(())
    }

    fn push(&self, p: ManagedProcess) -> Result<()> {
        self.processes
            .lock()
            .map_err(|_| Error::Other("process list lock poisoned".into()))?
            .push(p);
        Ok(())
    }

    /// Fails with the log tail of the first process that has exited.
    fn check_alive(&self) -> Result<()> {
        let mut procs = self
            .processes
            .lock()
            .map_err(|_| Error::Other("process list lock poisoned".into()))?;
        for p in procs.iter_mut() {
            if p.try_exit().is_some() {
                return Err(p.exited_error());
            }
        }
        Ok(())
    }

    async fn wait_apiserver_ready(&self) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + APISERVER_READY_TIMEOUT;
        loop {
            self.check_alive()?;
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::Other(e.to_string()))?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(body) => {
                    return Err(Error::Timeout {
                        what: format!("kube-apiserver /readyz (last answer {body:?})"),
                        seconds: APISERVER_READY_TIMEOUT.as_secs(),
                    });
                }
                Err(e) => {
                    return Err(Error::Timeout {
                        what: format!("kube-apiserver /readyz (last error {e})"),
                        seconds: APISERVER_READY_TIMEOUT.as_secs(),
                    });
                }
            }
        }
    }

    async fn wait_controllers_ready(&self) -> Result<()> {
        let client = self.client().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");
        let deadline = Instant::now() + CONTROLLERS_READY_TIMEOUT;
        loop {
            self.check_alive()?;
            let sa = sas.get_opt("default").await.ok().flatten();
            let ca = cms.get_opt("kube-root-ca.crt").await.ok().flatten();
            if sa.is_some() && ca.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "kube-controller-manager to create the default ServiceAccount \
                           and kube-root-ca.crt"
                        .into(),
                    seconds: CONTROLLERS_READY_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A default StorageClass served by kube-controller-manager's hostPath provisioner.
    async fn install_defaults(&self) -> Result<()> {
        let client = self.client().await?;
        let scs: Api<StorageClass> = Api::all(client);
        let sc: StorageClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "standard",
                "annotations": { "storageclass.kubernetes.io/is-default-class": "true" },
            },
            "provisioner": "kubernetes.io/host-path",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
        }))
        .map_err(|e| Error::Other(e.to_string()))?;
        match scs.create(&PostParams::default(), &sc).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(Error::kube("creating StorageClass standard", e)),
        }
    }

    /// A new admin client bound to the caller's tokio runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        kubeconfig::client_from(&self.kubeconfig).await
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// Admin kubeconfig (group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Unique id; every process of this control plane carries it in
    /// [`crate::process::ENV_MARKER`].
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Pids of the control-plane processes still tracked.
    pub fn pids(&self) -> Vec<u32> {
        self.processes
            .lock()
            .map(|p| p.iter().map(|p| p.pid()).collect())
            .unwrap_or_default()
    }

    /// Stops processes in reverse start order and removes a temporary state dir.
    /// Idempotent; also called on drop.
    pub fn shutdown(&self) {
        let procs = match self.processes.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for mut p in procs.into_iter().rev() {
            p.stop(Duration::from_secs(5));
        }
        if self.remove_state_dir {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Removes temp state dirs of earlier environments whose owner process is gone
/// (a test binary killed with SIGKILL cannot clean up after itself).
fn cleanup_stale_state_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("kruntimes-testenv-") {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if owner.is_some() && !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// chmod 0700.
pub(crate) fn set_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("chmod 0700 {}", dir.display()), e))
}
