//! After a restart (including SIGKILL), runtimed reloads its Runs from the
//! records journal and their spools and re-attaches to the ones still running: the
//! Runtime Server kept them running (back-pressured while nobody read) and
//! replays what it still buffers from the per-stream offsets in the spool.

use crate::records::RunRecord;
use crate::run::{Outcome, Run};
use crate::service::State;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long a recovered Run waits for its Runtime Server to be ready.
const SERVER_PATIENCE: Duration = Duration::from_secs(60);

pub fn recover(state: &Arc<State>, cfg: &crate::Config, saved: Vec<RunRecord>) {
    let (mut finished, mut resumed) = (0, 0);
    for record in saved {
        let id = record.id.clone();
        let run = match Run::load(
            record,
            state.records.clone(),
            &cfg.spool_dir(),
            cfg.log_cap_bytes,
            state.runs.spool_usage(),
            state.runs.shelf(),
        ) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::error!(run = %id, error = %e, "cannot re-open the spool of a saved run; skipping it");
                continue;
            }
        };
        let phase = run.state().phase;
        if state.runs.insert(run.clone()).is_err() {
            continue;
        }
        if phase.is_terminal() {
            finished += 1;
            continue;
        }
        resumed += 1;
        let Some(server) = state.runtimes.get(&run.runtime).cloned() else {
            run.finish(Outcome::failed(format!(
                "runtimed restarted without runtime {:?}, which ran this Run",
                run.runtime
            )));
            run.save();
            continue;
        };
        if run.state().pid == 0 {
            run.finish(Outcome::failed(
                "runtimed restarted before the Run's process was started".into(),
            ));
            run.save();
            state.workspace.cleanup(&run.id);
            continue;
        }
        // Over the limit is possible only if the limit shrank across the
        // restart; the Run still finishes, it just holds no slot.
        let permit = state.permits.clone().try_acquire_owned().ok();
        state.metrics.runs_active.inc();
        let state = state.clone();
        let span = tracing::info_span!("run", run = %run.id, runtime = %server.name);
        tokio::spawn(
            async move {
                let mut health = server.subscribe();
                let ready = tokio::time::timeout(SERVER_PATIENCE, async {
                    health.wait_for(|h| h.ready).await.map(|h| h.generation)
                })
                .await;
                let generation = match ready {
                    Ok(Ok(g)) => g,
                    _ => {
                        let reason = server.health().reason;
                        run.finish(Outcome::failed(format!(
                            "runtime server {} was not ready within {}s after runtimed restarted: {reason}",
                            server.name,
                            SERVER_PATIENCE.as_secs()
                        )));
                        run.save();
                        state.metrics.runs_active.dec();
                        return;
                    }
                };
                tracing::info!(log_bytes = run.spool.progress().len, "re-attaching to a run after restart");
                state.attempt(run, server, generation, permit).drive().await;
            }
            .instrument(span),
        );
    }
    if finished + resumed > 0 {
        tracing::info!(finished, resumed, "recovered runs from a previous runtimed");
    }
}
