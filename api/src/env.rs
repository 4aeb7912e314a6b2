//! Environment variables of a Run: literal values or references to keys of Secrets and
//! ConfigMaps that the Run's Runtime explicitly allows.
//!
//! The allow-list check is not expressible in a CRD schema (it spans two objects);
//! runtimed refuses a reference the Runtime does not list, so creating a Run never
//! reads a Secret the Runtime's owner did not opt in to.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{limits, schema};

/// One environment variable. Exactly one of `value`, `secretKeyRef`, `configMapKeyRef`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(has(self.value) ? 1 : 0) + (has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) == 1",
        "message": "exactly one of value, secretKeyRef or configMapKeyRef must be set",
    },
    {
        "rule": "!self.name.startsWith('KRUNTIMES_')",
        "message": "env names starting with KRUNTIMES_ are reserved for runtimed",
        "fieldPath": ".name",
    },
]))]
pub struct EnvVar {
    /// Variable name (shell identifier).
    #[schemars(length(min = 1, max = limits::MAX_ENV_NAME_LENGTH), regex(pattern = schema::IDENTIFIER))]
    pub name: String,
    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::MAX_ENV_VALUE_LENGTH))]
    pub value: Option<String>,
    /// A key of a Secret listed in the Runtime's `allowedSecrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// A key of a ConfigMap listed in the Runtime's `allowedConfigMaps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

/// A key of a Secret or ConfigMap in the Run's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Object name.
    #[schemars(length(min = 1, max = limits::MAX_NAME_LENGTH), regex(pattern = schema::DNS_SUBDOMAIN))]
    pub name: String,
    /// Data key.
    #[schemars(length(min = 1, max = limits::MAX_KEY_LENGTH), regex(pattern = schema::DATA_KEY))]
    pub key: String,
}
