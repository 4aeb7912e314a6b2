//! Well-known names shared by every component: API group, labels, annotation keys,
//! condition types, reasons, finalizers, container and object names.
//!
//! Components must use these constants instead of string literals so that a rename
//! happens in one place and the charts, docs and code cannot disagree.

/// API group of every kruntimes custom resource.
pub const GROUP: &str = "kruntimes.io";
/// The only served and stored API version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every kruntimes custom resource.
pub const API_VERSION: &str = "kruntimes.io/v1alpha1";
/// The namespace the platform chart installs into.
pub const SYSTEM_NAMESPACE: &str = "kruntimes-system";

/// Label keys.
pub mod labels {
    /// On Runtime Pods: the name of the Runtime they serve (`kubectl get pods -A -l runtime`).
    pub const RUNTIME: &str = "runtime";
    /// On Runs: the Runtime the Run asked for (mirrors `spec.runtime` so it can be selected).
    pub const RUN_RUNTIME: &str = "kruntimes.io/runtime";
    /// On Runs: the name of the Pod the Run was assigned to; runtimed watches its own Runs by it.
    pub const ASSIGNED_POD: &str = "kruntimes.io/pod";
    /// On Runs created by a Workflow: the Workflow name.
    pub const WORKFLOW: &str = "kruntimes.io/workflow";
    /// On Runs created by a Workflow: the step name.
    pub const WORKFLOW_STEP: &str = "kruntimes.io/workflow-step";
    /// Standard component label (`scheduler`, `controller`, `runtime`, `runtime-maintainer`).
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// Standard name label.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// Standard instance label.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// Standard part-of label; always [`PART_OF_VALUE`].
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    /// Standard managed-by label.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

    /// Value of [`PART_OF`] on everything kruntimes creates.
    pub const PART_OF_VALUE: &str = "kruntimes";
    /// Value of [`MANAGED_BY`] on objects the controller creates.
    pub const MANAGED_BY_CONTROLLER: &str = "kruntimes-controller";

    /// Values of [`COMPONENT`].
    pub mod component {
        /// The scheduler Deployment and its Pods.
        pub const SCHEDULER: &str = "scheduler";
        /// The controller Deployment and its Pods.
        pub const CONTROLLER: &str = "controller";
        /// Runtime Pods (runtimed + Runtime Server).
        pub const RUNTIME: &str = "runtime";
        /// Runtime maintainer Deployments (artifact cleanup of deleted Runs).
        pub const RUNTIME_MAINTAINER: &str = "runtime-maintainer";
    }
}

/// Annotation keys.
pub mod annotations {
    /// On Runtime Pods: the pod's capacity in logical resources, JSON object (`{"runs":4}`).
    pub const CAPACITY: &str = "kruntimes.io/capacity";
    /// On Runtime Pods: the Runtime generation the pod template was rendered from.
    pub const RUNTIME_GENERATION: &str = "kruntimes.io/runtime-generation";
    /// On Runs: creation time at millisecond resolution (RFC 3339), set by the creator
    /// (krt does) because `metadata.creationTimestamp` has only second resolution;
    /// the scheduler copies it into `status.createdAt`.
    pub const CREATED_AT: &str = "kruntimes.io/created-at";
}

/// Condition types.
pub mod conditions {
    /// Pod readiness gate set by runtimed on its own Pod.
    pub const RUNTIMED_READY: &str = "kruntimes.io/RuntimedReady";
    /// Run: the scheduler assigned a Pod.
    pub const SCHEDULED: &str = "Scheduled";
    /// Run: runtimed claimed it and started the process.
    pub const RUNNING: &str = "Running";
    /// Run / Workflow: reached a terminal phase.
    pub const COMPLETED: &str = "Completed";
    /// Runtime: the generated Deployment has the requested number of ready Pods.
    pub const READY: &str = "Ready";
    /// Runtime: the controller rendered the generated objects from the current spec.
    pub const RECONCILED: &str = "Reconciled";
}

/// Condition reasons (CamelCase, as Kubernetes requires).
pub mod reasons {
    /// Scheduled=True: a Pod was assigned.
    pub const ASSIGNED: &str = "Assigned";
    /// Scheduled=False: no Runtime with the requested name exists in the namespace.
    pub const RUNTIME_NOT_FOUND: &str = "RuntimeNotFound";
    /// Scheduled=False: no Ready, RuntimedReady Pod has free capacity.
    pub const NO_CAPACITY: &str = "NoCapacity";
    /// Scheduled=False: the Run requests more than any single Pod's capacity.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// Running=True: the process started.
    pub const STARTED: &str = "Started";
    /// Completed=True: exit code 0.
    pub const SUCCEEDED: &str = "Succeeded";
    /// Completed=True: non-zero exit code or setup failure.
    pub const FAILED: &str = "Failed";
    /// Completed=True: the attempt exceeded `spec.timeout`.
    pub const TIMEOUT: &str = "Timeout";
    /// Completed=True: `spec.cancelRequested` was honoured.
    pub const CANCELLED: &str = "Cancelled";
    /// The assigned Pod disappeared or its runtimed heartbeat went stale.
    pub const POD_LOST: &str = "PodLost";
    /// A new attempt is waiting for its backoff to elapse.
    pub const RETRY_BACKOFF: &str = "RetryBackoff";
    /// The Run references something the Runtime does not allow or that does not exist.
    pub const INVALID_REFERENCE: &str = "InvalidReference";
    /// Runtime Ready=True / False.
    pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
    /// Runtime Ready=False.
    pub const REPLICAS_UNAVAILABLE: &str = "ReplicasUnavailable";
    /// Workflow: a step failed so the Workflow failed.
    pub const STEP_FAILED: &str = "StepFailed";
}

/// Finalizers.
pub mod finalizers {
    /// On Runs that stored artifacts: removed by the runtime maintainer after deletion.
    pub const ARTIFACT_CLEANUP: &str = "kruntimes.io/artifact-cleanup";
}

/// Container names inside a Runtime Pod.
pub mod containers {
    /// The Runtime Server container; the Runtime's pod template must contain it.
    pub const RUNTIME: &str = "runtime";
    /// The injected sidecar; a pod template must not define it.
    pub const RUNTIMED: &str = "runtimed";
}

/// Name of the Deployment the controller generates for a Runtime.
pub fn runtime_deployment_name(runtime: &str) -> String {
    format!("runtime-{runtime}")
}
