//! Kubeconfig files pointing at the test control plane, for kube-rs, kubectl and helm.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{Error, Result};

/// Writes a kubeconfig with one cluster/user/context; `user` is the YAML/JSON
/// value of the `user` entry (client certificate paths or a token).
pub fn write(
    path: &Path,
    server: &str,
    ca_cert: &Path,
    context: &str,
    namespace: Option<&str>,
    user: serde_json::Value,
) -> Result<()> {
    let mut ctx = serde_json::json!({ "cluster": "testenv", "user": context });
    if let Some(ns) = namespace {
        ctx["namespace"] = ns.into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "testenv", "cluster": {
            "server": server,
            "certificate-authority": ca_cert.to_string_lossy(),
        }}],
        "users": [{ "name": context, "user": user }],
        "contexts": [{ "name": context, "context": ctx }],
        "current-context": context,
    });
    let yaml = serde_yaml::to_string(&doc).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    write_private(path, yaml.as_bytes())
}

/// Builds a kube-rs client from a kubeconfig file, on the caller's runtime.
pub async fn client_from(path: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| Error::Kubeconfig(format!("reading {}: {e}", path.display())))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(format!("loading {}: {e}", path.display())))?;
    kube::Client::try_from(config).map_err(|e| Error::kube("building client", e))
}

pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(data)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
