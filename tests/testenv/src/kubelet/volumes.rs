//! Pod volumes on the host side: emptyDir, Secret, ConfigMap, downward API,
//! projected (including ServiceAccount tokens from the TokenRequest API, bound to
//! the Pod and refreshed before they expire), hostPath and PVCs bound to
//! hostPath/local PVs. API-backed volumes are written like the real kubelet's
//! atomic writer: a timestamped directory, a `..data` symlink swapped by rename,
//! and one symlink per top-level entry, so readers never see a partial update.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, ServiceAccount, Volume,
};
use kube::Api;
use kube::api::PostParams;

use super::downward::{PodRuntimeInfo, field_ref, parse_quantity, resource_field_ref};

/// Largest total size of one API-backed volume (a Secret is at most 1 MiB).
pub const MAX_VOLUME_PAYLOAD: usize = 8 << 20;
/// Longest relative path of a file in a volume.
pub const MAX_VOLUME_PATH: usize = 4096;
const DEFAULT_MODE: u32 = 0o644;
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// One file of an API-backed volume.
#[derive(Debug, Clone, PartialEq)]
pub struct FileContent {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path -> content.
pub type Payload = BTreeMap<String, FileContent>;

/// Inputs shared by volume and env resolution.
pub struct VolumeContext<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    pub info: &'a PodRuntimeInfo,
}

/// The host directories of a Pod's volumes.
#[derive(Debug, Default)]
pub struct PodVolumes {
    /// Volume name -> host path to bind (directory or file for hostPath).
    pub paths: BTreeMap<String, PathBuf>,
    pub read_only: BTreeMap<String, bool>,
    /// emptyDirs with `medium: Memory`: tmpfs inside the Pod's mount namespace.
    pub memory_dirs: Vec<(PathBuf, Option<u64>)>,
    api_backed: Vec<String>,
    last: HashMap<String, Payload>,
    tokens: HashMap<String, CachedToken>,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: String,
    refresh_at: Instant,
}

impl PodVolumes {
    /// Earliest moment a projected token must be renewed.
    pub fn next_token_refresh(&self) -> Option<Instant> {
        self.tokens.values().map(|t| t.refresh_at).min()
    }
}

/// Creates every volume of the Pod under `pod_dir/volumes`. Errors are the
/// message for a `FailedMount` event.
pub async fn setup(ctx: &VolumeContext<'_>, pod_dir: &Path) -> Result<PodVolumes, String> {
    let mut vols = PodVolumes::default();
    let root = pod_dir.join("volumes");
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let volumes = ctx
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for vol in &volumes {
        validate_name(&vol.name)?;
        let dir = root.join(&vol.name);
        let fail = |e: String| format!("MountVolume.SetUp failed for volume {:?}: {e}", vol.name);
        if let Some(ed) = &vol.empty_dir {
            create_dir_mode(&dir, 0o777).map_err(fail)?;
            if ed.medium.as_deref() == Some("Memory") {
                let size = match &ed.size_limit {
                    Some(q) => Some(parse_quantity(&q.0).map_err(fail)? as u64),
                    None => None,
                };
                vols.memory_dirs.push((dir.clone(), size));
            }
            vols.paths.insert(vol.name.clone(), dir);
        } else if let Some(hp) = &vol.host_path {
            let path = host_path(&hp.path, hp.type_.as_deref()).map_err(fail)?;
            vols.paths.insert(vol.name.clone(), path);
        } else if let Some(pvc) = &vol.persistent_volume_claim {
            let path = claim_path(ctx, &pvc.claim_name).await.map_err(fail)?;
            vols.paths.insert(vol.name.clone(), path);
            vols.read_only
                .insert(vol.name.clone(), pvc.read_only.unwrap_or(false));
        } else if vol.secret.is_some()
            || vol.config_map.is_some()
            || vol.projected.is_some()
            || vol.downward_api.is_some()
        {
            create_dir_mode(&dir, 0o755).map_err(fail)?;
            let payload = payload(ctx, vol, &mut vols.tokens).await.map_err(fail)?;
            write_atomic(&dir, &payload).map_err(fail)?;
            vols.last.insert(vol.name.clone(), payload);
            vols.api_backed.push(vol.name.clone());
            vols.paths.insert(vol.name.clone(), dir);
        } else {
            return Err(fail("unsupported volume type in the test kubelet".into()));
        }
    }
    Ok(vols)
}

/// Rewrites API-backed volumes whose content changed or whose token is due.
pub async fn refresh(
    ctx: &VolumeContext<'_>,
    pod_dir: &Path,
    vols: &mut PodVolumes,
) -> Result<(), String> {
    let volumes = ctx
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for name in vols.api_backed.clone() {
        let Some(vol) = volumes.iter().find(|v| v.name == name) else {
            continue;
        };
        let payload = payload(ctx, vol, &mut vols.tokens).await?;
        if vols.last.get(&name) != Some(&payload) {
            write_atomic(&pod_dir.join("volumes").join(&name), &payload)?;
            vols.last.insert(name, payload);
        }
    }
    Ok(())
}

/// A name used as a directory name: a DNS label (no `/`, no leading `.`).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 || name.contains('/') || name.starts_with('.') {
        return Err(format!(
            "invalid name {name:?}: must be a DNS label of at most 63 characters"
        ));
    }
    Ok(())
}

fn create_dir_mode(dir: &Path, mode: u32) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", dir.display()))
}

fn host_path(path: &str, kind: Option<&str>) -> Result<PathBuf, String> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!(
            "hostPath.path {path:?} must be absolute without '..' components"
        ));
    }
    let exists = p.exists();
    match kind.unwrap_or("") {
        "DirectoryOrCreate" if !exists => create_dir_mode(p, 0o755)?,
        "FileOrCreate" if !exists => {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(p)
                .map_err(|e| format!("creating {path}: {e}"))?;
        }
        "Directory" if !p.is_dir() => return Err(format!("hostPath {path:?} is not a directory")),
        "File" if !p.is_file() => return Err(format!("hostPath {path:?} is not a file")),
        "Socket" | "CharDevice" | "BlockDevice" if !exists => {
            return Err(format!("hostPath {path:?} does not exist"));
        }
        _ => {}
    }
    if !p.exists() {
        // Type "" creates nothing; the bind would fail later with a worse message.
        return Err(format!("hostPath {path:?} does not exist"));
    }
    Ok(p.to_path_buf())
}

async fn claim_path(ctx: &VolumeContext<'_>, claim: &str) -> Result<PathBuf, String> {
    let ns = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(|e| format!("reading persistentvolumeclaim {claim:?}: {e}"))?
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} not found"))?;
    let pv_name = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|_| pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
        .ok_or_else(|| format!("persistentvolumeclaim {claim:?} is not bound"))?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs
        .get(&pv_name)
        .await
        .map_err(|e| format!("reading persistentvolume {pv_name:?}: {e}"))?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| {
            format!("persistentvolume {pv_name:?} is neither hostPath nor local (unsupported here)")
        })?;
    host_path(&path, Some("DirectoryOrCreate"))
}

async fn payload(
    ctx: &VolumeContext<'_>,
    vol: &Volume,
    tokens: &mut HashMap<String, CachedToken>,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    if let Some(s) = &vol.secret {
        let mode = s.default_mode.map(|m| m as u32).unwrap_or(DEFAULT_MODE);
        let name = s.secret_name.clone().unwrap_or_default();
        add_secret(ctx, &mut out, &name, s.items.as_deref(), s.optional, mode).await?;
    } else if let Some(c) = &vol.config_map {
        let mode = c.default_mode.map(|m| m as u32).unwrap_or(DEFAULT_MODE);
        add_config_map(ctx, &mut out, &c.name, c.items.as_deref(), c.optional, mode).await?;
    } else if let Some(d) = &vol.downward_api {
        let mode = d.default_mode.map(|m| m as u32).unwrap_or(DEFAULT_MODE);
        add_downward(ctx, &mut out, d.items.as_deref().unwrap_or_default(), mode)?;
    } else if let Some(p) = &vol.projected {
        let mode = p.default_mode.map(|m| m as u32).unwrap_or(DEFAULT_MODE);
        for (i, src) in p.sources.iter().flatten().enumerate() {
            if let Some(s) = &src.secret {
                add_secret(ctx, &mut out, &s.name, s.items.as_deref(), s.optional, mode).await?;
            } else if let Some(c) = &src.config_map {
                add_config_map(ctx, &mut out, &c.name, c.items.as_deref(), c.optional, mode)
                    .await?;
            } else if let Some(d) = &src.downward_api {
                add_downward(ctx, &mut out, d.items.as_deref().unwrap_or_default(), mode)?;
            } else if let Some(t) = &src.service_account_token {
                let key = format!("{}/{i}", vol.name);
                let token = projected_token(
                    ctx,
                    tokens,
                    &key,
                    t.audience.as_deref(),
                    t.expiration_seconds,
                )
                .await?;
                insert(&mut out, &t.path, token.into_bytes(), mode)?;
            } else {
                return Err("unsupported projected volume source in the test kubelet".into());
            }
        }
    }
    let total: usize = out.values().map(|f| f.data.len()).sum();
    if total > MAX_VOLUME_PAYLOAD {
        return Err(format!(
            "volume content is {total} bytes, limit {MAX_VOLUME_PAYLOAD}"
        ));
    }
    Ok(out)
}

fn insert(out: &mut Payload, path: &str, data: Vec<u8>, mode: u32) -> Result<(), String> {
    validate_rel_path(path)?;
    if mode > 0o777 {
        return Err(format!("file mode {mode:o} for {path:?} exceeds 0777"));
    }
    out.insert(path.to_string(), FileContent { data, mode });
    Ok(())
}

/// A volume item path: relative, no `..`, not starting with `..`, bounded.
pub fn validate_rel_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if path.is_empty()
        || path.len() > MAX_VOLUME_PATH
        || p.is_absolute()
        || path.starts_with("..")
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "invalid path {path:?}: must be relative, without '.' or '..' components, \
             not start with '..', at most {MAX_VOLUME_PATH} bytes"
        ));
    }
    Ok(())
}

fn select_keys(
    kind: &str,
    name: &str,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: u32,
    out: &mut Payload,
) -> Result<(), String> {
    match items {
        None => {
            for (k, v) in data {
                insert(out, &k, v, default_mode)?;
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(v) => insert(
                        out,
                        &item.path,
                        v.clone(),
                        item.mode.map(|m| m as u32).unwrap_or(default_mode),
                    )?,
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "configured key {:?} not found in {kind} {name:?}",
                            item.key
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

async fn add_secret(
    ctx: &VolumeContext<'_>,
    out: &mut Payload,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: u32,
) -> Result<(), String> {
    let ns = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let optional = optional.unwrap_or(false);
    match api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading secret {name:?}: {e}"))?
    {
        Some(s) => {
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            select_keys("secret", name, data, items, optional, mode, out)
        }
        None if optional => Ok(()),
        None => Err(format!("secret {name:?} not found")),
    }
}

async fn add_config_map(
    ctx: &VolumeContext<'_>,
    out: &mut Payload,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
    mode: u32,
) -> Result<(), String> {
    let ns = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let optional = optional.unwrap_or(false);
    match api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading configmap {name:?}: {e}"))?
    {
        Some(c) => {
            let mut data: BTreeMap<String, Vec<u8>> = c
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in c.binary_data.unwrap_or_default() {
                data.insert(k, v.0);
            }
            select_keys("configmap", name, data, items, optional, mode, out)
        }
        None if optional => Ok(()),
        None => Err(format!("configmap {name:?} not found")),
    }
}

fn add_downward(
    ctx: &VolumeContext<'_>,
    out: &mut Payload,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
) -> Result<(), String> {
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            field_ref(ctx.pod, ctx.info, &f.field_path)?
        } else if let Some(r) = &item.resource_field_ref {
            let container = ctx
                .pod
                .spec
                .as_ref()
                .and_then(|s| {
                    s.containers
                        .iter()
                        .find(|c| Some(&c.name) == r.container_name.as_ref())
                })
                .ok_or_else(|| format!("container {:?} not found", r.container_name))?;
            resource_field_ref(container, ctx.info, &r.resource, r.divisor.as_ref())?
        } else {
            return Err(format!("downward API item {:?} has no source", item.path));
        };
        insert(
            out,
            &item.path,
            value.into_bytes(),
            item.mode.map(|m| m as u32).unwrap_or(default_mode),
        )?;
    }
    Ok(())
}

/// A Pod-bound token for the Pod's ServiceAccount, reused until 80% of its
/// lifetime has passed (as the real kubelet does).
async fn projected_token(
    ctx: &VolumeContext<'_>,
    cache: &mut HashMap<String, CachedToken>,
    key: &str,
    audience: Option<&str>,
    expiration_seconds: Option<i64>,
) -> Result<String, String> {
    if let Some(t) = cache.get(key)
        && Instant::now() < t.refresh_at
    {
        return Ok(t.token.clone());
    }
    let seconds = expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS);
    let (token, ttl) = request_token(ctx.client, ctx.pod, audience, seconds).await?;
    cache.insert(
        key.to_string(),
        CachedToken {
            token: token.clone(),
            refresh_at: Instant::now() + ttl.mul_f64(0.8),
        },
    );
    Ok(token)
}

/// TokenRequest for the Pod's ServiceAccount, bound to the Pod.
pub async fn request_token(
    client: &kube::Client,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: i64,
) -> Result<(String, Duration), String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let audiences: Vec<&str> = audience.filter(|a| !a.is_empty()).into_iter().collect();
    // Built as JSON: the typed TokenRequest differs between k8s-openapi API versions.
    let req = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audiences,
            "expirationSeconds": expiration_seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
            },
        },
    });
    let resp: serde_json::Value = api
        .create_subresource("token", &sa, &PostParams::default(), &req)
        .await
        .map_err(|e| format!("requesting a token for serviceaccount {ns}/{sa}: {e}"))?;
    let token = resp["status"]["token"]
        .as_str()
        .ok_or_else(|| "TokenRequest returned no token".to_string())?
        .to_string();
    let ttl = resp["spec"]["expirationSeconds"]
        .as_i64()
        .unwrap_or(expiration_seconds)
        .max(1) as u64;
    Ok((token, Duration::from_secs(ttl)))
}

/// Writes `payload` into `dir` atomically (the kubelet's AtomicWriter layout).
pub fn write_atomic(dir: &Path, payload: &Payload) -> Result<(), String> {
    let err = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let ts_dir = dir.join(&stamp);
    std::fs::create_dir(&ts_dir).map_err(|e| err("creating", &ts_dir, e))?;
    std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| err("chmod", &ts_dir, e))?;
    for (rel, file) in payload {
        validate_rel_path(rel)?;
        let path = ts_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err("creating", parent, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&path)
            .map_err(|e| err("creating", &path, e))?;
        f.write_all(&file.data)
            .map_err(|e| err("writing", &path, e))?;
        // The umask may have narrowed the mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))
            .map_err(|e| err("chmod", &path, e))?;
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).map_err(|e| err("symlinking", &tmp, e))?;
    std::fs::rename(&tmp, dir.join("..data")).map_err(|e| err("renaming", &tmp, e))?;

    let top: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|k| k.split('/').next().map(str::to_string))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link)
                .map_err(|e| err("symlinking", &link, e))?;
        }
    }
    // Drop top-level links of keys that disappeared.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !top.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    if let Some(old) = old
        && old != Path::new(&stamp)
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_layout_and_update() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Payload::new();
        p.insert(
            "a".into(),
            FileContent {
                data: b"1".to_vec(),
                mode: 0o600,
            },
        );
        p.insert(
            "sub/b".into(),
            FileContent {
                data: b"2".to_vec(),
                mode: 0o644,
            },
        );
        write_atomic(dir.path(), &p).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(dir.path().join("sub/b")).unwrap(), b"2");
        let mode = std::fs::metadata(dir.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        p.remove("sub/b");
        p.insert(
            "a".into(),
            FileContent {
                data: b"3".to_vec(),
                mode: 0o600,
            },
        );
        write_atomic(dir.path(), &p).unwrap();
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"3");
        assert!(!dir.path().join("sub").exists());
        let stamps = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..1"))
            .count();
        assert_eq!(stamps, 1, "old generation removed");
    }

    #[test]
    fn traversal_rejected() {
        for bad in ["../x", "/etc/passwd", "a/../../b", "..a", "", "./a"] {
            assert!(validate_rel_path(bad).is_err(), "{bad}");
        }
        assert!(validate_rel_path("a/b.txt").is_ok());
    }
}
