//! Logical resources: what a Run requests and what a Runtime Pod offers.
//!
//! They are counters the scheduler sums per Pod, not CPU or memory; the default and
//! most common one is `runs` (concurrent Runs).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{limits, schema};

/// The logical resource every Run requests by default.
pub const RUNS: &str = "runs";

/// An amount of one named logical resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceQuantity {
    /// Resource name (DNS-1123 label), e.g. `runs`.
    #[schemars(length(min = 1, max = limits::MAX_LABEL_LENGTH), regex(pattern = schema::DNS_LABEL))]
    pub name: String,
    /// Positive amount.
    #[schemars(range(min = 1, max = limits::MAX_RESOURCE_QUANTITY))]
    pub quantity: i64,
}

impl ResourceQuantity {
    /// `quantity` units of `name`.
    pub fn new(name: impl Into<String>, quantity: i64) -> Self {
        Self {
            name: name.into(),
            quantity,
        }
    }
}

/// One unit of `runs`: the default request of a Run and the default capacity of a Pod.
pub fn one_run() -> Vec<ResourceQuantity> {
    vec![ResourceQuantity::new(RUNS, 1)]
}

/// Schema transform for a list of quantities: keyed by name, bounded, non-empty.
pub(crate) fn quantity_list(schema: &mut schemars::Schema) {
    schema::list_map_by_name(schema, limits::MAX_RESOURCE_NAMES);
    schema.insert("minItems".into(), serde_json::json!(1));
}
