//! Locating the control-plane binaries built by `tests/controlplane/build.sh`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Kubernetes version pinned in `tests/controlplane/go.mod`; part of the cache key.
pub const K8S_VERSION: &str = "v1.34.4";

/// Env var overriding the directory holding the binaries.
pub const BIN_ENV: &str = "KRUNTIMES_K8S_BIN";
/// Env var overriding the cache root used by build.sh (`$HOME/.cache/kruntimes`).
pub const CACHE_ENV: &str = "KRUNTIMES_CACHE";

/// Paths to every binary the harness runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    pub versitygw: PathBuf,
}

impl Binaries {
    /// The directory build.sh writes to: `$KRUNTIMES_K8S_BIN`, else
    /// `${KRUNTIMES_CACHE:-$HOME/.cache/kruntimes}/k8s-<version>/bin`.
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os(BIN_ENV).filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
        let root = std::env::var_os(CACHE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                Path::new(&home).join(".cache").join("kruntimes")
            });
        root.join(format!("k8s-{K8S_VERSION}")).join("bin")
    }

    /// Finds all binaries in [`Binaries::default_dir`]; fails naming build.sh if any is missing.
    pub fn locate() -> Result<Self> {
        Self::in_dir(&Self::default_dir())
    }

    /// Finds all binaries in `dir`; fails naming build.sh if any is missing.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let find = |name: &'static str| -> Result<PathBuf> {
            let path = dir.join(name);
            if is_executable(&path) {
                Ok(path)
            } else {
                Err(Error::MissingBinary { name, path })
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            etcd: find("etcd")?,
            kube_apiserver: find("kube-apiserver")?,
            kube_controller_manager: find("kube-controller-manager")?,
            kubectl: find("kubectl")?,
            helm: find("helm")?,
            versitygw: find("versitygw")?,
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_go_mod() {
        let go_mod = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../controlplane/go.mod"),
        )
        .unwrap();
        let pinned = go_mod
            .lines()
            .find_map(|l| l.trim().strip_prefix("k8s.io/kubernetes "))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap();
        assert_eq!(pinned, K8S_VERSION, "update K8S_VERSION with go.mod");
        let staging = format!("v0.{}", K8S_VERSION.trim_start_matches("v1."));
        let replaces = go_mod.lines().filter(|l| l.contains("=> k8s.io/")).count();
        assert!(replaces >= 30, "staging replaces missing");
        for line in go_mod.lines().filter(|l| l.contains("=> k8s.io/")) {
            assert!(line.trim().ends_with(&staging), "{line} is not {staging}");
        }
        // Every staging module k8s.io/kubernetes requires at v0.0.0 is replaced.
        let replaced: Vec<&str> = go_mod
            .lines()
            .filter(|l| l.contains("=> k8s.io/"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let unreplaced: Vec<&str> = go_mod
            .lines()
            .filter(|l| !l.contains("=>") && l.contains(" v0.0.0 "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|m| m.starts_with("k8s.io/") && !replaced.contains(m))
            .collect();
        assert!(
            unreplaced.is_empty(),
            "unreplaced staging modules: {unreplaced:?}"
        );
    }

    #[test]
    fn missing_binary_names_build_script() {
        let dir = tempfile::tempdir().unwrap();
        let err = Binaries::in_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tests/controlplane/build.sh"), "{err}");
        assert!(err.contains("etcd"), "{err}");
    }
}
