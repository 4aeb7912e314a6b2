//! Errors of CRD and reference generation.

/// Why generating or writing the CRDs and API reference failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// A CRD could not be converted to or from JSON.
    #[error("CRD {crd}: {source}")]
    Json {
        /// CRD name.
        crd: String,
        /// Cause.
        source: serde_json::Error,
    },
    /// A CRD could not be rendered as YAML.
    #[error("CRD {crd}: {source}")]
    Yaml {
        /// CRD name.
        crd: String,
        /// Cause.
        source: serde_yaml::Error,
    },
    /// The generated schema does not have the expected shape.
    #[error("CRD {crd}: {detail}")]
    Shape {
        /// CRD name.
        crd: String,
        /// What was missing.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}
