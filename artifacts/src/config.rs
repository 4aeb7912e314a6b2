//! Which store a Runtime uses, as one string that is also the snapshot kept in
//! `Run.status.artifactStore`:
//!
//! - `fs:/abs/path` — a filesystem root (e.g. a PVC mount);
//! - `s3://bucket[/prefix]?region=R&endpoint=http://127.0.0.1:7070&path_style=true&allow_http=true`
//!   — an S3-compatible bucket; every query parameter is optional. Credentials
//!   are never part of it: they come from the environment.
//!
//! `Display` gives the canonical form, which `parse` reads back.

use crate::error::ConfigError;
use crate::fs_store::FilesystemStore;
use crate::s3_store::S3Store;
use crate::store::ArtifactStore;
use std::fmt;
use std::path::{Component, PathBuf};
use std::sync::Arc;

/// Longest accepted configuration string.
const MAX_CONFIG_BYTES: usize = 4096;
/// Longest key prefix.
const MAX_PREFIX_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Filesystem {
        root: PathBuf,
    },
    S3 {
        bucket: String,
        prefix: Option<String>,
        region: Option<String>,
        endpoint: Option<String>,
        /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`.
        path_style: bool,
        /// Allow a plain-http endpoint.
        allow_http: bool,
    },
}

/// Static S3 credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where an S3 store's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`,
    /// web identity (`AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`) or
    /// instance metadata, as the AWS SDKs do.
    #[default]
    FromEnv,
    Static(S3Credentials),
}

impl StoreConfig {
    /// Parses `fs:/path` or `s3://bucket/prefix?...`; errors name the field,
    /// the value and the rule.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let invalid = |field: &'static str, value: &str, rule: &str| ConfigError::Invalid {
            input: s.to_string(),
            field,
            value: value.to_string(),
            rule: rule.to_string(),
        };
        if s.len() > MAX_CONFIG_BYTES {
            return Err(invalid(
                "length",
                &s.len().to_string(),
                &format!("the limit is {MAX_CONFIG_BYTES} bytes"),
            ));
        }
        if let Some(root) = s.strip_prefix("fs:") {
            return parse_fs(root).map_err(|(f, v, r)| invalid(f, &v, &r));
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            return parse_s3(rest).map_err(|(f, v, r)| invalid(f, &v, &r));
        }
        Err(invalid(
            "scheme",
            s.split(':').next().unwrap_or(s),
            "must be fs:/path or s3://bucket[/prefix][?region=..&endpoint=..&path_style=..&allow_http=..]",
        ))
    }

    /// `"filesystem"` or `"s3"`.
    pub fn driver(&self) -> &'static str {
        match self {
            Self::Filesystem { .. } => "filesystem",
            Self::S3 { .. } => "s3",
        }
    }

    /// The store, with S3 credentials from the environment. Does no I/O.
    pub fn open(&self) -> Result<Arc<dyn ArtifactStore>, ConfigError> {
        self.open_with(Credentials::FromEnv)
    }

    /// The store with the given S3 credentials (ignored for the filesystem).
    pub fn open_with(
        &self,
        credentials: Credentials,
    ) -> Result<Arc<dyn ArtifactStore>, ConfigError> {
        match self {
            Self::Filesystem { root } => Ok(Arc::new(FilesystemStore::new(root.clone()))),
            Self::S3 { .. } => Ok(Arc::new(S3Store::connect(self, credentials)?)),
        }
    }
}

type FieldError = (&'static str, String, String);

fn parse_fs(root: &str) -> Result<StoreConfig, FieldError> {
    let bad = |rule: &str| ("root", root.to_string(), rule.to_string());
    let path = PathBuf::from(root);
    if !path.is_absolute() {
        return Err(bad("must be an absolute path (fs:/path)"));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(bad("must not contain \".\" or \"..\" components"));
    }
    if root.chars().any(|c| c.is_control()) {
        return Err(bad("must not contain control characters"));
    }
    Ok(StoreConfig::Filesystem { root: path })
}

fn parse_bool(field: &'static str, v: &str) -> Result<bool, FieldError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err((field, v.to_string(), "must be true or false".into())),
    }
}

fn parse_s3(rest: &str) -> Result<StoreConfig, FieldError> {
    let (location, query) = match rest.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (rest, None),
    };
    let (bucket, prefix) = match location.split_once('/') {
        Some((b, p)) => (b, p.trim_end_matches('/')),
        None => (location, ""),
    };
    validate_bucket(bucket)?;
    let prefix = if prefix.is_empty() {
        None
    } else {
        validate_prefix(prefix)?;
        Some(prefix.to_string())
    };

    let (mut region, mut endpoint, mut path_style, mut allow_http) = (None, None, None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            (
                "parameter",
                pair.to_string(),
                "must be key=value".to_string(),
            )
        })?;
        let dup = |k: &'static str| (k, v.to_string(), "is given twice".to_string());
        match k {
            "region" => {
                validate_region(v)?;
                if region.replace(v.to_string()).is_some() {
                    return Err(dup("region"));
                }
            }
            "endpoint" => {
                validate_endpoint(v)?;
                if endpoint
                    .replace(v.trim_end_matches('/').to_string())
                    .is_some()
                {
                    return Err(dup("endpoint"));
                }
            }
            "path_style" => {
                if path_style.replace(parse_bool("path_style", v)?).is_some() {
                    return Err(dup("path_style"));
                }
            }
            "allow_http" => {
                if allow_http.replace(parse_bool("allow_http", v)?).is_some() {
                    return Err(dup("allow_http"));
                }
            }
            other => {
                return Err((
                    "parameter",
                    other.to_string(),
                    "is unknown; use region, endpoint, path_style or allow_http".into(),
                ));
            }
        }
    }
    let http = endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let allow_http = match allow_http {
        Some(false) if http => {
            return Err((
                "allow_http",
                "false".into(),
                "contradicts the http:// endpoint; use https or allow_http=true".into(),
            ));
        }
        Some(v) => v,
        None => http,
    };
    Ok(StoreConfig::S3 {
        bucket: bucket.to_string(),
        prefix,
        region,
        endpoint,
        path_style: path_style.unwrap_or(false),
        allow_http,
    })
}

/// S3 bucket naming rules: 3-63 of a-z, 0-9, '.', '-', alphanumeric at both ends.
fn validate_bucket(b: &str) -> Result<(), FieldError> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err((
            "bucket",
            b.to_string(),
            "must be 3-63 of a-z, 0-9, '.', '-', starting and ending alphanumeric".into(),
        ))
    }
}

fn validate_prefix(p: &str) -> Result<(), FieldError> {
    let bad = |rule: String| ("prefix", p.to_string(), rule);
    if p.len() > MAX_PREFIX_BYTES {
        return Err(bad(format!(
            "is {} bytes; the limit is {MAX_PREFIX_BYTES} bytes",
            p.len()
        )));
    }
    for seg in p.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(bad(format!(
                "segment {seg:?} is not allowed (no empty, \".\" or \"..\" segments)"
            )));
        }
        if seg.chars().any(|c| c.is_control()) {
            return Err(bad("must not contain control characters".into()));
        }
    }
    Ok(())
}

fn validate_region(r: &str) -> Result<(), FieldError> {
    let ok = !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    if ok {
        Ok(())
    } else {
        Err((
            "region",
            r.to_string(),
            "must be 1-64 of a-z, 0-9, '-'".into(),
        ))
    }
}

fn validate_endpoint(e: &str) -> Result<(), FieldError> {
    let bad = |rule: &str| ("endpoint", e.to_string(), rule.to_string());
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("must name a host"));
    }
    if e.len() > 2048 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "must be at most 2048 bytes without spaces or control characters",
        ));
    }
    Ok(())
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Filesystem { root } => write!(f, "fs:{}", root.display()),
            Self::S3 {
                bucket,
                prefix,
                region,
                endpoint,
                path_style,
                allow_http,
            } => {
                write!(f, "s3://{bucket}")?;
                if let Some(p) = prefix {
                    write!(f, "/{p}")?;
                }
                let mut params = Vec::new();
                if let Some(r) = region {
                    params.push(format!("region={r}"));
                }
                if let Some(e) = endpoint {
                    params.push(format!("endpoint={e}"));
                }
                if *path_style {
                    params.push("path_style=true".into());
                }
                if *allow_http {
                    params.push("allow_http=true".into());
                }
                if !params.is_empty() {
                    write!(f, "?{}", params.join("&"))?;
                }
                Ok(())
            }
        }
    }
}

impl std::str::FromStr for StoreConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let c = StoreConfig::parse(
            "s3://my-bucket/ci/prod?region=eu-west-1&endpoint=http://127.0.0.1:7070&path_style=true",
        )
        .unwrap();
        assert_eq!(
            c,
            StoreConfig::S3 {
                bucket: "my-bucket".into(),
                prefix: Some("ci/prod".into()),
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:7070".into()),
                path_style: true,
                allow_http: true,
            }
        );
        assert_eq!(StoreConfig::parse(&c.to_string()).unwrap(), c);
        for s in ["s3://bucket", "s3://bucket/p", "fs:/var/lib/artifacts"] {
            let c = StoreConfig::parse(s).unwrap();
            assert_eq!(c.to_string(), s);
        }
        assert_eq!(
            StoreConfig::parse("s3://abc/").unwrap().to_string(),
            "s3://abc"
        );
        assert_eq!(StoreConfig::parse("fs:/x").unwrap().driver(), "filesystem");
    }

    #[test]
    fn errors_name_field_value_and_rule() {
        let cases = [
            ("ftp://x", "scheme"),
            ("fs:relative/path", "absolute"),
            ("fs:/a/../b", "\"..\""),
            ("s3://UPPER", "bucket"),
            ("s3://ab", "bucket"),
            ("s3://bucket/a//b", "segment"),
            ("s3://bucket/../b", "segment"),
            ("s3://bucket?region=EU", "region"),
            ("s3://bucket?endpoint=127.0.0.1:7070", "http://"),
            ("s3://bucket?path_style=yes", "true or false"),
            ("s3://bucket?colour=blue", "unknown"),
            ("s3://bucket?region=a&region=b", "twice"),
            (
                "s3://bucket?endpoint=http://h&allow_http=false",
                "contradicts",
            ),
        ];
        for (input, want) in cases {
            let err = StoreConfig::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
            assert!(err.contains(input), "{input}: {err}");
        }
        let long = format!("fs:/{}", "a".repeat(5000));
        assert!(
            StoreConfig::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("4096")
        );
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let c = S3Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "supersecret".into(),
            session_token: None,
        };
        let s = format!("{c:?}");
        assert!(s.contains("AKID") && !s.contains("supersecret"), "{s}");
    }
}
