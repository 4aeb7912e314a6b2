//! Recycled spool data files. When a Run's log is removed (Forget, or
//! `--max-finished-runs`), a data file of at least [`MIN_BYTES`] is put on
//! this shelf instead of being deleted, and the next Run whose output
//! outgrows the in-memory hold takes it and writes over it in place, as
//! databases recycle WAL segments. Its blocks stay allocated and its
//! page-cache pages stay cached, so that Run pays neither ext4's allocation
//! nor fresh page-cache pages, the dominant cost of spooling a fast writer
//! (on VMs with free page reporting a fresh page faults in the host first).
//!
//! Bounds: at most [`MAX_FILES`] files; their bytes stay in the spool
//! budget's gauge, and the budget discards them before any log is evicted.
//! A shelved file is named `.recycled-N.log` in the spool directory (Run ids
//! never start with '.'); leftovers of an earlier process are deleted at
//! start-up.

use prometheus_client::metrics::counter::Counter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Smaller data files are deleted: recycling them saves little.
pub const MIN_BYTES: u64 = 1 << 20;
/// Files kept at most.
pub const MAX_FILES: usize = 2;

const PREFIX: &str = ".recycled-";

struct Shelved {
    path: PathBuf,
    size: u64,
}

#[derive(Default)]
pub struct Shelf {
    files: Mutex<Vec<Shelved>>,
    names: AtomicU64,
    /// The spool budget's gauge, which counts the shelved files' bytes: the
    /// shelf takes off what it deletes or loses.
    usage: Arc<AtomicU64>,
    /// Files taken (`runtimed_spool_files_recycled_total`).
    recycled: Counter,
}

impl Shelf {
    /// A shelf whose files count in `usage` and that counts the files it
    /// hands out in `recycled`.
    pub fn new(usage: Arc<AtomicU64>, recycled: Counter) -> Shelf {
        Shelf {
            usage,
            recycled,
            ..Default::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Shelved>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes shelved files left by an earlier runtimed in `dir` (they
    /// belong to no Run and are in no gauge). Returns how many.
    pub fn clear_leftovers(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Moves a removed log's data file of `size` bytes onto the shelf; false
    /// when it does not qualify (too small, shelf full, rename failed) and
    /// the caller deletes it. Its bytes stay counted in the spool gauge.
    pub fn put(&self, data_path: &Path, size: u64) -> bool {
        if size < MIN_BYTES {
            return false;
        }
        let mut files = self.lock();
        if files.len() >= MAX_FILES {
            return false;
        }
        let n = self.names.fetch_add(1, Ordering::Relaxed);
        let path = data_path.with_file_name(format!("{PREFIX}{n}.log"));
        if std::fs::rename(data_path, &path).is_err() {
            return false;
        }
        files.push(Shelved { path, size });
        true
    }

    /// Renames the most recently shelved file to `data_path` and returns its
    /// size (still counted in the gauge, now on the taker's behalf).
    pub fn take(&self, data_path: &Path) -> Option<u64> {
        let mut files = self.lock();
        while let Some(f) = files.pop() {
            if std::fs::rename(&f.path, data_path).is_ok() {
                self.recycled.inc();
                return Some(f.size);
            }
            // Gone under us (someone cleaned the directory): try the next.
            tracing::warn!(path = %f.path.display(), "a recycled spool file could not be taken");
            self.usage.fetch_sub(f.size, Ordering::Relaxed);
        }
        None
    }

    /// Deletes shelved files, oldest first, until at least `want` bytes are
    /// freed or none is left; they leave the gauge. Returns the bytes freed.
    pub fn discard(&self, want: u64) -> u64 {
        let mut files = self.lock();
        let mut freed = 0;
        while freed < want && !files.is_empty() {
            let f = files.remove(0);
            if let Err(e) = std::fs::remove_file(&f.path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %f.path.display(), error = %e, "cannot delete a recycled spool file");
            }
            freed += f.size;
        }
        self.usage.fetch_sub(freed, Ordering::Relaxed);
        freed
    }

    /// Bytes on the shelf.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().iter().map(|f| f.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, name: &str, size: u64) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    #[test]
    fn put_take_discard_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let taken = Counter::default();
        // The gauge as spools leave it: the shelved files' bytes counted.
        let usage = Arc::new(AtomicU64::new(3 * MIN_BYTES));
        let shelf = Shelf::new(usage.clone(), taken.clone());
        // Too small: stays where it is, for the caller to delete.
        let small = file(dir.path(), "s.log", MIN_BYTES - 1);
        assert!(!shelf.put(&small, MIN_BYTES - 1));
        assert!(small.exists());
        for (i, size) in [MIN_BYTES, 2 * MIN_BYTES].into_iter().enumerate() {
            let p = file(dir.path(), &format!("r{i}.log"), size);
            assert!(shelf.put(&p, size));
            assert!(!p.exists());
        }
        let third = file(dir.path(), "r2.log", MIN_BYTES);
        assert!(!shelf.put(&third, MIN_BYTES), "at most MAX_FILES");
        assert_eq!(shelf.bytes(), 3 * MIN_BYTES);

        // The newest first; the file keeps its bytes.
        let new = dir.path().join("new.log");
        assert_eq!(shelf.take(&new), Some(2 * MIN_BYTES));
        assert_eq!(std::fs::metadata(&new).unwrap().len(), 2 * MIN_BYTES);
        assert_eq!(taken.get(), 1);
        assert_eq!(shelf.discard(1), MIN_BYTES);
        assert_eq!(shelf.bytes(), 0);
        assert_eq!(
            usage.load(Ordering::Relaxed),
            2 * MIN_BYTES,
            "the taken file's bytes stay, now the taker's"
        );
        assert_eq!(shelf.take(&dir.path().join("none.log")), None);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// A shelved file deleted behind runtimed's back is not handed out, and
    /// its bytes leave the gauge.
    #[test]
    fn a_lost_shelved_file_leaves_the_gauge() {
        let dir = tempfile::tempdir().unwrap();
        let usage = Arc::new(AtomicU64::new(MIN_BYTES));
        let shelf = Shelf::new(usage.clone(), Counter::default());
        let p = file(dir.path(), "r.log", MIN_BYTES);
        assert!(shelf.put(&p, MIN_BYTES));
        assert_eq!(Shelf::clear_leftovers(dir.path()), 1);
        assert_eq!(shelf.take(&dir.path().join("new.log")), None);
        assert_eq!((shelf.bytes(), usage.load(Ordering::Relaxed)), (0, 0));
    }

    #[test]
    fn leftovers_of_an_earlier_process_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let shelf = Shelf::default();
        let p = file(dir.path(), "r.log", MIN_BYTES);
        assert!(shelf.put(&p, MIN_BYTES));
        let run_log = file(dir.path(), "other.log", 10);
        assert_eq!(Shelf::clear_leftovers(dir.path()), 1);
        assert!(run_log.exists());
        assert_eq!(Shelf::clear_leftovers(dir.path()), 0);
    }
}
