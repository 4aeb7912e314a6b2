//! runtimed's side of artifacts: the configured store, collection after a Run
//! (through `kruntimes-artifacts`, which validates, packs, bounds and hashes
//! while copying), and serving stored bytes to DownloadArtifact.

use crate::config::Config;
use crate::error::Error;
use crate::run::ArtifactRecord;
use futures::StreamExt;
use kruntimes_artifacts::{ArtifactStore, ByteStream, CollectOptions, Limits, RunKey, StoreConfig};
use kruntimes_proto::runtimed::v1 as pb;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;

/// Largest chunk sent to a downloading client.
const MAX_CHUNK: usize = 256 * 1024;

pub struct Artifacts {
    store: Arc<dyn ArtifactStore>,
    namespace: String,
    limits: Limits,
}

impl Artifacts {
    pub fn from_config(cfg: &Config) -> Result<Artifacts, String> {
        let spec = cfg.artifact_store();
        let store = StoreConfig::parse(&spec)
            .and_then(|c| c.open())
            .map_err(|e| format!("--artifact-store {spec:?}: {e}"))?;
        Ok(Artifacts {
            store,
            namespace: cfg.namespace.clone(),
            limits: Limits {
                max_count: cfg.max_artifacts,
                max_artifact_bytes: cfg.max_artifact_bytes,
                max_total_bytes: cfg.max_artifacts_total_bytes,
            },
        })
    }

    fn key(&self, uid: &str) -> RunKey {
        RunKey::new(self.namespace.clone(), uid.to_string())
    }

    /// Collects and stores what the Run left in `dir`.
    pub async fn collect(
        &self,
        dir: &Path,
        scratch: &Path,
        uid: &str,
        gzip: bool,
    ) -> Result<Vec<ArtifactRecord>, String> {
        // Most Runs leave nothing: skip the blocking-pool hop for them.
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none()) {
            return Ok(Vec::new());
        }
        let opts = CollectOptions {
            gzip,
            limits: self.limits,
            ..Default::default()
        };
        let refs =
            kruntimes_artifacts::collect(dir, scratch, self.store.as_ref(), &self.key(uid), &opts)
                .await
                .map_err(|e| e.to_string())?;
        Ok(refs
            .into_iter()
            .map(|r| ArtifactRecord {
                name: r.name,
                kind: r.kind.as_str().to_string(),
                content_type: r.content_type,
                size: r.size,
                digest: r.digest,
                driver: r.driver,
                location: r.location,
            })
            .collect())
    }

    pub async fn open(&self, uid: &str, name: &str, offset: u64) -> Result<ByteStream, Error> {
        Ok(self.store.get(&self.key(uid), name, offset).await?)
    }
}

/// Sends metadata, then the stored bytes as chunks with their offsets.
pub async fn send_artifact(
    artifact: ArtifactRecord,
    mut offset: u64,
    mut data: ByteStream,
    tx: mpsc::Sender<Result<pb::DownloadArtifactResponse, Status>>,
) {
    use pb::download_artifact_response::Event;
    let meta = pb::DownloadArtifactResponse {
        event: Some(Event::Metadata(artifact.to_proto())),
    };
    if tx.send(Ok(meta)).await.is_err() {
        return;
    }
    while let Some(next) = data.next().await {
        let bytes = match next {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(Error::ArtifactStore(e).into())).await;
                return;
            }
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            let piece = rest.split_to(rest.len().min(MAX_CHUNK));
            let len = piece.len() as u64;
            let chunk = pb::DownloadArtifactResponse {
                event: Some(Event::Chunk(pb::ArtifactChunk {
                    offset,
                    data: piece,
                })),
            };
            offset += len;
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    }
}
