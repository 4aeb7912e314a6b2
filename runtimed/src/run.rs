//! A Run as runtimed tracks it: identity, its spool, and its state, published
//! on a watch channel so Get, Wait and followers see every transition.

use crate::error::{Error, Result};
use crate::spool::Spool;
use kruntimes_proto::runtimed::v1 as pb;
use kruntimes_proto::time::to_timestamp;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

/// Bound on `Run.message`, so a chatty error cannot bloat every Get.
pub const MAX_MESSAGE_BYTES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

#[derive(Debug, Clone)]
pub struct RunState {
    pub phase: Phase,
    pub pid: i32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
}

pub struct Run {
    pub id: String,
    pub runtime: String,
    pub created_at: SystemTime,
    pub spool: Spool,
    state: watch::Sender<RunState>,
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

impl Run {
    pub fn new(id: String, runtime: String, spool: Spool) -> Run {
        Run {
            id,
            runtime,
            created_at: SystemTime::now(),
            spool,
            state: watch::channel(RunState {
                phase: Phase::Pending,
                pid: 0,
                exit_code: None,
                signal: None,
                message: String::new(),
                started_at: None,
                finished_at: None,
            })
            .0,
        }
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

    /// Records the final state once; later calls are ignored so the first
    /// cause (e.g. a cancel) is not overwritten by a consequence.
    pub fn finish(
        &self,
        phase: Phase,
        exit_code: Option<i32>,
        signal: Option<i32>,
        message: String,
    ) -> bool {
        debug_assert!(phase.is_terminal());
        let mut changed = false;
        self.state.send_if_modified(|s| {
            if s.phase.is_terminal() {
                return false;
            }
            s.phase = phase;
            s.exit_code = exit_code;
            s.signal = signal;
            s.message = bounded_message(message);
            s.finished_at = Some(SystemTime::now());
            changed = true;
            true
        });
        self.spool.close();
        changed
    }

    pub fn to_proto(&self) -> pb::Run {
        let s = self.state();
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
            ..Default::default()
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
#[derive(Default)]
pub struct Registry {
    runs: Mutex<HashMap<String, Arc<Run>>>,
}

impl Registry {
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
}
