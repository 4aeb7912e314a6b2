//! Downward API values (fieldRef / resourceFieldRef) and `$(VAR)` expansion,
//! with the semantics of the real kubelet.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Values that are not on the Pod object yet when env is computed.
#[derive(Debug, Clone)]
pub struct PodRuntimeInfo {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
    /// Node allocatable CPU in millicores and memory in bytes (limits default to these).
    pub node_cpu_millis: u64,
    pub node_memory_bytes: u64,
}

/// Value of a `fieldRef.fieldPath`.
pub fn field_ref(pod: &Pod, info: &PodRuntimeInfo, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_value = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    if let Some(key) = bracket_key(path, "metadata.labels") {
        return Ok(map_value(&meta.labels, key));
    }
    if let Some(key) = bracket_key(path, "metadata.annotations") {
        return Ok(map_value(&meta.annotations, key));
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(&meta.labels),
        "metadata.annotations" => format_map(&meta.annotations),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| info.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" | "status.hostIPs" => info.host_ip.clone(),
        "status.podIP" | "status.podIPs" => info.pod_ip.clone(),
        other => return Err(format!("unsupported fieldPath {other:?}")),
    })
}

fn bracket_key<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// `key="value"` lines, sorted, as the downward API volume writes labels.
fn format_map(map: &Option<BTreeMap<String, String>>) -> String {
    map.iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Value of a `resourceFieldRef`: the container's limit (or request), defaulting
/// limits to node allocatable, divided by `divisor` and rounded up.
pub fn resource_field_ref(
    container: &Container,
    info: &PodRuntimeInfo,
    resource: &str,
    divisor: Option<&Quantity>,
) -> Result<String, String> {
    let res = container.resources.as_ref();
    let limits = res.and_then(|r| r.limits.as_ref());
    let requests = res.and_then(|r| r.requests.as_ref());
    let (map, key, default) = match resource {
        "limits.cpu" => (limits, "cpu", Some(info.node_cpu_millis as f64 / 1000.0)),
        "limits.memory" => (limits, "memory", Some(info.node_memory_bytes as f64)),
        "limits.ephemeral-storage" => (limits, "ephemeral-storage", Some(0.0)),
        "requests.cpu" => (requests, "cpu", Some(0.0)),
        "requests.memory" => (requests, "memory", Some(0.0)),
        "requests.ephemeral-storage" => (requests, "ephemeral-storage", Some(0.0)),
        other => return Err(format!("unsupported resource {other:?}")),
    };
    let value = match map.and_then(|m| m.get(key)) {
        Some(q) => parse_quantity(&q.0)?,
        None => default.unwrap_or(0.0),
    };
    let divisor = match divisor {
        Some(q) => parse_quantity(&q.0)?,
        None => 1.0,
    };
    if divisor <= 0.0 {
        return Err("divisor must be positive".into());
    }
    let mut out = (value / divisor).ceil();
    // The real kubelet reports at least 1 for CPU.
    if resource.ends_with(".cpu") && out < 1.0 {
        out = 1.0;
    }
    Ok(format!("{}", out as u64))
}

/// Parses a Kubernetes quantity (`500m`, `2Gi`, `1e3`, `1.5`) into a number.
pub fn parse_quantity(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("invalid quantity {s:?}"))?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..]
                .parse()
                .map_err(|_| format!("invalid quantity {s:?}"))?;
            10f64.powi(exp)
        }
        _ => return Err(format!("invalid quantity suffix in {s:?}")),
    };
    Ok(num * mult)
}

/// Expands `$(VAR)` references like the kubelet: `$$` escapes `$`, unknown
/// references stay as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let bytes = input.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                    continue;
                }
                b'(' => {
                    if let Some(end) = input[i + 2..].find(')') {
                        let name = &input[i + 2..i + 2 + end];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + end]),
                        }
                        i += 3 + end;
                        continue;
                    }
                }
                _ => {}
            }
        }
        let ch = input[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_matches_kubelet_rules() {
        let env = |k: &str| (k == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", env), "x-$(B)-$(A)-$");
        assert_eq!(expand("é$(A)", env), "éx");
        assert_eq!(expand("$(A", env), "$(A");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(
            parse_quantity("2Gi").unwrap(),
            2.0 * 1024.0 * 1024.0 * 1024.0
        );
        assert_eq!(parse_quantity("1e3").unwrap(), 1000.0);
        assert!(parse_quantity("12x").is_err());
    }
}
