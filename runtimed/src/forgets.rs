//! Forgets finished executions on a Runtime Server in batches. Each call
//! costs the server a whole RPC (for the python server ~0.25 ms of CPU, a
//! fifth of what it spends on a trivial Run back to back), so runtimed
//! collects the ids of finished Runs and sends them together in one `Forget`
//! (`more_execution_ids`), at most one call in flight per server, off the
//! Runs' path. An execution is kept by its server at most `FORGET_DELAY`
//! longer than before; its buffers are bounded by the server either way.

use crate::runtime_server::RuntimeServer;
use kruntimes_proto::runtime::v1::ForgetRequest;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// How long the first id of a batch waits for others.
/// (The bench pauses longer than this between its blocks of samples:
/// tests/bench/src/figures/mod.rs.)
pub const FORGET_DELAY: Duration = Duration::from_millis(50);

/// Ids in one Forget: the protocol's limit (`execution_id` plus 255 more).
pub const MAX_BATCH: usize = 256;

/// The ids waiting to be forgotten on one server.
#[derive(Default)]
pub struct Forgets {
    /// (server generation the execution ran under, execution id)
    pending: Mutex<Vec<(u64, String)>>,
    wake: Notify,
}

impl Forgets {
    fn pending(&self) -> MutexGuard<'_, Vec<(u64, String)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a finished execution; `run` sends it within `FORGET_DELAY`
    /// (at once when a batch is full).
    pub fn push(&self, generation: u64, id: String) {
        let len = {
            let mut pending = self.pending();
            pending.push((generation, id));
            pending.len()
        };
        if len == 1 || len >= MAX_BATCH {
            self.wake.notify_one();
        }
    }

    /// Up to `MAX_BATCH` ids to send to the server of `generation`. Ids of
    /// other generations are dropped: that server is gone, and its
    /// executions with it.
    fn take(&self, generation: u64) -> Vec<String> {
        let mut pending = self.pending();
        pending.retain(|(g, _)| *g == generation);
        let n = pending.len().min(MAX_BATCH);
        pending.drain(..n).map(|(_, id)| id).collect()
    }

    fn len(&self) -> usize {
        self.pending().len()
    }
}

/// Sends the server's queued Forgets for as long as runtimed runs: one
/// batch per `FORGET_DELAY` at most, one call at a time.
pub async fn run(server: std::sync::Arc<RuntimeServer>) {
    let forgets = server.forgets();
    loop {
        forgets.wake.notified().await;
        let deadline = tokio::time::Instant::now() + FORGET_DELAY;
        while forgets.len() < MAX_BATCH {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = forgets.wake.notified() => {}
            }
        }
        flush(&server).await;
    }
}

/// Sends every queued Forget now (also at shutdown).
pub async fn flush(server: &RuntimeServer) {
    loop {
        let ids = server.forgets().take(server.health().generation);
        let Some((first, more)) = ids.split_first() else {
            return;
        };
        let mut client = server.client();
        let request = ForgetRequest {
            execution_id: first.clone(),
            more_execution_ids: more.to_vec(),
        };
        // Best effort: an execution the server no longer keeps is not lost.
        let Err(status) = client.forget(request).await else {
            continue;
        };
        tracing::debug!(runtime = %server.name, ids = ids.len(), error = %status, "Forget failed");
        let refused_an_id = matches!(
            status.code(),
            tonic::Code::NotFound | tonic::Code::FailedPrecondition
        );
        if more.is_empty() || !refused_an_id {
            continue;
        }
        // A batch is all or nothing: one id the server does not know fails
        // it. The others are forgotten one by one (not when the server
        // cannot be reached: each would fail the same way).
        for id in ids {
            let request = ForgetRequest {
                execution_id: id,
                more_execution_ids: Vec::new(),
            };
            let _ = client.forget(request).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_bounded_and_drop_other_generations() {
        let f = Forgets::default();
        f.push(1, "old".into());
        for i in 0..MAX_BATCH + 3 {
            f.push(2, format!("r{i}"));
        }
        let first = f.take(2);
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(first[0], "r0");
        assert!(!first.contains(&"old".to_string()));
        assert_eq!(f.take(2), ["r256", "r257", "r258"]);
        assert!(f.take(2).is_empty());
        assert_eq!(f.len(), 0);
    }
}
