//! A Run as runtimed tracks it: identity, what was asked, its spool, and its
//! state — published on a watch channel so Get, Wait and followers see every
//! transition, and saved to the records journal ([`crate::records`]) once it
//! runs and once it ends, so a restarted runtimed knows its Runs and can re-attach to running
//! ones. Saves happen off the Run's critical path (after the transition is
//! published); a crash in between is covered by re-attaching, since the
//! Runtime Server keeps the execution until runtimed Forgets it.

use crate::error::{Error, Result};
use crate::records::{Records, RunRecord};
use crate::shelf::Shelf;
use crate::spool::Spool;
use kruntimes_proto::runtimed::v1 as pb;
use kruntimes_proto::time::to_timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Bound on `Run.message`, so a chatty error cannot bloat every Get.
pub const MAX_MESSAGE_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
    Timeout,
    Cancelled,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Phase::Pending | Phase::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Timeout => "Timeout",
            Phase::Cancelled => "Cancelled",
        }
    }

    fn to_proto(self) -> pb::Phase {
        match self {
            Phase::Pending => pb::Phase::Pending,
            Phase::Running => pb::Phase::Running,
            Phase::Succeeded => pb::Phase::Succeeded,
            Phase::Failed => pb::Phase::Failed,
            Phase::Timeout => pb::Phase::Timeout,
            Phase::Cancelled => pb::Phase::Cancelled,
        }
    }
}

/// What the Run asked for, beyond the program itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunSpec {
    pub timeout_ms: u64,
    pub artifacts_on_failure: bool,
    pub artifacts_gzip: bool,
}

/// One stored artifact, as recorded in the Run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    pub name: String,
    pub kind: String,
    pub content_type: String,
    pub size: u64,
    pub digest: String,
    pub driver: String,
    pub location: String,
}

impl ArtifactRecord {
    pub fn to_proto(&self) -> pb::Artifact {
        pb::Artifact {
            name: self.name.clone(),
            kind: self.kind.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            digest: self.digest.clone(),
            driver: self.driver.clone(),
            location: self.location.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub phase: Phase,
    pub pid: i32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    #[serde(default)]
    pub artifacts: Vec<ArtifactRecord>,
    #[serde(default)]
    pub log_dropped_bytes: u64,
}

/// The final state of a Run, as decided by whoever ends it.
pub struct Outcome {
    pub phase: Phase,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    pub outputs: BTreeMap<String, String>,
    pub artifacts: Vec<ArtifactRecord>,
}

impl Outcome {
    pub fn failed(message: String) -> Outcome {
        Outcome {
            phase: Phase::Failed,
            exit_code: None,
            signal: None,
            message,
            outputs: BTreeMap::new(),
            artifacts: Vec::new(),
        }
    }
}

pub struct Run {
    pub id: String,
    pub uid: String,
    pub runtime: String,
    pub created_at: SystemTime,
    pub spec: RunSpec,
    pub spool: Spool,
    state: watch::Sender<RunState>,
    records: Arc<Records>,
    /// Set by [`Run::forget`]; held while saving, so a save that races a
    /// Forget (a waiter may Forget before the final save) cannot append the
    /// record again after its tombstone.
    forgotten: Mutex<bool>,
}

/// Truncates a message to [`MAX_MESSAGE_BYTES`] on a character boundary.
pub fn bounded_message(mut m: String) -> String {
    if m.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - 3;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.truncate(end);
        m.push_str("...");
    }
    m
}

pub fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Run {
    pub fn new(
        id: String,
        runtime: String,
        spec: RunSpec,
        spool: Spool,
        records: Arc<Records>,
    ) -> Run {
        Run {
            records,
            forgotten: Mutex::new(false),
            id,
            uid: uuid::Uuid::new_v4().to_string(),
            runtime,
            created_at: SystemTime::now(),
            spec,
            spool,
            state: watch::channel(RunState {
                phase: Phase::Pending,
                pid: 0,
                exit_code: None,
                signal: None,
                message: String::new(),
                started_at: None,
                finished_at: None,
                outputs: BTreeMap::new(),
                artifacts: Vec::new(),
                log_dropped_bytes: 0,
            })
            .0,
        }
    }

    /// A saved Run with its spool re-opened (recycling through `shelf`).
    pub fn load(
        f: RunRecord,
        records: Arc<Records>,
        spool_dir: &Path,
        log_cap: u64,
        usage: Arc<AtomicU64>,
        shelf: Arc<Shelf>,
    ) -> std::io::Result<Run> {
        let spool = Spool::open(
            spool_dir,
            &f.id,
            log_cap,
            f.state.phase.is_terminal(),
            usage,
        )?
        .with_shelf(shelf);
        spool.restore_dropped(f.state.log_dropped_bytes);
        Ok(Run {
            id: f.id,
            uid: f.uid,
            runtime: f.runtime,
            created_at: f.created_at,
            spec: f.spec,
            spool,
            state: watch::channel(f.state).0,
            records,
            forgotten: Mutex::new(false),
        })
    }

    /// Appends the Run's current state to the records journal. A failure is
    /// logged, not fatal: the Run itself goes on.
    pub fn save(&self) {
        let forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        if *forgotten {
            return;
        }
        let r = self.records.save(&RunRecord {
            id: self.id.clone(),
            uid: self.uid.clone(),
            runtime: self.runtime.clone(),
            created_at: self.created_at,
            spec: self.spec.clone(),
            state: self.state(),
        });
        if let Err(e) = r {
            tracing::error!(run = %self.id, error = %e, "cannot save the run record");
        }
    }

    pub fn forget(&self) {
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|p| p.into_inner());
        *forgotten = true;
        if let Err(e) = self.records.forget(&self.id) {
            tracing::error!(run = %self.id, error = %e, "cannot remove the run record");
        }
        self.spool.remove();
    }

    pub fn state(&self) -> RunState {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<RunState> {
        self.state.subscribe()
    }

    pub fn mark_running(&self, pid: i32, started_at: SystemTime) {
        self.state.send_modify(|s| {
            s.phase = Phase::Running;
            s.pid = pid;
            s.started_at = Some(started_at);
        });
    }

    /// Records and publishes the final state once; later calls are ignored
    /// so the first cause is not overwritten by a consequence. The caller
    /// saves the record (after waking whoever waits).
    pub fn finish(&self, o: Outcome) -> bool {
        debug_assert!(o.phase.is_terminal());
        let truncation = self.spool.truncation();
        let dropped = truncation.map(|t| t.dropped).unwrap_or(0);
        let mut message = o.message;
        if let Some(t) = truncation {
            message = format!(
                "{message}; output truncated: {} bytes past the {}-byte log cap were dropped",
                t.dropped, t.offset
            );
        }
        let changed = self.state.send_if_modified(|s| {
            if s.phase.is_terminal() {
                return false;
            }
            s.phase = o.phase;
            s.exit_code = o.exit_code;
            s.signal = o.signal;
            s.message = bounded_message(message);
            s.outputs = o.outputs;
            s.artifacts = o.artifacts;
            s.log_dropped_bytes = dropped;
            s.finished_at = Some(SystemTime::now());
            true
        });
        self.spool.close();
        changed
    }

    pub fn to_proto(&self) -> pb::Run {
        let s = self.state();
        let truncation = self.spool.truncation();
        pb::Run {
            run_id: self.id.clone(),
            runtime: self.runtime.clone(),
            phase: s.phase.to_proto().into(),
            exit_code: s.exit_code,
            signal: s.signal,
            message: s.message,
            created_at: Some(to_timestamp(self.created_at)),
            started_at: s.started_at.map(to_timestamp),
            finished_at: s.finished_at.map(to_timestamp),
            pid: s.pid,
            log_length: self.spool.progress().len,
            uid: self.uid.clone(),
            outputs: s.outputs.into_iter().collect(),
            artifacts: s.artifacts.iter().map(ArtifactRecord::to_proto).collect(),
            log_truncated: truncation.is_some(),
            log_dropped_bytes: truncation.map(|t| t.dropped).unwrap_or(0),
        }
    }

    /// Resolves once the Run reached a terminal phase.
    pub async fn finished(&self) -> RunState {
        let mut rx = self.subscribe();
        match rx.wait_for(|s| s.phase.is_terminal()).await {
            Ok(s) => s.clone(),
            // The sender lives as long as `self`; unreachable in practice.
            Err(_) => self.state(),
        }
    }
}

/// All Runs this runtimed knows, by id.
pub struct Registry {
    runs: Mutex<HashMap<String, Arc<Run>>>,
    /// Bytes in all live spools, kept by the spools themselves (recycled
    /// data files on the shelf included).
    spool_usage: Arc<AtomicU64>,
    shelf: Arc<Shelf>,
}

impl Registry {
    /// Spools of this registry's Runs recycle data files through one shelf,
    /// which counts the files it hands out in `recycled`.
    pub fn new(recycled: prometheus_client::metrics::counter::Counter) -> Registry {
        let spool_usage = Arc::<AtomicU64>::default();
        Registry {
            runs: Default::default(),
            shelf: Arc::new(Shelf::new(spool_usage.clone(), recycled)),
            spool_usage,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Run>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts a new Run; an existing id is refused whatever its phase, so an
    /// id always names one execution.
    pub fn insert(&self, run: Arc<Run>) -> Result<()> {
        let mut runs = self.lock();
        if let Some(old) = runs.get(&run.id) {
            return Err(Error::RunExists {
                id: run.id.clone(),
                phase: old.state().phase.as_str().to_string(),
            });
        }
        runs.insert(run.id.clone(), run);
        Ok(())
    }

    /// The gauge every new or re-opened spool counts its bytes in.
    pub fn spool_usage(&self) -> Arc<AtomicU64> {
        self.spool_usage.clone()
    }

    /// The recycled spool files new spools take from and removed ones go to.
    pub fn shelf(&self) -> Arc<Shelf> {
        self.shelf.clone()
    }

    pub fn contains(&self, id: &str) -> Option<Phase> {
        self.lock().get(id).map(|r| r.state().phase)
    }

    pub fn get(&self, id: &str) -> Result<Arc<Run>> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::RunNotFound(id.to_string()))
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Run>> {
        self.lock().remove(id)
    }

    /// Runs ordered by creation time.
    pub fn list(&self) -> Vec<Arc<Run>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|r| r.created_at);
        v
    }

    /// Keeps at most `max` finished Runs, so that Runs nobody forgets cannot
    /// grow runtimed's memory and disk without bound: called as a Run
    /// finishes (before it counts as finished), it forgets the oldest
    /// finished Runs (record and log) once `max` are kept, down to 90% of
    /// `max` so the scan is rare. O(1) below the bound. Returns how many went.
    pub fn enforce_retention(&self, max: usize) -> usize {
        if self.lock().len() <= max {
            return 0;
        }
        let runs = self.list();
        let mut finished: Vec<(SystemTime, &Arc<Run>)> = runs
            .iter()
            .filter_map(|r| r.state().finished_at.map(|f| (f, r)))
            .collect();
        if finished.len() < max {
            return 0;
        }
        finished.sort_by_key(|(f, _)| *f);
        let keep = max - max / 10;
        let excess = (finished.len() + 1).saturating_sub(keep);
        for (_, r) in &finished[..excess] {
            self.remove(&r.id);
            r.forget();
            tracing::info!(run = %r.id, max_finished_runs = max, "forgot the oldest finished run (--max-finished-runs)");
        }
        excess
    }

    /// Evicts spools of finished Runs, oldest finished first, until the
    /// spools of all Runs fit in `budget` bytes; recycled data files are
    /// discarded before any. Returns how many spools were evicted.
    pub fn enforce_spool_budget(&self, budget: u64) -> usize {
        // The common case, O(1): within budget.
        let mut total = self.spool_usage.load(Ordering::Relaxed);
        if total <= budget {
            return 0;
        }
        total = total.saturating_sub(self.shelf.discard(total - budget));
        if total <= budget {
            return 0;
        }
        let runs = self.list();
        let mut finished: Vec<(SystemTime, &Arc<Run>)> = runs
            .iter()
            .filter(|r| !r.spool.is_evicted())
            .filter_map(|r| r.state().finished_at.map(|f| (f, r)))
            .collect();
        finished.sort_by_key(|(f, _)| *f);
        let mut evicted = 0;
        for (_, r) in finished {
            if total <= budget {
                break;
            }
            let len = r.spool.progress().len;
            r.spool.evict();
            total = total.saturating_sub(len);
            evicted += 1;
            tracing::info!(run = %r.id, bytes = len, budget, "evicted the log spool of a finished run (spool budget)");
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_run_loads_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.journal");
        let (records, _) = Records::open(&path).unwrap();
        let records = Arc::new(records);
        let spool = Spool::create(dir.path(), "r", 1 << 20, Default::default());
        let run = Run::new(
            "r".into(),
            "bash".into(),
            RunSpec::default(),
            spool,
            records,
        );
        run.save();
        run.mark_running(42, SystemTime::now());
        run.save();
        drop(run);
        let (records, mut saved) = Records::open(&path).unwrap();
        assert_eq!(saved.len(), 1);
        let loaded = Run::load(
            saved.remove(0),
            Arc::new(records),
            dir.path(),
            1 << 20,
            Default::default(),
            Default::default(),
        )
        .unwrap();
        let s = loaded.state();
        assert_eq!(
            (loaded.id.as_str(), s.phase, s.pid),
            ("r", Phase::Running, 42)
        );
        loaded.forget();
        // A save that comes after the Forget (the final save racing a
        // waiter's Forget) does not bring the record back.
        loaded.save();
        assert!(Records::open(&path).unwrap().1.is_empty());
    }
}
