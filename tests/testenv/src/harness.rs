//! The test environment: a control plane plus an embedded test kubelet, both
//! driven from a dedicated tokio runtime so they outlive individual tests.
//! One environment is shared per test binary ([`TestEnv::shared`], stopped at
//! process exit); tests get a fresh namespace each ([`TestEnv::namespace`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::controlplane::{ControlPlane, ControlPlaneOptions};
use crate::error::{Error, Result};
use crate::kubeconfig;
use crate::kubelet::{ImageRule, Kubelet, KubeletConfig};

const NAMESPACE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for [`TestEnv::start`].
#[derive(Debug, Clone)]
pub struct TestEnvOptions {
    pub control_plane: ControlPlaneOptions,
    /// Extra image rules for the kubelet (e.g. runtimed, runtimes).
    pub images: Vec<ImageRule>,
    /// Restart back-off; short by default so crash-loop tests stay quick.
    pub backoff_initial_seconds: f64,
    pub backoff_max_seconds: f64,
    /// Adjusts the kubelet config before it starts.
    pub kubelet: Option<fn(&mut KubeletConfig)>,
}

impl Default for TestEnvOptions {
    fn default() -> Self {
        Self {
            control_plane: ControlPlaneOptions::default(),
            images: Vec::new(),
            backoff_initial_seconds: 1.0,
            backoff_max_seconds: 16.0,
            kubelet: None,
        }
    }
}

/// A running control plane with a test kubelet.
pub struct TestEnv {
    // `Drop` stops containers first, then the kubelet's runtime, then the
    // control plane.
    kubelet: Kubelet,
    runtime: Option<tokio::runtime::Runtime>,
    control_plane: ControlPlane,
}

static SHARED: tokio::sync::OnceCell<std::result::Result<TestEnv, String>> =
    tokio::sync::OnceCell::const_new();

extern "C" fn teardown_shared_at_exit() {
    if let Some(Ok(env)) = SHARED.get() {
        env.shutdown_blocking();
    }
}

impl TestEnv {
    /// The environment shared by all tests of this test binary, started on
    /// first use and stopped when the process exits. Fails (naming
    /// `tests/controlplane/build.sh`) when the binaries are missing.
    pub async fn shared() -> Result<&'static TestEnv> {
        Self::shared_with(TestEnvOptions::default).await
    }

    /// Like [`TestEnv::shared`], with options (e.g. image rules) computed by
    /// `options` on first use. Every test of a binary should pass the same
    /// function: only the first call's options take effect.
    pub async fn shared_with(options: fn() -> TestEnvOptions) -> Result<&'static TestEnv> {
        let env = SHARED
            .get_or_init(|| async {
                let env = TestEnv::start(options()).await.map_err(|e| e.to_string());
                if env.is_ok() {
                    // SAFETY: registering a plain extern "C" fn without captures.
                    unsafe {
                        libc::atexit(teardown_shared_at_exit);
                    }
                }
                env
            })
            .await;
        env.as_ref()
            .map_err(|e| Error::Other(format!("the shared test environment did not start: {e}")))
    }

    /// Starts a private environment (stopped on drop).
    pub async fn start(opts: TestEnvOptions) -> Result<TestEnv> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testenv")
            .enable_all()
            .build()
            .map_err(|e| Error::io("building the testenv runtime", e))?;
        let task = runtime.spawn(async move {
            let cp = ControlPlane::start(opts.control_plane.clone()).await?;
            let client = cp.client().await?;
            let mut cfg = KubeletConfig::new(cp.state_dir().join("kubelet"));
            cfg.backoff_initial_seconds = opts.backoff_initial_seconds;
            cfg.backoff_max_seconds = opts.backoff_max_seconds;
            cfg.volume_resync_seconds = 10.0;
            for rule in opts.images {
                cfg.map_image(rule);
            }
            if let Some(adjust) = opts.kubelet {
                adjust(&mut cfg);
            }
            let api: SocketAddr = SocketAddr::from(([127, 0, 0, 1], cp.api_port()));
            let kubelet = Kubelet::start(client, cfg, api, cp.id()).await?;
            Ok::<_, Error>((cp, kubelet))
        });
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(Error::Other(format!("testenv start-up task failed: {e}"))),
        };
        match result {
            Ok((control_plane, kubelet)) => Ok(TestEnv {
                kubelet,
                runtime: Some(runtime),
                control_plane,
            }),
            Err(e) => {
                // Dropping a runtime inside an async context would panic.
                runtime.shutdown_background();
                Err(e)
            }
        }
    }

    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// The embedded test kubelet.
    pub fn kubelet(&self) -> &Kubelet {
        &self.kubelet
    }

    /// A handle to the runtime the kubelet runs on.
    pub fn runtime_handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }

    /// A new admin client on the caller's runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        self.control_plane.client().await
    }

    pub fn kubeconfig_path(&self) -> &Path {
        self.control_plane.kubeconfig_path()
    }

    /// A fresh namespace (`t-<random>`), ready for Pods (its `default`
    /// ServiceAccount exists). Deleted in the background when dropped.
    pub async fn namespace(&self) -> Result<TestNamespace> {
        let client = self.client().await?;
        let name = format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"kruntimes.io/testenv": "true"}},
        }))
        .map_err(|e| Error::Other(e.to_string()))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| Error::kube(format!("creating namespace {name}"), e))?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        let deadline = tokio::time::Instant::now() + NAMESPACE_READY_TIMEOUT;
        while sas.get_opt("default").await.ok().flatten().is_none() {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("the default ServiceAccount of namespace {name}"),
                    seconds: NAMESPACE_READY_TIMEOUT.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(TestNamespace {
            name,
            kubeconfig: self.kubeconfig_path().to_path_buf(),
            runtime: self.runtime_handle(),
        })
    }

    /// Creates a ServiceAccount (no-op if it exists).
    pub async fn create_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ServiceAccount> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
        }))
        .map_err(|e| Error::Other(e.to_string()))?;
        match api.create(&PostParams::default(), &sa).await {
            Ok(sa) => Ok(sa),
            Err(kube::Error::Api(s)) if s.code == 409 => api
                .get(name)
                .await
                .map_err(|e| Error::kube("reading serviceaccount", e)),
            Err(e) => Err(Error::kube(
                format!("creating serviceaccount {namespace}/{name}"),
                e,
            )),
        }
    }

    /// A token for a ServiceAccount from the TokenRequest API.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        expiration_seconds: i64,
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let req = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": { "audiences": audiences, "expirationSeconds": expiration_seconds },
        });
        let resp: serde_json::Value = api
            .create_subresource("token", name, &PostParams::default(), &req)
            .await
            .map_err(|e| Error::kube(format!("TokenRequest for {namespace}/{name}"), e))?;
        resp["status"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Other("TokenRequest returned no token".into()))
    }

    /// Writes a kubeconfig authenticating as the ServiceAccount (token from
    /// TokenRequest, valid 1h) and returns its path.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self
            .service_account_token(namespace, name, &[], 3600)
            .await?;
        let dir = self.control_plane.state_dir().join("sa-kubeconfigs");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating sa-kubeconfigs", e))?;
        let path = dir.join(format!("{namespace}.{name}.kubeconfig"));
        kubeconfig::write(
            &path,
            &self.control_plane.server_url(),
            &self.control_plane.pki().ca_cert,
            &format!("{namespace}-{name}"),
            Some(namespace),
            serde_json::json!({ "token": token }),
        )?;
        Ok(path)
    }

    /// A client acting as the ServiceAccount (on the caller's runtime).
    pub async fn client_as_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<kube::Client> {
        let path = self.service_account_kubeconfig(namespace, name).await?;
        kubeconfig::client_from(&path).await
    }

    /// `kubectl` (v1.34, built by build.sh) pointed at the control plane.
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.control_plane.binaries().kubectl);
        cmd.env("KUBECONFIG", self.kubeconfig_path());
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs kubectl with `args`; returns stdout, or an error with stderr.
    pub async fn kubectl_output(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl()
            .args(args)
            .output()
            .await
            .map_err(|e| Error::io("running kubectl", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Other(format!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// `helm` pointed at the control plane, with its config/cache/data dirs
    /// inside the environment's state dir.
    pub fn helm(&self) -> tokio::process::Command {
        let state = self.control_plane.state_dir().join("helm");
        let mut cmd = tokio::process::Command::new(&self.control_plane.binaries().helm);
        cmd.env("KUBECONFIG", self.kubeconfig_path())
            .env("HELM_CONFIG_HOME", state.join("config"))
            .env("HELM_CACHE_HOME", state.join("cache"))
            .env("HELM_DATA_HOME", state.join("data"))
            .kill_on_drop(true);
        cmd
    }

    /// Stops everything synchronously (containers, then control plane).
    /// Idempotent; used at process exit and by `Drop`.
    pub fn shutdown_blocking(&self) {
        self.kubelet.kill_all_blocking(Duration::from_secs(2));
        self.control_plane.shutdown();
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kubelet.kill_all_blocking(Duration::from_secs(2));
        if let Some(rt) = self.runtime.take() {
            // Sandbox threads and forwarders end with their tasks.
            rt.shutdown_background();
        }
        self.shutdown_blocking();
    }
}

/// A namespace created for one test; deleted in the background on drop.
pub struct TestNamespace {
    name: String,
    kubeconfig: PathBuf,
    runtime: Option<tokio::runtime::Handle>,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let (Some(rt), name, kc) = (
            self.runtime.clone(),
            self.name.clone(),
            self.kubeconfig.clone(),
        ) else {
            return;
        };
        rt.spawn(async move {
            if let Ok(client) = kubeconfig::client_from(&kc).await {
                let _ = Api::<Namespace>::all(client)
                    .delete(&name, &DeleteParams::background())
                    .await;
            }
        });
    }
}
