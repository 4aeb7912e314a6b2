//! Every size and count bound of the API, in one place.
//!
//! The CRD schema enforces these (OpenAPI bounds and CEL rules), and the components
//! that produce the values (runtimed, scheduler, controller) use the same constants so
//! a write never exceeds what the API server accepts.

/// Object names (DNS-1123 subdomain).
pub const MAX_NAME_LENGTH: u64 = 253;
/// Label values and DNS-1123 labels.
pub const MAX_LABEL_LENGTH: u64 = 63;
/// Runtime names: DNS-1123 label, also used as a label value.
pub const MAX_RUNTIME_NAME_LENGTH: u64 = 63;
/// Workflow names: room for `-<step>` in the Run name (253 - 1 - 63).
pub const MAX_WORKFLOW_NAME_LENGTH: u64 = 189;

/// Inline script size in UTF-8 bytes (256 KiB).
pub const MAX_INLINE_SCRIPT_BYTES: u64 = 262_144;
/// A single path component (file names).
pub const MAX_FILENAME_LENGTH: u64 = 255;
/// A relative path (entrypoints, sub paths, prefixes).
pub const MAX_PATH_LENGTH: u64 = 1024;
/// Git repository URL.
pub const MAX_URL_LENGTH: u64 = 2048;
/// Number of task arguments.
pub const MAX_ARGS: u64 = 256;
/// Length of one task argument.
pub const MAX_ARG_LENGTH: u64 = 4096;
/// Number of environment variables of a Run.
pub const MAX_ENV: u64 = 128;
/// Length of an environment variable name.
pub const MAX_ENV_NAME_LENGTH: u64 = 256;
/// Length of an environment variable value.
pub const MAX_ENV_VALUE_LENGTH: u64 = 32_768;
/// Length of a duration string such as `1h30m`.
pub const MAX_DURATION_LENGTH: u64 = 32;
/// Attempts of a Run (first attempt included).
pub const MAX_ATTEMPTS: i64 = 10;
/// Retry backoff bound in seconds.
pub const MAX_BACKOFF_SECONDS: i64 = 3600;
/// `ttlSecondsAfterFinished` bound (one year).
pub const MAX_TTL_SECONDS: i64 = 31_536_000;
/// Distinct logical resource names in a request or a capacity.
pub const MAX_RESOURCE_NAMES: u64 = 16;
/// Largest logical resource quantity.
pub const MAX_RESOURCE_QUANTITY: i64 = 1_000_000;
/// Artifacts a Run may store.
pub const MAX_ARTIFACTS: i64 = 256;
/// Total artifact bytes a Run may store (64 GiB).
pub const MAX_ARTIFACT_TOTAL_BYTES: i64 = 68_719_476_736;
/// Status message length.
pub const MAX_MESSAGE_LENGTH: u64 = 4096;
/// Outputs of one Run.
pub const MAX_OUTPUTS: u64 = 64;
/// Output key length.
pub const MAX_OUTPUT_KEY_LENGTH: u64 = 128;
/// Output value length.
pub const MAX_OUTPUT_VALUE_LENGTH: u64 = 4096;
/// Total size of all outputs of a Run in bytes (keys + values), enforced by runtimed.
pub const MAX_OUTPUTS_TOTAL_BYTES: u64 = 65_536;
/// Conditions on one object.
pub const MAX_CONDITIONS: u64 = 8;
/// Previous attempts kept in a Run's status.
pub const MAX_ATTEMPT_HISTORY: u64 = 10;
/// Secrets or ConfigMaps a Runtime may allow for Run env references.
pub const MAX_ALLOWED_REFS: u64 = 64;
/// Runtime replicas.
pub const MAX_REPLICAS: i64 = 1000;
/// Containers (and init containers) in a Runtime pod template.
pub const MAX_CONTAINERS: u64 = 16;
/// Steps of a Workflow.
pub const MAX_STEPS: u64 = 32;
/// Dependencies of one Workflow step.
pub const MAX_DEPENDS_ON: u64 = 16;
/// Parameters of one Workflow step.
pub const MAX_STEP_PARAMETERS: u64 = 16;
/// S3 bucket name length (S3 naming rules).
pub const MAX_BUCKET_LENGTH: u64 = 63;
/// S3 region length.
pub const MAX_REGION_LENGTH: u64 = 64;
/// Secret / ConfigMap data key length.
pub const MAX_KEY_LENGTH: u64 = 253;
