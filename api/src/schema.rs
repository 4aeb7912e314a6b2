//! Schema building blocks shared by the CRD types: name and path patterns, reusable
//! CEL rules, and schemars transforms for what derive attributes cannot express.
//!
//! Patterns are Go RE2 syntax because the API server evaluates them. CEL regexes avoid
//! backslashes (`[.]` instead of `\.`) so they survive Rust, JSON and CEL escaping.

use schemars::Schema;
use serde_json::{Value, json};

use crate::limits;

/// DNS-1123 label: object names that also become label values or name prefixes.
pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// DNS-1123 subdomain: names of Secrets, ConfigMaps, PVCs.
pub const DNS_SUBDOMAIN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Kubernetes label value syntax (non-empty).
pub const LABEL_VALUE: &str = "^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
/// A relative path: portable characters, `/` separators, no empty segment, no leading `/`.
pub const RELATIVE_PATH: &str = "^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$";
/// One path component.
pub const FILENAME: &str = "^[A-Za-z0-9._-]+$";
/// Environment variable and output names (POSIX shell identifiers).
pub const IDENTIFIER: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// Keys of Secret and ConfigMap data.
pub const DATA_KEY: &str = "^[-._a-zA-Z0-9]+$";
/// A full git commit id (SHA-1 or SHA-256), lower case.
pub const GIT_COMMIT: &str = "^[0-9a-f]{40}([0-9a-f]{24})?$";
/// git remote URL: https, ssh URL or scp-like `git@host:path`.
pub const GIT_URL: &str = "^(https://[^\\s/@]+/|ssh://[^\\s/]+/|git@[^\\s:/]+:)[^\\s]+$";
/// S3 bucket names (DNS-compatible naming rules).
pub const S3_BUCKET: &str = "^[a-z0-9][a-z0-9.-]*[a-z0-9]$";
/// S3 regions such as `us-east-1`.
pub const S3_REGION: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// S3 endpoint: scheme, host (name, IPv4 or bracketed IPv6), optional port and path.
pub const HTTP_URL: &str =
    "^https?://([A-Za-z0-9.-]+|\\[[0-9A-Fa-f:.]+\\])(:[0-9]{1,5})?(/[^\\s?#]*)?$";
/// Unix socket of the Runtime Server, inside the shared socket volume.
pub const SOCKET_PATH: &str = "^/run/kruntimes/[A-Za-z0-9._-]+$";
/// `sha256:` followed by 64 lower-case hex digits.
pub const SHA256_DIGEST: &str = "^sha256:[0-9a-f]{64}$";
/// Kubernetes condition reason syntax.
pub const REASON: &str = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";
/// Storage sizes: a plain integer number of bytes or a binary-suffixed quantity.
pub const SIZE_QUANTITY: &str = "^[0-9]+(Ki|Mi|Gi|Ti)?$";

/// CEL: a path has no `.` or `..` segment (traversal guard; the pattern handles the rest).
pub const NO_DOT_SEGMENTS: &str = "!self.matches('(^|/)[.][.]?(/|$)')";

/// `x-kubernetes-list-type: map` keyed by `name`, with a maximum length.
pub fn list_map_by_name(schema: &mut Schema, max_items: u64) {
    schema.insert("x-kubernetes-list-type".into(), json!("map"));
    schema.insert("x-kubernetes-list-map-keys".into(), json!(["name"]));
    schema.insert("maxItems".into(), json!(max_items));
}

/// Bounds and CEL rules for the Runtime's embedded `PodTemplateSpec`.
///
/// The upstream schema has unbounded lists; CEL cost estimation needs bounds on the
/// lists it iterates, and descriptions are dropped to keep the CRD small.
pub fn pod_template(schema: &mut Schema) {
    let mut value = Value::Object(std::mem::take(schema.ensure_object()));
    // Keep the field's own description; drop the upstream ones below it.
    if let Some(Value::Object(props)) = value.get_mut("properties") {
        props.values_mut().for_each(strip_descriptions);
    }
    if let Some(spec) = value.pointer_mut("/properties/spec/properties") {
        for (list, max) in [
            ("containers", limits::MAX_CONTAINERS),
            ("initContainers", limits::MAX_CONTAINERS),
            ("volumes", 64),
        ] {
            if let Some(items) = spec.get_mut(list) {
                bound_named_list(items, max);
            }
        }
    }
    // Only labels and annotations of the template's metadata are used; the rest of
    // ObjectMeta (managedFields, uid, ...) is server-owned and would only be ignored.
    if let Some(Value::Object(props)) = value.pointer_mut("/properties") {
        let string_map = json!({
            "type": "object",
            "additionalProperties": {"type": "string"},
            "maxProperties": 64,
        });
        props.insert(
            "metadata".into(),
            json!({
                "type": "object",
                "properties": {"labels": string_map, "annotations": string_map},
            }),
        );
    }
    if let Value::Object(map) = value {
        *schema.ensure_object() = map;
    }
    schema.insert(
        "x-kubernetes-validations".into(),
        json!([
            {
                "rule": "has(self.spec) && self.spec.containers.exists(c, c.name == 'runtime')",
                "message": "template.spec.containers must contain the Runtime Server container named 'runtime'",
                "fieldPath": ".spec.containers",
            },
            {
                "rule": "!has(self.spec) || (!self.spec.containers.exists(c, c.name == 'runtimed') && (!has(self.spec.initContainers) || !self.spec.initContainers.exists(c, c.name == 'runtimed')))",
                "message": "container name 'runtimed' is reserved for the injected sidecar",
                "fieldPath": ".spec.containers",
            },
            {
                "rule": "!has(self.spec) || !has(self.spec.volumes) || !self.spec.volumes.exists(v, v.name.startsWith('kruntimes-'))",
                "message": "volume names starting with 'kruntimes-' are reserved for volumes the controller injects",
                "fieldPath": ".spec.volumes",
            },
        ]),
    );
}

/// Sets `maxItems` on a list of named objects and `maxLength` on their `name`.
fn bound_named_list(list: &mut Value, max_items: u64) {
    if let Value::Object(list) = list {
        list.insert("maxItems".into(), json!(max_items));
        if let Some(Value::Object(name)) = list
            .get_mut("items")
            .and_then(|i| i.pointer_mut("/properties/name"))
        {
            name.insert("maxLength".into(), json!(limits::MAX_LABEL_LENGTH));
        }
    }
}

fn strip_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // `description` is only metadata when its value is a string: a property
            // named "description" would be an object schema and must stay.
            if map.get("description").is_some_and(Value::is_string) {
                map.remove("description");
            }
            map.values_mut().for_each(strip_descriptions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

/// Conditions: a list keyed by `type`, bounded, with the field bounds upstream
/// `metav1.Condition` validation uses (message shortened to the kruntimes limit).
pub fn conditions_list(schema: &mut Schema) {
    schema.insert("x-kubernetes-list-type".into(), json!("map"));
    schema.insert("x-kubernetes-list-map-keys".into(), json!(["type"]));
    schema.insert("maxItems".into(), json!(limits::MAX_CONDITIONS));
    let Some(props) = schema
        .get_mut("items")
        .and_then(|i| i.get_mut("properties"))
    else {
        return;
    };
    let bounds = [
        (
            "type",
            json!({"maxLength": 316, "pattern": "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"}),
        ),
        ("status", json!({"enum": ["True", "False", "Unknown"]})),
        (
            "reason",
            json!({"minLength": 1, "maxLength": 1024, "pattern": "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"}),
        ),
        ("message", json!({"maxLength": limits::MAX_MESSAGE_LENGTH})),
        ("observedGeneration", json!({"minimum": 0})),
    ];
    for (field, extra) in bounds {
        if let (Some(Value::Object(target)), Value::Object(extra)) = (props.get_mut(field), extra) {
            target.extend(extra);
        }
    }
}

/// `KEY=VALUE` outputs: a bounded string map (keys are checked by runtimed, which
/// writes them; CEL over map keys is too costly for the API server's estimator).
pub fn outputs_map(schema: &mut Schema) {
    schema.insert("maxProperties".into(), json!(limits::MAX_OUTPUTS));
    schema.insert(
        "additionalProperties".into(),
        json!({"type": "string", "maxLength": limits::MAX_OUTPUT_VALUE_LENGTH}),
    );
}
