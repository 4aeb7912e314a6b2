//! A container's environment: image ENV, kubelet-provided variables, `envFrom`
//! and `env` (literals with `$(VAR)` expansion, downward API, Secret and
//! ConfigMap keys), in the real kubelet's order and precedence.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Secret};
use kube::Api;

use super::downward::{expand, field_ref, resource_field_ref};
use super::volumes::VolumeContext;

/// Most variables a container may have.
pub const MAX_ENV_VARS: usize = 4096;

/// Ordered environment where a later `set` replaces an earlier value in place.
#[derive(Debug, Default, Clone)]
pub struct EnvList {
    vars: Vec<(String, String)>,
}

impl EnvList {
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.vars.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    pub fn into_vec(self) -> Vec<(String, String)> {
        self.vars
    }
}

/// Resolves `container`'s env on top of `base` (image ENV + kubelet variables).
/// The error is the message of a `CreateContainerConfigError`.
pub async fn resolve(
    ctx: &VolumeContext<'_>,
    container: &Container,
    base: EnvList,
) -> Result<EnvList, String> {
    let ns = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let mut env = base;

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional, what) = if let Some(r) = &from.config_map_ref {
            let data = config_maps
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("reading configmap {:?}: {e}", r.name))?
                .map(|c| c.data.unwrap_or_default());
            (
                data,
                r.optional.unwrap_or(false),
                format!("configmap {:?}", r.name),
            )
        } else if let Some(r) = &from.secret_ref {
            let data = secrets
                .get_opt(&r.name)
                .await
                .map_err(|e| format!("reading secret {:?}: {e}", r.name))?
                .map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect::<BTreeMap<_, _>>()
                });
            (
                data,
                r.optional.unwrap_or(false),
                format!("secret {:?}", r.name),
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    env.set(format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => return Err(format!("{what} not found")),
        }
    }

    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or(""), |k| env.get(k)),
            Some(src) => {
                if let Some(f) = &src.field_ref {
                    field_ref(ctx.pod, ctx.info, &f.field_path)?
                } else if let Some(r) = &src.resource_field_ref {
                    resource_field_ref(container, ctx.info, &r.resource, r.divisor.as_ref())?
                } else if let Some(r) = &src.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let secret = secrets
                        .get_opt(&r.name)
                        .await
                        .map_err(|e| format!("reading secret {:?}: {e}", r.name))?;
                    match secret
                        .and_then(|s| s.data)
                        .and_then(|d| d.get(&r.key).cloned())
                    {
                        Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key, ns, r.name
                            ));
                        }
                    }
                } else if let Some(r) = &src.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let cm = config_maps
                        .get_opt(&r.name)
                        .await
                        .map_err(|e| format!("reading configmap {:?}: {e}", r.name))?;
                    match cm.and_then(|c| c.data).and_then(|d| d.get(&r.key).cloned()) {
                        Some(v) => v,
                        None if optional => continue,
                        None => {
                            return Err(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key, ns, r.name
                            ));
                        }
                    }
                } else {
                    return Err(format!("env {:?} has an unsupported valueFrom", var.name));
                }
            }
        };
        env.set(var.name.clone(), value);
    }
    if env.vars.len() > MAX_ENV_VARS {
        return Err(format!(
            "container {:?} has {} environment variables, limit {MAX_ENV_VARS}",
            container.name,
            env.vars.len()
        ));
    }
    Ok(env)
}
