//! The Run custom resource: one short execution placed on a warm Runtime Pod.
//!
//! The Run object is the durable record of the execution. Its spec is immutable except
//! for the one-way `cancelRequested` and `ttlSecondsAfterFinished`; status is written
//! by the scheduler (assignment) and runtimed (execution, result) through the status
//! subresource.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::CustomResource;
use kube::core::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifact_store::ArtifactStore;
use crate::env::EnvVar;
use crate::resources::{self, ResourceQuantity};
use crate::{limits, schema};

/// Desired state of a Run.
// kube repeats `type_ = ...` in every printcolumn(...) by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kruntimes.io",
    version = "v1alpha1",
    kind = "Run",
    plural = "runs",
    singular = "run",
    namespaced,
    status = "RunStatus",
    shortname = "krun",
    category = "kruntimes",
    derive = "PartialEq",
    doc = "A Run: one execution of a script or task on a warm Runtime Pod.",
    printcolumn(name = "Runtime", type_ = "string", json_path = ".spec.runtime"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Attempt", type_ = "integer", json_path = ".status.attempt"),
    printcolumn(name = "Exit", type_ = "integer", json_path = ".status.exitCode"),
    printcolumn(
        name = "Pod",
        type_ = "string",
        json_path = ".status.podName",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".spec.runtime",
    selectable = ".status.phase",
    selectable = ".status.podName"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.source.git) == (has(self.task) && has(self.task.entrypoint))",
        "message": "task.entrypoint is required with source.git and not allowed with source.inline (the inline script is the entrypoint)",
        "fieldPath": ".task",
    },
    {
        "rule": "self.runtime == oldSelf.runtime",
        "message": "runtime is immutable",
        "fieldPath": ".runtime",
    },
    {
        "rule": "self.source == oldSelf.source",
        "message": "source is immutable",
        "fieldPath": ".source",
    },
    {
        "rule": "has(self.task) == has(oldSelf.task) && (!has(self.task) || self.task == oldSelf.task)",
        "message": "task is immutable",
        "fieldPath": ".task",
    },
    {
        "rule": "has(self.env) == has(oldSelf.env) && (!has(self.env) || self.env == oldSelf.env)",
        "message": "env is immutable",
        "fieldPath": ".env",
    },
    {
        "rule": "self.timeout == oldSelf.timeout",
        "message": "timeout is immutable",
        "fieldPath": ".timeout",
    },
    {
        "rule": "has(self.retry) == has(oldSelf.retry) && (!has(self.retry) || self.retry == oldSelf.retry)",
        "message": "retry is immutable",
        "fieldPath": ".retry",
    },
    {
        "rule": "self.resources == oldSelf.resources",
        "message": "resources is immutable",
        "fieldPath": ".resources",
    },
    {
        "rule": "self.artifacts == oldSelf.artifacts",
        "message": "artifacts is immutable",
        "fieldPath": ".artifacts",
    },
    {
        "rule": "self.cancelRequested || !oldSelf.cancelRequested",
        "message": "cancelRequested cannot be set back to false once true",
        "fieldPath": ".cancelRequested",
    },
]))]
pub struct RunSpec {
    /// Name of the Runtime in the same namespace (label-value syntax).
    #[schemars(length(min = 1, max = limits::MAX_LABEL_LENGTH), regex(pattern = schema::LABEL_VALUE))]
    pub runtime: String,
    /// What to run: an inline script or a pinned git commit.
    pub source: RunSource,
    /// Entrypoint and arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<RunTask>,
    /// Environment variables; names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = env_list)]
    pub env: Vec<EnvVar>,
    /// Limit per attempt, as a Go duration (`30s`, `10m`, `1h30m`), between 1s and 168h.
    #[serde(default = "default_timeout")]
    #[schemars(
        length(min = 2, max = limits::MAX_DURATION_LENGTH),
        extend("default" = "1h"),
        extend("x-kubernetes-validations" = [{
            "rule": "self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('168h')",
            "message": "timeout must be a duration between 1s and 168h such as 30s, 10m or 1h30m",
        }])
    )]
    pub timeout: Duration,
    /// Set to true to cancel; cannot be set back to false.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Retry policy for failed attempts and lost pods; no retry when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Delete the Run this many seconds after it finished (after artifact cleanup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = limits::MAX_TTL_SECONDS))]
    pub ttl_seconds_after_finished: Option<i64>,
    /// Logical resources the Run occupies on its Pod while it runs.
    #[serde(default = "resources::one_run")]
    #[schemars(transform = resources::quantity_list)]
    pub resources: Vec<ResourceQuantity>,
    /// Which artifacts to keep and how many.
    #[serde(default)]
    pub artifacts: ArtifactPolicy,
}

fn default_timeout() -> Duration {
    Duration::from(std::time::Duration::from_secs(3600))
}

fn env_list(schema: &mut schemars::Schema) {
    schema::list_map_by_name(schema, limits::MAX_ENV);
}

/// What a Run executes. Exactly one of `inline` or `git`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.inline) != has(self.git)",
    "message": "exactly one of source.inline or source.git must be set",
}]))]
pub struct RunSource {
    /// A script carried in the Run object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<InlineSource>,
    /// A git repository checked out at a pinned commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitSource>,
}

/// An inline script, written into the workspace and executed by the Runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InlineSource {
    /// Script text, at most 256 KiB of UTF-8.
    #[schemars(
        length(min = 1, max = limits::MAX_INLINE_SCRIPT_BYTES),
        extend("x-kubernetes-validations" = [{
            "rule": format!("size(bytes(self)) <= {}", limits::MAX_INLINE_SCRIPT_BYTES),
            "message": format!("script must be at most {} bytes (256 KiB) of UTF-8", limits::MAX_INLINE_SCRIPT_BYTES),
        }])
    )]
    pub script: String,
    /// File name in the workspace; the Runtime's default (`main.sh`, `main.py`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = limits::MAX_FILENAME_LENGTH),
        regex(pattern = schema::FILENAME),
        extend("x-kubernetes-validations" = [{
            "rule": "self != '.' && self != '..'",
            "message": "filename must not be '.' or '..'",
        }])
    )]
    pub filename: Option<String>,
}

/// A git checkout. Credentials in the URL are rejected; the commit is a full id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// `https://host/path`, `ssh://host/path` or `git@host:path`, without embedded credentials.
    #[schemars(length(min = 1, max = limits::MAX_URL_LENGTH), regex(pattern = schema::GIT_URL))]
    pub url: String,
    /// Full commit id (40 or 64 lower-case hex digits).
    #[schemars(length(min = 40, max = 64), regex(pattern = schema::GIT_COMMIT))]
    pub commit: String,
}

/// How the Runtime starts the process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunTask {
    /// File to execute, relative to the checkout; no `.` or `..` segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = limits::MAX_PATH_LENGTH),
        regex(pattern = schema::RELATIVE_PATH),
        extend("x-kubernetes-validations" = [{
            "rule": schema::NO_DOT_SEGMENTS,
            "message": "entrypoint must be a relative path without '.' or '..' segments",
        }])
    )]
    pub entrypoint: Option<String>,
    /// Arguments passed to the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::MAX_ARGS), inner(length(max = limits::MAX_ARG_LENGTH)))]
    pub args: Vec<String>,
}

/// When and how often a Run is attempted again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.maxBackoffSeconds >= self.backoffSeconds",
    "message": "retry.maxBackoffSeconds must be greater than or equal to retry.backoffSeconds",
    "fieldPath": ".maxBackoffSeconds",
}]))]
pub struct RetryPolicy {
    /// Total attempts including the first.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = limits::MAX_ATTEMPTS))]
    pub max_attempts: i64,
    /// Delay before the second attempt; doubles for each further attempt.
    #[serde(default = "default_backoff_seconds")]
    #[schemars(range(min = 0, max = limits::MAX_BACKOFF_SECONDS))]
    pub backoff_seconds: i64,
    /// Upper bound of the delay.
    #[serde(default = "default_max_backoff_seconds")]
    #[schemars(range(min = 0, max = limits::MAX_BACKOFF_SECONDS))]
    pub max_backoff_seconds: i64,
    /// Which failures are retried.
    #[serde(default = "default_retry_on")]
    #[schemars(length(min = 1, max = 3), extend("x-kubernetes-list-type" = "set"))]
    pub retry_on: Vec<RetryReason>,
}

fn default_max_attempts() -> i64 {
    3
}
fn default_backoff_seconds() -> i64 {
    10
}
fn default_max_backoff_seconds() -> i64 {
    300
}
fn default_retry_on() -> Vec<RetryReason> {
    vec![RetryReason::PodLost]
}

/// A failure that `retry.retryOn` can select.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RetryReason {
    /// The assigned Pod disappeared or its runtimed stopped heart-beating.
    PodLost,
    /// The process exited non-zero.
    Failed,
    /// The attempt exceeded `spec.timeout`.
    Timeout,
}

/// Which artifacts a Run stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactPolicy {
    /// When to collect the artifacts directory.
    #[serde(default)]
    pub collect: ArtifactCollect,
    /// Most artifacts stored; extra files fail the collection with a clear message.
    #[serde(default = "default_max_count")]
    #[schemars(range(min = 0, max = limits::MAX_ARTIFACTS))]
    pub max_count: i64,
    /// Most bytes stored in total.
    #[serde(default = "default_max_total_bytes")]
    #[schemars(range(min = 0, max = limits::MAX_ARTIFACT_TOTAL_BYTES))]
    pub max_total_bytes: i64,
}

impl Default for ArtifactPolicy {
    fn default() -> Self {
        Self {
            collect: ArtifactCollect::default(),
            max_count: default_max_count(),
            max_total_bytes: default_max_total_bytes(),
        }
    }
}

fn default_max_count() -> i64 {
    64
}
fn default_max_total_bytes() -> i64 {
    1 << 30
}

/// When artifacts are collected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ArtifactCollect {
    /// After every attempt that ran.
    #[default]
    Always,
    /// Only when the Run succeeded.
    OnSuccess,
    /// Only when the Run failed or timed out.
    OnFailure,
    /// Never.
    Never,
}

/// Observed state of a Run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunStatus {
    /// Lifecycle phase; absent means Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RunPhase>,
    /// Pod the current attempt is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::MAX_NAME_LENGTH))]
    pub pod_name: Option<String>,
    /// UID of that Pod, so a replacement with the same name is not mistaken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub pod_uid: Option<String>,
    /// Current attempt, starting at 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = limits::MAX_ATTEMPTS))]
    pub attempt: Option<i64>,
    /// Exit code of the finished process (128+n when killed by signal n).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 255))]
    pub exit_code: Option<i64>,
    /// Machine-readable reason of the current phase (CamelCase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = schema::REASON))]
    pub reason: Option<String>,
    /// Human-readable explanation, truncated by the writer to the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_MESSAGE_LENGTH))]
    pub message: Option<String>,
    /// `KEY=VALUE` results the Run wrote to its outputs file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = schema::outputs_map)]
    pub outputs: BTreeMap<String, String>,
    /// Stored artifacts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = artifact_list)]
    pub artifacts: Vec<ArtifactRef>,
    /// Snapshot of the Runtime's artifact store when artifacts were stored; cleanup uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_store: Option<ArtifactStore>,
    /// Log spool accounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogStatus>,
    /// `Scheduled`, `Running` and `Completed` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = schema::conditions_list)]
    pub conditions: Vec<Condition>,
    /// Creation time at millisecond resolution: the `kruntimes.io/created-at` annotation
    /// when the creator set it, else when the scheduler first saw the Run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<MicroTime>,
    /// When the scheduler assigned the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<MicroTime>,
    /// When the current attempt's process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<MicroTime>,
    /// When the Run reached its terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<MicroTime>,
    /// Earliest time the next attempt may be scheduled (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<MicroTime>,
    /// Earlier attempts, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::MAX_ATTEMPT_HISTORY))]
    pub previous_attempts: Vec<AttemptRecord>,
}

fn artifact_list(schema: &mut schemars::Schema) {
    schema::list_map_by_name(schema, limits::MAX_ARTIFACTS as u64);
}

/// Run lifecycle: `Pending → Scheduled → Running → Succeeded | Failed | Timeout | Cancelled`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RunPhase {
    /// Waiting for a Pod with free capacity.
    #[default]
    Pending,
    /// Assigned to a Pod; runtimed has not started it yet.
    Scheduled,
    /// The process runs.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, could not start, or the Pod was lost with no attempt left.
    Failed,
    /// Exceeded `spec.timeout` with no attempt left.
    Timeout,
    /// Stopped because `spec.cancelRequested` was set.
    Cancelled,
}

impl RunPhase {
    /// Terminal phases never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Timeout | Self::Cancelled
        )
    }

    /// The name as it appears in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Scheduled => "Scheduled",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Timeout => "Timeout",
            Self::Cancelled => "Cancelled",
        }
    }
}

impl std::fmt::Display for RunPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a stored artifact lives and what it contains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRef {
    /// Path relative to the artifacts directory; directories are stored as `<name>.tar`.
    #[schemars(length(min = 1, max = limits::MAX_PATH_LENGTH), regex(pattern = schema::RELATIVE_PATH))]
    pub name: String,
    /// Store driver that holds it.
    pub driver: ArtifactDriver,
    /// Driver-specific location (file path in the volume, or `s3://bucket/key`).
    #[schemars(length(min = 1, max = limits::MAX_URL_LENGTH))]
    pub location: String,
    /// Size in bytes.
    #[schemars(range(min = 0))]
    pub size: i64,
    /// `sha256:<hex>` of the stored bytes.
    #[schemars(length(equal = 71), regex(pattern = schema::SHA256_DIGEST))]
    pub digest: String,
    /// MIME type, `application/x-tar` for directories.
    #[schemars(length(min = 1, max = 255))]
    pub content_type: String,
}

/// Artifact store driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactDriver {
    /// PVC-backed filesystem store.
    Filesystem,
    /// S3-compatible bucket.
    S3,
}

/// Log spool accounting of the current attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogStatus {
    /// Bytes kept in the spool.
    #[schemars(range(min = 0))]
    pub bytes: i64,
    /// True when the size cap cut the log; the spool holds an in-band marker at the cut.
    #[serde(default)]
    pub truncated: bool,
}

/// Summary of an attempt that did not end the Run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// Attempt number, starting at 1.
    #[schemars(range(min = 1, max = limits::MAX_ATTEMPTS))]
    pub attempt: i64,
    /// Pod it ran on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::MAX_NAME_LENGTH))]
    pub pod_name: Option<String>,
    /// Phase the attempt ended in.
    pub phase: RunPhase,
    /// Why it ended (`PodLost`, `Failed`, `Timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = schema::REASON))]
    pub reason: Option<String>,
    /// Exit code when the process ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 255))]
    pub exit_code: Option<i64>,
    /// Short explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
    /// When the attempt's process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<MicroTime>,
    /// When the attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<MicroTime>,
}
