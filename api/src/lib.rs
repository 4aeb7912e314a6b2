//! kruntimes API: the `Run`, `Runtime` and `Workflow` custom resources (group
//! `kruntimes.io`, version `v1alpha1`), the well-known names every component shares,
//! and the generator of the CRD YAML and API reference committed in the repository.

pub mod artifact_store;
pub mod constants;
pub mod crd;
pub mod docs;
pub mod env;
pub mod error;
pub mod limits;
pub mod resources;
pub mod run;
pub mod runtime;
pub mod schema;
pub mod workflow;

pub use artifact_store::{ArtifactStore, FilesystemStore, S3CredentialsSecret, S3Store};
pub use env::{EnvVar, KeyRef};
pub use error::GenerateError;
pub use resources::ResourceQuantity;
pub use run::{Run, RunPhase, RunSpec, RunStatus};
pub use runtime::{Runtime, RuntimeSpec, RuntimeStatus};
pub use workflow::{Workflow, WorkflowPhase, WorkflowSpec, WorkflowStatus};

/// A generated file: path relative to the repository root and its full contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to the repository root.
    pub path: String,
    /// Exact file contents.
    pub contents: String,
}

/// Every generated file: the three CRDs and `docs/api.md`.
pub fn generated_files() -> Result<Vec<GeneratedFile>, GenerateError> {
    let crds = crd::crds()?;
    let mut files = Vec::with_capacity(crds.len() + 1);
    for c in &crds {
        files.push(GeneratedFile {
            path: format!("{}/{}", crd::CRD_DIR, crd::file_name(c)),
            contents: crd::to_yaml(c)?,
        });
    }
    files.push(GeneratedFile {
        path: docs::API_DOC.into(),
        contents: docs::api_reference(&crds)?,
    });
    Ok(files)
}
