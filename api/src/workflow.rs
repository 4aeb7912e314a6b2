//! The Workflow custom resource: a DAG of steps, each creating one Run.
//!
//! Steps are listed in dependency order: a step may only depend on steps above it,
//! which makes every Workflow acyclic by construction and lets the API server reject
//! a bad graph with a precise message. A step's parameters become env variables of
//! its Run, taken from the outputs of steps it depends on.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::run::RunSpec;
use crate::{limits, schema};

/// Desired state of a Workflow.
// kube repeats `type_ = ...` in every printcolumn(...) by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kruntimes.io",
    version = "v1alpha1",
    kind = "Workflow",
    plural = "workflows",
    singular = "workflow",
    namespaced,
    status = "WorkflowStatus",
    shortname = "kwf",
    category = "kruntimes",
    derive = "PartialEq",
    doc = "A Workflow: a DAG of Run templates connected by dependsOn and output parameters.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    selectable = ".status.phase"
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.steps.all(i, s, s.dependsOn.all(d, self.steps.exists(j, t, j < i && t.name == d)))",
        "message": "every steps[].dependsOn entry must name a step listed before it (steps are in dependency order, which rules out cycles)",
        "fieldPath": ".steps",
    },
    {
        "rule": "self.steps == oldSelf.steps",
        "message": "steps are immutable",
        "fieldPath": ".steps",
    },
    {
        "rule": "self.cancelRequested || !oldSelf.cancelRequested",
        "message": "cancelRequested cannot be set back to false once true",
        "fieldPath": ".cancelRequested",
    },
]))]
pub struct WorkflowSpec {
    /// Steps in dependency order; names are unique.
    #[schemars(transform = steps_list)]
    pub steps: Vec<WorkflowStep>,
    /// Set to true to cancel every unfinished step; cannot be set back to false.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Delete the Workflow (and its Runs) this many seconds after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = limits::MAX_TTL_SECONDS))]
    pub ttl_seconds_after_finished: Option<i64>,
}

fn steps_list(schema: &mut schemars::Schema) {
    schema::list_map_by_name(schema, limits::MAX_STEPS);
    schema.insert("minItems".into(), serde_json::json!(1));
}

/// One step: a Run template and the steps it waits for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(self.name in self.dependsOn)",
        "message": "a step cannot depend on itself",
        "fieldPath": ".dependsOn",
    },
    {
        "rule": "self.parameters.all(p, p.fromStep in self.dependsOn)",
        "message": "parameters[].fromStep must be listed in dependsOn",
        "fieldPath": ".parameters",
    },
    {
        "rule": "!has(self.run.env) || self.parameters.all(p, !self.run.env.exists(e, e.name == p.name))",
        "message": "parameters[].name must not repeat a name of run.env",
        "fieldPath": ".parameters",
    },
    {
        "rule": "!self.run.cancelRequested",
        "message": "run.cancelRequested is not allowed in a step; set the Workflow's spec.cancelRequested",
        "fieldPath": ".run.cancelRequested",
    },
]))]
pub struct WorkflowStep {
    /// Step name (DNS-1123 label); the Run is named `<workflow>-<step>`.
    #[schemars(length(min = 1, max = limits::MAX_LABEL_LENGTH), regex(pattern = schema::DNS_LABEL))]
    pub name: String,
    /// Steps that must succeed before this one starts.
    #[serde(default)]
    #[schemars(
        length(max = limits::MAX_DEPENDS_ON),
        inner(length(min = 1, max = limits::MAX_LABEL_LENGTH), regex(pattern = schema::DNS_LABEL)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub depends_on: Vec<String>,
    /// Env variables of this step's Run taken from outputs of earlier steps.
    #[serde(default)]
    #[schemars(transform = parameters_list)]
    pub parameters: Vec<StepParameter>,
    /// The Run to create.
    pub run: RunSpec,
}

fn parameters_list(schema: &mut schemars::Schema) {
    schema::list_map_by_name(schema, limits::MAX_STEP_PARAMETERS);
}

/// Passes an output of an earlier step as an env variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!self.name.startsWith('KRUNTIMES_')",
    "message": "parameter names starting with KRUNTIMES_ are reserved for runtimed",
    "fieldPath": ".name",
}]))]
pub struct StepParameter {
    /// Env variable name in this step's Run.
    #[schemars(length(min = 1, max = limits::MAX_ENV_NAME_LENGTH), regex(pattern = schema::IDENTIFIER))]
    pub name: String,
    /// Step whose output is used; must be listed in `dependsOn`.
    #[schemars(length(min = 1, max = limits::MAX_LABEL_LENGTH), regex(pattern = schema::DNS_LABEL))]
    pub from_step: String,
    /// Output key of that step.
    #[schemars(length(min = 1, max = limits::MAX_OUTPUT_KEY_LENGTH), regex(pattern = schema::IDENTIFIER))]
    pub output: String,
}

/// Observed state of a Workflow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowStatus {
    /// Overall phase; absent means Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WorkflowPhase>,
    /// Per-step state, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = step_status_list)]
    pub steps: Vec<StepStatus>,
    /// Human-readable explanation of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_MESSAGE_LENGTH))]
    pub message: Option<String>,
    /// Generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// `Completed` condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = schema::conditions_list)]
    pub conditions: Vec<Condition>,
    /// When the first step's Run was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<MicroTime>,
    /// When the Workflow reached its terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<MicroTime>,
}

fn step_status_list(schema: &mut schemars::Schema) {
    schema::list_map_by_name(schema, limits::MAX_STEPS);
}

/// Workflow lifecycle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WorkflowPhase {
    /// No step started yet.
    #[default]
    Pending,
    /// At least one step's Run exists and the Workflow is not finished.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed or timed out; steps depending on it were skipped.
    Failed,
    /// `spec.cancelRequested` was honoured.
    Cancelled,
}

/// State of one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// Step name.
    #[schemars(length(min = 1, max = limits::MAX_LABEL_LENGTH))]
    pub name: String,
    /// Step phase.
    pub phase: StepPhase,
    /// Name of the Run created for the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::MAX_NAME_LENGTH))]
    pub run_name: Option<String>,
    /// Outputs copied from the Run when it succeeded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = schema::outputs_map)]
    pub outputs: BTreeMap<String, String>,
    /// Short explanation (why skipped, why failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

/// Step lifecycle: the Run phases plus `Waiting` and `Skipped`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum StepPhase {
    /// Dependencies have not all succeeded yet.
    #[default]
    Waiting,
    /// The Run exists and is Pending.
    Pending,
    /// The Run is Scheduled.
    Scheduled,
    /// The Run is Running.
    Running,
    /// The Run succeeded.
    Succeeded,
    /// The Run failed.
    Failed,
    /// The Run timed out.
    Timeout,
    /// The Run or the Workflow was cancelled.
    Cancelled,
    /// A dependency did not succeed; no Run was created.
    Skipped,
}
