//! The Runtime custom resource: a pool of warm Runtime Pods of one kind (bash, python,
//! or a custom Runtime Server image).
//!
//! The controller renders it into a ServiceAccount, RBAC, and the Deployment
//! `runtime-<name>` with runtimed injected next to the `runtime` container.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifact_store::ArtifactStore;
use crate::resources::{self, ResourceQuantity};
use crate::{limits, schema};

/// Desired state of a Runtime.
// kube repeats `type_ = ...` in every printcolumn(...) by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kruntimes.io",
    version = "v1alpha1",
    kind = "Runtime",
    plural = "runtimes",
    singular = "runtime",
    namespaced,
    status = "RuntimeStatus",
    shortname = "krtm",
    category = "kruntimes",
    derive = "PartialEq",
    doc = "A Runtime: a pool of warm Runtime Pods that execute Runs.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Pod template of the Runtime Pods. It must contain the Runtime Server container
    /// named `runtime`; runtimed is injected by the controller.
    #[schemars(transform = schema::pod_template)]
    pub template: PodTemplateSpec,
    /// How runtimed reaches the Runtime Server inside the Pod.
    #[serde(default)]
    pub server: RuntimeServerEndpoint,
    /// Number of warm Pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = limits::MAX_REPLICAS))]
    pub replicas: i32,
    /// Logical resources each Pod offers; a Pod takes Runs while their requests fit.
    #[serde(default = "resources::one_run")]
    #[schemars(transform = resources::quantity_list)]
    pub capacity: Vec<ResourceQuantity>,
    /// Where artifacts of Runs are stored; artifacts are not kept when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_store: Option<ArtifactStore>,
    /// The per-Pod workspace volume in which Runs execute.
    #[serde(default)]
    pub workspace: WorkspaceVolume,
    /// Secrets whose keys Runs may reference with `env[].secretKeyRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = allowed_names)]
    pub allowed_secrets: Vec<String>,
    /// ConfigMaps whose keys Runs may reference with `env[].configMapKeyRef`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = allowed_names)]
    pub allowed_config_maps: Vec<String>,
}

fn default_replicas() -> i32 {
    1
}

fn allowed_names(schema: &mut schemars::Schema) {
    schema.insert("x-kubernetes-list-type".into(), serde_json::json!("set"));
    schema.insert(
        "maxItems".into(),
        serde_json::json!(limits::MAX_ALLOWED_REFS),
    );
    schema.insert(
        "items".into(),
        serde_json::json!({
            "type": "string",
            "minLength": 1,
            "maxLength": limits::MAX_NAME_LENGTH,
            "pattern": schema::DNS_SUBDOMAIN,
        }),
    );
}

/// The Runtime Server endpoint: a Unix socket in the shared socket volume, or a
/// localhost port. Exactly one of `socketPath` or `port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.socketPath) != has(self.port)",
    "message": "exactly one of server.socketPath or server.port must be set",
}]))]
pub struct RuntimeServerEndpoint {
    /// Socket path under `/run/kruntimes/` (the volume shared by both containers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 108),
        regex(pattern = schema::SOCKET_PATH),
        extend("x-kubernetes-validations" = [{
            "rule": "!self.endsWith('/.') && !self.endsWith('/..')",
            "message": "socketPath must name a file, not '.' or '..'",
        }])
    )]
    pub socket_path: Option<String>,
    /// TCP port on 127.0.0.1 inside the Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// Default Runtime Server socket, the one the built-in servers listen on.
pub const DEFAULT_SOCKET_PATH: &str = "/run/kruntimes/runtime.sock";

impl Default for RuntimeServerEndpoint {
    fn default() -> Self {
        Self {
            socket_path: Some(DEFAULT_SOCKET_PATH.into()),
            port: None,
        }
    }
}

/// The workspace: an emptyDir per Pod that holds each Run's files and artifacts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceVolume {
    /// Size limit of the emptyDir (`10Gi`), at most 1Ti; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = schema::SIZE_QUANTITY),
        extend("x-kubernetes-validations" = [{
            "rule": "!quantity(self).isGreaterThan(quantity('1Ti'))",
            "message": "workspace.sizeLimit must be at most 1Ti",
        }])
    )]
    pub size_limit: Option<String>,
    /// Storage medium of the emptyDir.
    #[serde(default)]
    pub medium: WorkspaceMedium,
}

/// Backing medium of the workspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkspaceMedium {
    /// The node's disk.
    #[default]
    Disk,
    /// tmpfs; counts against the Pod's memory.
    Memory,
}

/// Observed state of a Runtime.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStatus {
    /// Pods of the generated Deployment.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Pods that are Ready (including the RuntimedReady gate).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub ready_replicas: i32,
    /// Label selector of the Pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub selector: Option<String>,
    /// Generation the controller last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Reconciled` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = schema::conditions_list)]
    pub conditions: Vec<Condition>,
}
