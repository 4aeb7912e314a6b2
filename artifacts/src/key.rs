//! Which Run artifacts belong to, and the key layout
//! `[prefix/]namespaces/<namespace>/runs/<run-uid>/<name>`.

use crate::error::StoreError;
use crate::name::validate_name;

/// Longest Run uid accepted (Kubernetes and runtimed uids are 36-byte UUIDs).
const MAX_UID_BYTES: usize = 128;

/// The Run whose artifacts are stored; both parts become key/path components,
/// so both are validated before any store touches them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunKey {
    pub namespace: String,
    pub run_uid: String,
}

impl RunKey {
    pub fn new(namespace: impl Into<String>, run_uid: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            run_uid: run_uid.into(),
        }
    }

    /// Namespace: a DNS-1123 label (as Kubernetes requires). Uid: 1 to 128 of
    /// `[A-Za-z0-9._-]`, not starting with a dot.
    pub fn validate(&self) -> Result<(), String> {
        let ns = &self.namespace;
        let label_ok = !ns.is_empty()
            && ns.len() <= 63
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !label_ok {
            return Err(format!(
                "namespace {ns:?} must be a DNS-1123 label (1-63 of a-z, 0-9, '-', \
                 starting and ending alphanumeric)"
            ));
        }
        let uid = &self.run_uid;
        let uid_ok = !uid.is_empty()
            && uid.len() <= MAX_UID_BYTES
            && !uid.starts_with('.')
            && uid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !uid_ok {
            return Err(format!(
                "run uid {uid:?} must be 1-{MAX_UID_BYTES} of A-Z, a-z, 0-9, '.', '_', '-', \
                 not starting with '.'"
            ));
        }
        Ok(())
    }

    /// The components below the store's root or prefix, without the name.
    pub(crate) fn components(&self) -> [&str; 4] {
        ["namespaces", &self.namespace, "runs", &self.run_uid]
    }

    /// `[prefix/]namespaces/<ns>/runs/<uid>`.
    pub fn run_prefix(&self, prefix: Option<&str>) -> String {
        let tail = self.components().join("/");
        match prefix {
            Some(p) if !p.is_empty() => format!("{p}/{tail}"),
            _ => tail,
        }
    }

    /// `[prefix/]namespaces/<ns>/runs/<uid>/<name>`.
    pub fn object_key(&self, prefix: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.run_prefix(prefix))
    }

    /// Validates the key and the artifact name together, as every store
    /// operation must before building a path from them.
    pub(crate) fn check(&self, name: Option<&str>) -> Result<(), StoreError> {
        self.validate().map_err(StoreError::InvalidKey)?;
        if let Some(name) = name {
            validate_name(name)
                .map_err(|rule| StoreError::InvalidKey(format!("artifact name {name:?} {rule}")))?;
        }
        Ok(())
    }
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.run_uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let k = RunKey::new("team-a", "0b7c-11");
        assert_eq!(
            k.object_key(None, "out.tar"),
            "namespaces/team-a/runs/0b7c-11/out.tar"
        );
        assert_eq!(
            k.object_key(Some("ci/prod"), "x"),
            "ci/prod/namespaces/team-a/runs/0b7c-11/x"
        );
    }

    #[test]
    fn rejects_traversal_in_key_parts() {
        for (ns, uid) in [
            ("..", "u"),
            ("a/b", "u"),
            ("Default", "u"),
            ("", "u"),
            ("ns", ".."),
            ("ns", "a/b"),
            ("ns", ""),
            ("ns", ".x"),
        ] {
            assert!(RunKey::new(ns, uid).validate().is_err(), "{ns:?} {uid:?}");
        }
        assert!(
            RunKey::new("ns", "u")
                .check(Some("../x"))
                .unwrap_err()
                .to_string()
                .contains("../x")
        );
    }
}
