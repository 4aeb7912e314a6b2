//! Collecting a finished Run's artifacts: pack everything into scratch first
//! (so invalid input fails before anything is uploaded), then upload each with
//! bounded retries. Scratch files are removed whatever happens.

use crate::artifact::ArtifactRef;
use crate::error::CollectError;
use crate::key::RunKey;
use crate::limits::Limits;
use crate::pack::pack_all;
use crate::retry::RetryPolicy;
use crate::store::ArtifactStore;
use std::path::Path;

/// How to collect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectOptions {
    /// Store directories as `.tar.gz` instead of `.tar`.
    pub gzip: bool,
    pub limits: Limits,
    /// Upload retries.
    pub retry: RetryPolicy,
}

/// Validates and packs every top-level entry of `dir` into `scratch`, hashing
/// and counting while copying and stopping as soon as a bound is crossed, then
/// uploads each to `store` under `key`. Returns the refs sorted by name; a
/// missing or empty `dir` gives none.
///
/// `scratch` should be private to runtimed (created if missing); it needs
/// room for all artifacts of the Run at once (at most `max_total_bytes`).
pub async fn collect(
    dir: &Path,
    scratch: &Path,
    store: &dyn ArtifactStore,
    key: &RunKey,
    opts: &CollectOptions,
) -> Result<Vec<ArtifactRef>, CollectError> {
    key.validate().map_err(CollectError::Key)?;
    let (d, s, gzip, limits) = (
        dir.to_path_buf(),
        scratch.to_path_buf(),
        opts.gzip,
        opts.limits,
    );
    let packed = tokio::task::spawn_blocking(move || pack_all(&d, &s, gzip, limits))
        .await
        .map_err(|e| CollectError::Task(e.to_string()))??;

    let mut refs = Vec::with_capacity(packed.len());
    for p in &packed {
        let location = opts
            .retry
            .run(&p.name, || {
                store.put_file(key, &p.name, p.file.path(), p.size)
            })
            .await
            .map_err(|(attempts, source)| CollectError::Upload {
                name: p.name.clone(),
                attempts,
                source: Box::new(source),
            })?;
        tracing::debug!(name = %p.name, size = p.size, %location, "artifact stored");
        refs.push(ArtifactRef {
            name: p.name.clone(),
            kind: p.kind,
            content_type: p.content_type.clone(),
            size: p.size,
            digest: p.digest.clone(),
            driver: store.driver().to_string(),
            location,
        });
    }
    // `packed` drops here, removing the scratch files.
    Ok(refs)
}
