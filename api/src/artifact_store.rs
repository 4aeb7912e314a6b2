//! Artifact store configuration: a filesystem store on a PVC or an S3-compatible bucket.
//!
//! The same type is the Runtime's `spec.artifactStore` and the Run's
//! `status.artifactStore` snapshot, so cleanup after the Runtime changed or was deleted
//! still knows where a Run's artifacts live.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{limits, schema};

/// Where a Runtime stores the artifacts of its Runs. Exactly one of `filesystem` or `s3`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.filesystem) != has(self.s3)",
    "message": "exactly one of artifactStore.filesystem or artifactStore.s3 must be set",
}]))]
pub struct ArtifactStore {
    /// Store on a PersistentVolumeClaim mounted into every Runtime Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<FilesystemStore>,
    /// Store in an S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Store>,
}

/// A PVC-backed store. Objects live under `<subPath>/namespaces/<ns>/runs/<uid>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesystemStore {
    /// PersistentVolumeClaim in the Runtime's namespace (ReadWriteMany when replicas > 1).
    #[schemars(length(min = 1, max = limits::MAX_NAME_LENGTH), regex(pattern = schema::DNS_SUBDOMAIN))]
    pub claim_name: String,
    /// Relative directory inside the volume; no `.` or `..` segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = limits::MAX_PATH_LENGTH),
        regex(pattern = schema::RELATIVE_PATH),
        extend("x-kubernetes-validations" = [{
            "rule": schema::NO_DOT_SEGMENTS,
            "message": "subPath must not contain '.' or '..' segments",
        }])
    )]
    pub sub_path: Option<String>,
}

/// An S3-compatible bucket. Objects live under `<prefix>/namespaces/<ns>/runs/<uid>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Store {
    /// Bucket name (S3 naming rules).
    #[schemars(length(min = 3, max = limits::MAX_BUCKET_LENGTH), regex(pattern = schema::S3_BUCKET))]
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; no `.` or `..` segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = limits::MAX_PATH_LENGTH),
        regex(pattern = schema::RELATIVE_PATH),
        extend("x-kubernetes-validations" = [{
            "rule": schema::NO_DOT_SEGMENTS,
            "message": "prefix must not contain '.' or '..' segments",
        }])
    )]
    pub prefix: Option<String>,
    /// Region used for request signing.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = limits::MAX_REGION_LENGTH), regex(pattern = schema::S3_REGION))]
    pub region: String,
    /// Endpoint URL for non-AWS servers (`https://minio.example:9000`); AWS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::MAX_URL_LENGTH), regex(pattern = schema::HTTP_URL))]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most self-hosted servers.
    #[serde(default)]
    pub path_style: bool,
    /// Secret with the access keys; when unset runtimed uses the ambient AWS credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<S3CredentialsSecret>,
}

/// Keys of an S3 credentials Secret in the Runtime's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsSecret {
    /// Secret name.
    #[schemars(length(min = 1, max = limits::MAX_NAME_LENGTH), regex(pattern = schema::DNS_SUBDOMAIN))]
    pub name: String,
    /// Key holding the access key id.
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(min = 1, max = limits::MAX_KEY_LENGTH), regex(pattern = schema::DATA_KEY))]
    pub access_key_id_key: String,
    /// Key holding the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(min = 1, max = limits::MAX_KEY_LENGTH), regex(pattern = schema::DATA_KEY))]
    pub secret_access_key_key: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}
