//! kruntimes test environment: a real Kubernetes control plane (etcd,
//! kube-apiserver, kube-controller-manager built by `tests/controlplane/build.sh`)
//! started on loopback, and a test kubelet that runs Pods as local processes
//! in per-Pod namespaces. See `docs/testing.md`.
//!
//! ```no_run
//! # async fn demo() -> kruntimes_testenv::Result<()> {
//! let env = kruntimes_testenv::TestEnv::shared().await?;
//! let ns = env.namespace().await?;
//! let client = env.client().await?;
//! # let _ = (ns, client); Ok(()) }
//! ```

pub mod binaries;
pub mod certs;
pub mod controlplane;
pub mod error;
pub mod harness;
pub mod kubeconfig;
pub mod kubelet;
pub mod ports;
pub mod process;

pub use binaries::{Binaries, K8S_VERSION};
pub use controlplane::{ControlPlane, ControlPlaneOptions};
pub use error::{Error, Result};
pub use harness::{TestEnv, TestEnvOptions, TestNamespace};
pub use kubelet::{ImageRule, Kubelet, KubeletConfig, PortForward};
