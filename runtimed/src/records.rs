//! The Run records journal: every Run's saved form in one append-only file of
//! JSON lines, `DATA_DIR/runs.journal`, instead of a file per Run. A save is
//! one `write` to a file that is already open; a file per Run cost an inode
//! allocated on every Run's path, which on ext4 without a journal (it skips
//! each inode freed in the last minute) was ~40% of runtimed's CPU per Run.
//!
//! The last line of a Run wins; a forgotten Run gets a tombstone line.
//! Opening replays the journal, ignores a torn last line (a crash mid-append)
//! and rewrites it with the live records only; it is rewritten the same way
//! (new file, then rename) whenever dead lines outweigh the live ones.

use crate::run::{RunSpec, RunState};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Dead bytes tolerated before a rewrite, on top of as many as are live.
const COMPACT_SLACK: u64 = 4 << 20;

/// The saved form of a Run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub uid: String,
    pub runtime: String,
    pub created_at: SystemTime,
    pub spec: RunSpec,
    pub state: RunState,
}

/// One journal line.
#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Forget { forget: String },
    Save(Box<RunRecord>),
}

#[derive(Serialize)]
struct Tombstone<'a> {
    forget: &'a str,
}

pub struct Records {
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    /// Bytes in the file: where the next line goes.
    len: u64,
    /// Offset and length of each live Run's latest line.
    live: HashMap<String, (u64, u64)>,
    live_bytes: u64,
}

impl Records {
    /// Opens (or creates) the journal at `path` and returns the live records
    /// in the order they were first saved.
    pub fn open(path: &Path) -> std::io::Result<(Records, Vec<RunRecord>)> {
        let bytes = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            r => r?,
        };
        let mut order: Vec<String> = Vec::new();
        let mut latest: HashMap<String, RunRecord> = HashMap::new();
        // Only whole lines: a last line without its newline is a torn append.
        let whole = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(&bytes[..0], |end| &bytes[..=end]);
        for (n, line) in whole.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<Line>(line) {
                Ok(Line::Save(r)) => {
                    if !latest.contains_key(&r.id) {
                        order.push(r.id.clone());
                    }
                    latest.insert(r.id.clone(), *r);
                }
                Ok(Line::Forget { forget }) => {
                    latest.remove(&forget);
                }
                Err(e) => {
                    tracing::error!(journal = %path.display(), line = n + 1, error = %e, "skipping a corrupt line of the run records journal");
                }
            }
        }
        let runs: Vec<RunRecord> = order.iter().filter_map(|id| latest.remove(id)).collect();
        let records = Records {
            path: path.to_path_buf(),
            inner: Mutex::new(Self::rewrite(path, &runs)?),
        };
        Ok((records, runs))
    }

    /// Replaces the journal with one line per record.
    fn rewrite(path: &Path, runs: &[RunRecord]) -> std::io::Result<Inner> {
        let mut out = Vec::new();
        let mut live = HashMap::with_capacity(runs.len());
        for r in runs {
            let start = out.len() as u64;
            serde_json::to_writer(&mut out, r).map_err(std::io::Error::other)?;
            out.push(b'\n');
            live.insert(r.id.clone(), (start, out.len() as u64 - start));
        }
        Ok(Inner {
            file: Self::install(path, &out)?,
            len: out.len() as u64,
            live,
            live_bytes: out.len() as u64,
        })
    }

    /// Writes `bytes` to a new file and renames it over the journal, so a
    /// crash leaves either the old journal or the new one. Returns the new
    /// journal open for appending (opened before the rename: once it is
    /// in place, nothing is left that can fail).
    fn install(path: &Path, bytes: &[u8]) -> std::io::Result<File> {
        let tmp = path.with_extension("journal.new");
        // Left by a crash mid-rewrite.
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)?;
        Ok(f)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `record` as the Run's latest state.
    pub fn save(&self, record: &RunRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut inner = self.lock();
        let at = inner.append(&line)?;
        let n = line.len() as u64;
        if let Some((_, old)) = inner.live.insert(record.id.clone(), (at, n)) {
            inner.live_bytes -= old;
        }
        inner.live_bytes += n;
        self.compact_if_due(&mut inner);
        Ok(())
    }

    /// Appends a tombstone: the Run is gone from the journal.
    pub fn forget(&self, id: &str) -> std::io::Result<()> {
        let mut line =
            serde_json::to_vec(&Tombstone { forget: id }).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut inner = self.lock();
        inner.append(&line)?;
        if let Some((_, old)) = inner.live.remove(id) {
            inner.live_bytes -= old;
        }
        self.compact_if_due(&mut inner);
        Ok(())
    }

    /// Rewrites the journal with the live lines only once dead ones
    /// outweigh them. A failure leaves the old journal in use (and is
    /// retried with the next line): the line just appended is safe either way.
    fn compact_if_due(&self, inner: &mut Inner) {
        let dead = inner.len - inner.live_bytes;
        if dead <= inner.live_bytes.max(COMPACT_SLACK) {
            return;
        }
        if let Err(e) = self.compact(inner) {
            tracing::error!(journal = %self.path.display(), error = %e, "cannot rewrite the run records journal; appending to the old one");
        }
    }

    fn compact(&self, inner: &mut Inner) -> std::io::Result<()> {
        let mut spans: Vec<(u64, u64, String)> = inner
            .live
            .iter()
            .map(|(id, &(at, n))| (at, n, id.clone()))
            .collect();
        spans.sort_unstable();
        let mut out = Vec::with_capacity(usize::try_from(inner.live_bytes).unwrap_or(0));
        let mut live = HashMap::with_capacity(spans.len());
        for (at, n, id) in spans {
            let start = out.len();
            out.resize(
                start + usize::try_from(n).map_err(std::io::Error::other)?,
                0,
            );
            inner.file.read_exact_at(&mut out[start..], at)?;
            live.insert(id, (start as u64, n));
        }
        inner.file = Self::install(&self.path, &out)?;
        inner.len = out.len() as u64;
        inner.live_bytes = inner.len;
        inner.live = live;
        tracing::debug!(journal = %self.path.display(), bytes = inner.len, "rewrote the run records journal");
        Ok(())
    }
}

impl Inner {
    /// Appends one line; returns its offset. A failed append is cut off
    /// again, so the next line does not land after half of this one.
    fn append(&mut self, line: &[u8]) -> std::io::Result<u64> {
        let at = self.len;
        if let Err(e) = self.file.write_all(line) {
            let _ = self.file.set_len(at);
            return Err(e);
        }
        self.len += line.len() as u64;
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Phase;

    fn record(id: &str, phase: Phase, message: &str) -> RunRecord {
        RunRecord {
            id: id.into(),
            uid: format!("uid-{id}"),
            runtime: "bash".into(),
            created_at: SystemTime::UNIX_EPOCH,
            spec: RunSpec::default(),
            state: RunState {
                phase,
                pid: 7,
                exit_code: None,
                signal: None,
                message: message.into(),
                started_at: None,
                finished_at: None,
                outputs: Default::default(),
                artifacts: Vec::new(),
                log_dropped_bytes: 0,
            },
        }
    }

    fn reopen(path: &Path) -> Vec<(String, Phase, String)> {
        let (_, runs) = Records::open(path).unwrap();
        runs.into_iter()
            .map(|r| (r.id, r.state.phase, r.state.message))
            .collect()
    }

    #[test]
    fn the_latest_save_wins_and_forgotten_runs_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.journal");
        let (j, runs) = Records::open(&path).unwrap();
        assert!(runs.is_empty());
        j.save(&record("a", Phase::Running, "")).unwrap();
        j.save(&record("b", Phase::Running, "")).unwrap();
        j.save(&record("a", Phase::Succeeded, "done")).unwrap();
        j.save(&record("c", Phase::Running, "")).unwrap();
        j.forget("b").unwrap();
        j.forget("never-saved").unwrap();
        drop(j);
        assert_eq!(
            reopen(&path),
            vec![
                ("a".into(), Phase::Succeeded, "done".into()),
                ("c".into(), Phase::Running, String::new()),
            ]
        );
        // Opening rewrote it with the live records only.
        assert_eq!(
            std::fs::read(&path)
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            2
        );
    }

    #[test]
    fn a_torn_last_line_and_a_corrupt_line_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.journal");
        let (j, _) = Records::open(&path).unwrap();
        j.save(&record("a", Phase::Running, "")).unwrap();
        j.save(&record("b", Phase::Running, "")).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        // A corrupt line in the middle, then a later save, then a torn one.
        f.write_all(b"{\"id\": garbage\n").unwrap();
        f.write_all(&serde_json::to_vec(&record("b", Phase::Failed, "x")).unwrap())
            .unwrap();
        f.write_all(b"\n").unwrap();
        let torn = serde_json::to_vec(&record("a", Phase::Failed, "torn")).unwrap();
        f.write_all(&torn[..torn.len() / 2]).unwrap();
        drop(f);
        assert_eq!(
            reopen(&path),
            vec![
                ("a".into(), Phase::Running, String::new()),
                ("b".into(), Phase::Failed, "x".into()),
            ]
        );
        // The rewrite left whole lines only: appending works again.
        let (j, _) = Records::open(&path).unwrap();
        j.save(&record("c", Phase::Running, "")).unwrap();
        drop(j);
        assert_eq!(reopen(&path).len(), 3);
    }

    #[test]
    fn a_rewrite_interrupted_by_a_crash_leaves_the_old_journal_in_charge() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.journal");
        let (j, _) = Records::open(&path).unwrap();
        j.save(&record("a", Phase::Running, "")).unwrap();
        drop(j);
        std::fs::write(path.with_extension("journal.new"), b"half a rewr").unwrap();
        assert_eq!(reopen(&path).len(), 1);
        assert!(!path.with_extension("journal.new").exists());
    }

    #[test]
    fn dead_lines_are_compacted_away_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.journal");
        let (j, _) = Records::open(&path).unwrap();
        j.save(&record("keep", Phase::Succeeded, "kept")).unwrap();
        let big = "m".repeat(1000);
        // Far more dead bytes than the slack: at least one rewrite happens.
        for i in 0..20_000 {
            let id = format!("r{}", i % 10);
            j.save(&record(&id, Phase::Running, &big)).unwrap();
            if i % 2 == 1 {
                j.forget(&id).unwrap();
            }
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 3 * COMPACT_SLACK, "journal is {len} bytes");
        // Appends after a rewrite land in the new file.
        j.save(&record("last", Phase::Running, "")).unwrap();
        drop(j);
        let runs = reopen(&path);
        assert_eq!(runs[0], ("keep".into(), Phase::Succeeded, "kept".into()));
        let ids: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
        assert!(ids.contains(&"last"), "{ids:?}");
        // Ids saved last at an even step are live: r0, r2, r4, r6, r8.
        for id in ["r0", "r2", "r4", "r6", "r8"] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        assert_eq!(ids.len(), 7, "{ids:?}");
    }
}
