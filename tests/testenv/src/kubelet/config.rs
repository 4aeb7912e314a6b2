//! Test kubelet configuration: node identity, timings and the image table
//! (how container images map to local commands). Loadable from YAML/JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest state dir: Unix socket paths below it must fit in 108 bytes.
pub const MAX_STATE_DIR_LEN: usize = 64;
/// Most rules an image table may hold.
pub const MAX_IMAGE_RULES: usize = 1024;
/// Longest image prefix, program name or command argument in a rule.
pub const MAX_RULE_STRING_LEN: usize = 4096;
/// Longest back-off the kubelet will wait between restarts.
pub const MAX_BACKOFF_SECONDS: f64 = 3600.0;

/// One image (or image prefix) and the local command that plays it.
///
/// A container's argv is computed as a container runtime would from the
/// image's ENTRYPOINT/CMD: `command` overrides `entrypoint`, `args` overrides
/// `cmd` (and `cmd` is dropped when only `command` is given). The program
/// (argv\[0\]) is then looked up in `programs`, by full path then by file name,
/// so an image path like `/usr/local/bin/runtimed` can map to a cargo-built
/// binary; unmapped programs are run as given (host `PATH`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageRule {
    /// Image reference or prefix. It matches an image equal to it, or starting
    /// with it followed by `:` or `@` (tag/digest), or any image starting with it
    /// when it ends in `/`. The longest matching prefix wins.
    pub image: String,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The image's ENV: set before the container's own `env`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// In-image program (path or file name) -> host program.
    #[serde(default)]
    pub programs: BTreeMap<String, String>,
    /// The image's WORKDIR when the container sets no `workingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The image's USER (numeric uid) when the Pod sets no `runAsUser`;
    /// root when absent (so `runAsNonRoot` Pods are refused, as for a root image).
    #[serde(default)]
    pub user: Option<u32>,
}

impl ImageRule {
    /// A rule running `program` (a host path) with the given default args.
    pub fn command(image: impl Into<String>, program: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            entrypoint: vec![program.into()],
            ..Self::default()
        }
    }

    /// Adds an ENV entry of the image.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Maps an in-image program name/path to a host program.
    pub fn with_program(mut self, in_image: impl Into<String>, host: impl Into<String>) -> Self {
        self.programs.insert(in_image.into(), host.into());
        self
    }

    /// Sets the image USER.
    pub fn with_user(mut self, uid: u32) -> Self {
        self.user = Some(uid);
        self
    }

    /// Sets the image CMD (default args).
    pub fn with_cmd<I: Into<String>>(mut self, cmd: impl IntoIterator<Item = I>) -> Self {
        self.cmd = cmd.into_iter().map(Into::into).collect();
        self
    }

    fn matches(&self, image: &str) -> bool {
        let Some(rest) = image.strip_prefix(self.image.as_str()) else {
            return false;
        };
        rest.is_empty() || self.image.ends_with('/') || rest.starts_with([':', '@'])
    }
}

/// Configuration of a [`crate::kubelet::Kubelet`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeletConfig {
    #[serde(default = "default_node_name")]
    pub node_name: String,
    /// Pod state (volumes, logs, sockets) lives here; at most
    /// [`MAX_STATE_DIR_LEN`] bytes so socket paths stay short.
    pub state_dir: PathBuf,
    /// Image table; later rules do not override earlier ones, the longest prefix wins.
    #[serde(default = "default_images")]
    pub images: Vec<ImageRule>,
    /// First restart back-off (the real kubelet uses 10s).
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial_seconds: f64,
    /// Back-off cap (the real kubelet uses 300s).
    #[serde(default = "default_backoff_max")]
    pub backoff_max_seconds: f64,
    #[serde(default = "default_lease_duration")]
    pub lease_duration_seconds: i32,
    /// How often Secret/ConfigMap/projected volumes are rewritten from the API.
    #[serde(default = "default_volume_resync")]
    pub volume_resync_seconds: f64,
    /// Pods whose `schedulerName` is listed here are bound to this node.
    #[serde(default = "default_scheduler_names")]
    pub scheduler_names: Vec<String>,
    /// Extra labels on the Node.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    /// Env added to every container (before the container's own env).
    #[serde(default)]
    pub extra_env: BTreeMap<String, String>,
    /// Grace period used when the kubelet itself shuts down.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_seconds: f64,
}

fn default_node_name() -> String {
    "kruntimes-test-node".into()
}
fn default_backoff_initial() -> f64 {
    10.0
}
fn default_backoff_max() -> f64 {
    300.0
}
fn default_lease_duration() -> i32 {
    40
}
fn default_volume_resync() -> f64 {
    60.0
}
fn default_shutdown_grace() -> f64 {
    5.0
}
fn default_scheduler_names() -> Vec<String> {
    vec!["default-scheduler".into()]
}

/// Images every test kubelet knows: shells and a pause image built from host tools.
pub fn default_images() -> Vec<ImageRule> {
    vec![
        ImageRule {
            image: "busybox".into(),
            cmd: vec!["sh".into()],
            ..ImageRule::default()
        },
        ImageRule {
            image: "docker.io/library/busybox".into(),
            cmd: vec!["sh".into()],
            ..ImageRule::default()
        },
        ImageRule {
            image: "kruntimes.test/shell".into(),
            cmd: vec!["sh".into()],
            ..ImageRule::default()
        },
        ImageRule {
            image: "registry.k8s.io/pause".into(),
            entrypoint: vec!["sleep".into(), "infinity".into()],
            ..ImageRule::default()
        },
    ]
}

impl KubeletConfig {
    /// Defaults with the given state dir.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_name: default_node_name(),
            state_dir: state_dir.into(),
            images: default_images(),
            backoff_initial_seconds: default_backoff_initial(),
            backoff_max_seconds: default_backoff_max(),
            lease_duration_seconds: default_lease_duration(),
            volume_resync_seconds: default_volume_resync(),
            scheduler_names: default_scheduler_names(),
            node_labels: BTreeMap::new(),
            extra_env: BTreeMap::new(),
            shutdown_grace_seconds: default_shutdown_grace(),
        }
    }

    /// Loads a YAML or JSON file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let cfg: Self = serde_yaml::from_str(&text).map_err(|e| {
            Error::invalid("kubelet config", path.display().to_string(), e.to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Adds (or replaces) an image rule.
    pub fn map_image(&mut self, rule: ImageRule) -> &mut Self {
        self.images.retain(|r| r.image != rule.image);
        self.images.push(rule);
        self
    }

    /// The longest rule matching `image`.
    pub fn image_rule(&self, image: &str) -> Option<&ImageRule> {
        self.images
            .iter()
            .filter(|r| r.matches(image))
            .max_by_key(|r| r.image.len())
    }

    pub fn backoff_initial(&self) -> Duration {
        Duration::from_secs_f64(self.backoff_initial_seconds)
    }

    pub fn backoff_max(&self) -> Duration {
        Duration::from_secs_f64(self.backoff_max_seconds)
    }

    /// Checks every bound; errors name the field, the value and the limit.
    pub fn validate(&self) -> Result<()> {
        validate_dns_subdomain("nodeName", &self.node_name)?;
        let dir = self.state_dir.to_string_lossy();
        if !self.state_dir.is_absolute() {
            return Err(Error::invalid("stateDir", dir, "must be an absolute path"));
        }
        if dir.len() > MAX_STATE_DIR_LEN {
            return Err(Error::invalid(
                "stateDir",
                dir.clone(),
                format!(
                    "is {} bytes, limit {MAX_STATE_DIR_LEN} (Unix socket paths below it must fit 108 bytes)",
                    dir.len()
                ),
            ));
        }
        for (field, v) in [
            ("backoffInitialSeconds", self.backoff_initial_seconds),
            ("backoffMaxSeconds", self.backoff_max_seconds),
            ("volumeResyncSeconds", self.volume_resync_seconds),
            ("shutdownGraceSeconds", self.shutdown_grace_seconds),
        ] {
            if !(v > 0.0 && v <= MAX_BACKOFF_SECONDS) {
                return Err(Error::invalid(
                    field,
                    v.to_string(),
                    format!("must be > 0 and <= {MAX_BACKOFF_SECONDS}"),
                ));
            }
        }
        if self.backoff_initial_seconds > self.backoff_max_seconds {
            return Err(Error::invalid(
                "backoffInitialSeconds",
                self.backoff_initial_seconds.to_string(),
                format!("exceeds backoffMaxSeconds {}", self.backoff_max_seconds),
            ));
        }
        if !(10..=3600).contains(&self.lease_duration_seconds) {
            return Err(Error::invalid(
                "leaseDurationSeconds",
                self.lease_duration_seconds.to_string(),
                "must be between 10 and 3600",
            ));
        }
        if self.images.len() > MAX_IMAGE_RULES {
            return Err(Error::invalid(
                "images",
                format!("{} rules", self.images.len()),
                format!("limit {MAX_IMAGE_RULES}"),
            ));
        }
        for (i, rule) in self.images.iter().enumerate() {
            if rule.image.is_empty() {
                return Err(Error::invalid(
                    format!("images[{i}].image"),
                    "",
                    "must not be empty",
                ));
            }
            let strings = std::iter::once(&rule.image)
                .chain(&rule.entrypoint)
                .chain(&rule.cmd)
                .chain(rule.env.keys())
                .chain(rule.env.values())
                .chain(rule.programs.keys())
                .chain(rule.programs.values());
            for s in strings {
                if s.len() > MAX_RULE_STRING_LEN {
                    return Err(Error::invalid(
                        format!("images[{i}]"),
                        format!("{}...", &s[..32.min(s.len())]),
                        format!("string of {} bytes, limit {MAX_RULE_STRING_LEN}", s.len()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// RFC 1123 subdomain, as Kubernetes requires for Node names.
fn validate_dns_subdomain(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            field,
            value,
            "must be a lowercase RFC 1123 subdomain of at most 253 characters",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_matching_respects_tag_boundaries() {
        let mut cfg = KubeletConfig::new("/tmp/x");
        cfg.map_image(ImageRule::command(
            "ghcr.io/kruntimes/runtimed",
            "/bin/true",
        ));
        cfg.map_image(ImageRule::command("ghcr.io/kruntimes/", "/bin/false"));
        let rule = |img: &str| cfg.image_rule(img).map(|r| r.image.clone());
        assert_eq!(
            rule("ghcr.io/kruntimes/runtimed:v1").as_deref(),
            Some("ghcr.io/kruntimes/runtimed")
        );
        assert_eq!(
            rule("ghcr.io/kruntimes/runtimed@sha256:ab").as_deref(),
            Some("ghcr.io/kruntimes/runtimed")
        );
        assert_eq!(
            rule("ghcr.io/kruntimes/runtimedx").as_deref(),
            Some("ghcr.io/kruntimes/")
        );
        assert_eq!(rule("busybox:1.36").as_deref(), Some("busybox"));
        assert_eq!(rule("busyboxx"), None);
        assert_eq!(rule("nginx"), None);
    }

    #[test]
    fn validation_names_field_value_and_limit() {
        let mut cfg = KubeletConfig::new("/tmp/x");
        cfg.backoff_initial_seconds = 0.0;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("backoffInitialSeconds") && err.contains("\"0\""),
            "{err}"
        );
        let cfg = KubeletConfig::new(format!("/tmp/{}", "a".repeat(100)));
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("stateDir") && err.contains("limit 64"),
            "{err}"
        );
        let mut cfg = KubeletConfig::new("/tmp/x");
        cfg.node_name = "Bad_Name".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("nodeName") && err.contains("Bad_Name"),
            "{err}"
        );
    }

    #[test]
    fn yaml_round_trip_with_defaults() {
        let cfg: KubeletConfig = serde_yaml::from_str(
            "stateDir: /tmp/k\nimages:\n- image: example.com/runtimed\n  entrypoint: [/opt/runtimed]\n  env: {A: b}\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.node_name, "kruntimes-test-node");
        assert_eq!(cfg.backoff_initial(), Duration::from_secs(10));
        assert_eq!(
            cfg.image_rule("example.com/runtimed:1").unwrap().entrypoint,
            vec!["/opt/runtimed".to_string()]
        );
    }
}
