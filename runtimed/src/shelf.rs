//! Recycled spool files. When a Run's log is removed (Forget, or
//! `--max-finished-runs`), its data and index files are put on this shelf
//! instead of being deleted, and the next Run that needs files takes them
//! and writes over them in place, as databases recycle WAL segments.
//!
//! A large data file (at least [`LARGE_BYTES`]) keeps its blocks allocated
//! and its page-cache pages cached, so the next Run whose output outgrows
//! the in-memory hold pays neither ext4's allocation nor fresh page-cache
//! pages, the dominant cost of spooling a fast writer (on VMs with free page
//! reporting a fresh page faults in the host first). A small pair spares a
//! short Run's log the creation of two inodes and the deletion of two more,
//! the costliest part of keeping it (on ext4 without a journal, creating an
//! inode walks past every inode freed in the last minutes: ~0.8 ms each
//! after 20000 files were deleted on the same filesystem).
//!
//! Freeing a large file's cached pages is slow (~63 ms per GiB here), so
//! it never runs on runtimed's event loop: a shelved data file is cut to
//! [`KEEP_BYTES`] on tokio's blocking pool before it is handed out, and a
//! large file that is not shelved is renamed away and deleted there.
//!
//! Bounds: at most [`MAX_LARGE`] large and [`MAX_SMALL`] small pairs; their
//! data bytes stay in the spool budget's gauge, and the budget discards them
//! before any log is evicted. A shelved index is always empty (it is emptied
//! before it is shelved, so no crash can leave a Run with another's
//! records). Shelved files are named `.recycled-N.log` and `.recycled-N.idx`
//! in the spool directory (Run ids never start with '.'); leftovers of an
//! earlier process are deleted at start-up.

use prometheus_client::metrics::counter::Counter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Data files of at least this size are large: kept for output that
/// outgrows the hold, never handed to a short log.
pub const LARGE_BYTES: u64 = 1 << 20;
/// Large pairs kept at most.
pub const MAX_LARGE: usize = 2;
/// A shelved data file is cut to this size: a log handed off by its
/// Runtime Server cuts a recycled file's stale bytes before its first
/// splice (see `spool`), on the Run's path, where freeing a GiB of cached
/// pages took 63 ms here; a log written by messages (not handed off, so
/// slower) rarely outgrows it. The cut itself runs off the event loop,
/// and the file is handed out only after it.
pub const KEEP_BYTES: u64 = 64 << 20;
/// Small pairs kept at most: a burst of short Runs forgotten together.
pub const MAX_SMALL: usize = 16;

const PREFIX: &str = ".recycled-";
/// A large removed file waiting to be deleted off the event loop.
const DOOMED: &str = ".deleting-";

struct Shelved {
    data: PathBuf,
    /// `None` when the index could not be shelved with its data file.
    idx: Option<PathBuf>,
    size: u64,
    /// False while the data file is being cut to [`KEEP_BYTES`]: not
    /// handed out nor discarded yet.
    ready: bool,
}

impl Shelved {
    fn large(&self) -> bool {
        self.size >= LARGE_BYTES
    }

    /// Deletes the shelved files (one already gone is fine).
    fn delete(&self) {
        for path in std::iter::once(&self.data).chain(&self.idx) {
            if let Err(e) = std::fs::remove_file(path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete a recycled spool file");
            }
        }
    }
}

#[derive(Default)]
pub struct Shelf {
    /// Oldest first.
    files: Mutex<Vec<Shelved>>,
    names: AtomicU64,
    /// The spool budget's gauge, which counts the shelved data files' bytes:
    /// the shelf takes off what it deletes or loses.
    usage: Arc<AtomicU64>,
    /// Data files taken (`runtimed_spool_files_recycled_total`).
    recycled: Counter,
}

impl Shelf {
    /// A shelf whose files count in `usage` and that counts the data files
    /// it hands out in `recycled`.
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

    /// Deletes shelved files (and files left to delete) of an earlier
    /// runtimed in `dir` (they belong to no Run and are in no gauge).
    /// Returns how many.
    pub fn clear_leftovers(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(PREFIX) || name.starts_with(DOOMED)
            })
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Moves a removed log's files (a data file of `size` bytes, cut to
    /// [`KEEP_BYTES`], and its index, emptied first) onto the shelf; false
    /// when they do not fit (that class is full, the rename failed) and the
    /// caller deletes them. The data bytes kept stay counted in the spool
    /// gauge.
    pub fn put(self: &Arc<Self>, data: &Path, idx: &Path, size: u64) -> bool {
        let mut files = self.lock();
        let large = size >= LARGE_BYTES;
        let max = if large { MAX_LARGE } else { MAX_SMALL };
        if files.iter().filter(|f| f.large() == large).count() >= max {
            return false;
        }
        let n = self.names.fetch_add(1, Ordering::Relaxed);
        let shelved = |ext: &str| data.with_file_name(format!("{PREFIX}{n}.{ext}"));
        let (data_to, idx_to) = (shelved("log"), shelved("idx"));
        if std::fs::rename(data, &data_to).is_err() {
            return false;
        }
        let idx = if nix::unistd::truncate(idx, 0).is_ok() && std::fs::rename(idx, &idx_to).is_ok()
        {
            Some(idx_to)
        } else {
            let _ = std::fs::remove_file(idx);
            None
        };
        let ready = size <= KEEP_BYTES;
        files.push(Shelved {
            data: data_to.clone(),
            idx,
            size,
            ready,
        });
        drop(files);
        if !ready {
            let shelf = Arc::clone(self);
            off_the_loop(move || shelf.cut(&data_to, size));
        }
        true
    }

    /// Cuts a shelved data file of `size` bytes to [`KEEP_BYTES`] and makes
    /// it available (or deletes it if it cannot be cut).
    fn cut(&self, data: &Path, size: u64) {
        let cut = nix::unistd::truncate(data, KEEP_BYTES as i64);
        let mut files = self.lock();
        let Some(at) = files.iter().position(|f| f.data == data) else {
            return;
        };
        match cut {
            Ok(()) => {
                files[at].size = KEEP_BYTES;
                files[at].ready = true;
                self.usage.fetch_sub(size - KEEP_BYTES, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(path = %data.display(), error = %e, "cannot cut a recycled spool file; deleted");
                files.remove(at).delete();
                self.usage.fetch_sub(size, Ordering::Relaxed);
            }
        }
    }

    /// Renames the newest fitting pair to `data` and `idx` (a large one
    /// first when `large_ok`, else only a small one) and returns the data
    /// file's size, still counted in the gauge, now on the taker's behalf.
    /// The index is empty; without one on the shelf, none is put at `idx`.
    pub fn take(&self, data: &Path, idx: &Path, large_ok: bool) -> Option<u64> {
        let mut files = self.lock();
        loop {
            let newest = |large: bool| files.iter().rposition(|f| f.ready && f.large() == large);
            let at = if large_ok {
                newest(true).or_else(|| newest(false))
            } else {
                newest(false)
            }?;
            let f = files.remove(at);
            if std::fs::rename(&f.data, data).is_ok() {
                if let Some(shelved) = &f.idx
                    && std::fs::rename(shelved, idx).is_err()
                {
                    let _ = std::fs::remove_file(shelved);
                }
                self.recycled.inc();
                return Some(f.size);
            }
            // Gone under us (someone cleaned the directory): try the next.
            tracing::warn!(path = %f.data.display(), "a recycled spool file could not be taken");
            if let Some(shelved) = &f.idx {
                let _ = std::fs::remove_file(shelved);
            }
            self.usage.fetch_sub(f.size, Ordering::Relaxed);
        }
    }

    /// Deletes shelved pairs, oldest first, until at least `want` bytes are
    /// freed or none is left (pairs still being cut are left); they leave
    /// the gauge. Returns the bytes freed.
    pub fn discard(&self, want: u64) -> u64 {
        let mut files = self.lock();
        let mut freed = 0;
        while freed < want {
            let Some(at) = files.iter().position(|f| f.ready) else {
                break;
            };
            let f = files.remove(at);
            f.delete();
            freed += f.size;
        }
        self.usage.fetch_sub(freed, Ordering::Relaxed);
        freed
    }

    /// Data bytes on the shelf.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().iter().map(|f| f.size).sum()
    }
}

/// Deletes a removed log's files that do not go on a shelf. A large data
/// file is first renamed to `.deleting-N.log` (so a new log of the same Run
/// id is never hit) and deleted off the event loop: freeing its cached
/// pages takes ~63 ms per GiB here.
pub fn delete(data: &Path, idx: &Path, size: u64) {
    static DOOMED_NAMES: AtomicU64 = AtomicU64::new(0);
    let _ = std::fs::remove_file(idx);
    if size >= LARGE_BYTES {
        let n = DOOMED_NAMES.fetch_add(1, Ordering::Relaxed);
        let doomed = data.with_file_name(format!("{DOOMED}{n}.log"));
        if std::fs::rename(data, &doomed).is_ok() {
            off_the_loop(move || {
                let _ = std::fs::remove_file(doomed);
            });
            return;
        }
    }
    let _ = std::fs::remove_file(data);
}

/// Runs `f` on tokio's blocking pool when there is a runtime (freeing a
/// large file's pages must not stall runtimed's event loop), else at once.
pub fn off_the_loop(f: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(f)),
        Err(_) => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A removed log's pair: a data file of `size` bytes and a non-empty index.
    fn pair(dir: &Path, name: &str, size: u64) -> (PathBuf, PathBuf) {
        let (data, idx) = (
            dir.join(format!("{name}.log")),
            dir.join(format!("{name}.idx")),
        );
        std::fs::File::create(&data).unwrap().set_len(size).unwrap();
        std::fs::write(&idx, [7u8; 64]).unwrap();
        (data, idx)
    }

    fn shelved(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(PREFIX))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn put_take_discard_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let taken = Counter::default();
        let (large, small) = (LARGE_BYTES, 4096);
        let shelf = Arc::new(Shelf::new(Default::default(), taken.clone()));
        for i in 0..MAX_LARGE as u64 {
            let (data, idx) = pair(dir.path(), &format!("l{i}"), large + i);
            assert!(shelf.put(&data, &idx, large + i));
            assert!(!data.exists() && !idx.exists());
        }
        let (data, idx) = pair(dir.path(), "l", large);
        assert!(!shelf.put(&data, &idx, large), "at most MAX_LARGE");
        assert!(data.exists() && idx.exists(), "left for the caller");
        for i in 0..MAX_SMALL as u64 {
            let (data, idx) = pair(dir.path(), &format!("s{i}"), small + i);
            assert!(
                shelf.put(&data, &idx, small + i),
                "small ones have room of their own"
            );
        }
        let (data, idx) = pair(dir.path(), "s", small);
        assert!(!shelf.put(&data, &idx, small), "at most MAX_SMALL");
        assert_eq!(shelved(dir.path()).len(), 2 * (MAX_LARGE + MAX_SMALL));

        // A short log gets the newest small pair, never a large one; the
        // index comes empty, the data file with its bytes.
        let (d, i) = (dir.path().join("short.log"), dir.path().join("short.idx"));
        let last_small = small + MAX_SMALL as u64 - 1;
        assert_eq!(shelf.take(&d, &i, false), Some(last_small));
        assert_eq!(std::fs::metadata(&d).unwrap().len(), last_small);
        assert_eq!(std::fs::metadata(&i).unwrap().len(), 0);
        // A growing log gets the newest large pair first.
        let (d, i) = (dir.path().join("big.log"), dir.path().join("big.idx"));
        assert_eq!(shelf.take(&d, &i, true), Some(large + 1));
        assert_eq!(taken.get(), 2);

        // The budget: oldest first, both files go.
        assert_eq!(shelf.discard(1), large);
        assert_eq!(
            shelf.bytes(),
            (0..MAX_SMALL as u64 - 1).map(|i| small + i).sum::<u64>()
        );
        let (d, i) = (dir.path().join("b2.log"), dir.path().join("b2.idx"));
        assert_eq!(
            shelf.take(&d, &i, true),
            Some(small + MAX_SMALL as u64 - 2),
            "no large one left"
        );
        shelf.discard(u64::MAX);
        assert_eq!(shelf.bytes(), 0);
        assert!(shelved(dir.path()).is_empty(), "{:?}", shelved(dir.path()));
        assert_eq!(shelf.take(&d, &i, false), None);
    }

    /// A data file larger than KEEP_BYTES is cut to it on the shelf (at
    /// once without a tokio runtime, on its blocking pool with one) and
    /// only then handed out; the bytes cut leave the gauge.
    fn cut_when_shelved(shelf: &Arc<Shelf>, usage: &AtomicU64, dir: &Path) {
        let huge = KEEP_BYTES + LARGE_BYTES;
        usage.store(huge, Ordering::Relaxed);
        let (data, idx) = pair(dir, "r", huge);
        assert!(shelf.put(&data, &idx, huge));
        let (d, i) = (dir.join("new.log"), dir.join("new.idx"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let taken = loop {
            if let Some(size) = shelf.take(&d, &i, true) {
                break size;
            }
            assert!(std::time::Instant::now() < deadline, "never ready");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(taken, KEEP_BYTES);
        assert_eq!(std::fs::metadata(&d).unwrap().len(), KEEP_BYTES);
        assert_eq!(usage.load(Ordering::Relaxed), KEEP_BYTES);
    }

    #[test]
    fn a_huge_data_file_is_cut_when_shelved() {
        let dir = tempfile::tempdir().unwrap();
        let usage = Arc::new(AtomicU64::new(0));
        let shelf = Arc::new(Shelf::new(usage.clone(), Counter::default()));
        cut_when_shelved(&shelf, &usage, dir.path());
    }

    #[tokio::test]
    async fn a_huge_data_file_is_cut_off_the_event_loop() {
        let dir = tempfile::tempdir().unwrap();
        let usage = Arc::new(AtomicU64::new(0));
        let shelf = Arc::new(Shelf::new(usage.clone(), Counter::default()));
        cut_when_shelved(&shelf, &usage, dir.path());
        // Where such work runs: not on the runtime's own thread.
        let (tx, rx) = std::sync::mpsc::channel();
        off_the_loop(move || tx.send(std::thread::current().id()).unwrap());
        let ran_on = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_ne!(ran_on, std::thread::current().id());
    }

    /// A large log's files that do not go on the shelf are deleted off the
    /// event loop, and a new log of the same Run id is never hit.
    #[tokio::test]
    async fn a_large_file_is_deleted_off_the_loop_under_another_name() {
        let dir = tempfile::tempdir().unwrap();
        let (data, idx) = pair(dir.path(), "r", LARGE_BYTES);
        delete(&data, &idx, LARGE_BYTES);
        assert!(!data.exists() && !idx.exists());
        std::fs::write(&data, b"the next log of r").unwrap();
        assert!(shelved(dir.path()).is_empty(), "not on the shelf");
        let doomed = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with(DOOMED)
                })
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while doomed() > 0 {
            assert!(std::time::Instant::now() < deadline, "never deleted");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(std::fs::read(&data).unwrap(), b"the next log of r");
        let (small, small_idx) = pair(dir.path(), "s", 10);
        delete(&small, &small_idx, 10);
        assert!(!small.exists() && !small_idx.exists());
    }

    /// A shelved file deleted behind runtimed's back is not handed out, and
    /// its bytes leave the gauge.
    #[test]
    fn a_lost_shelved_file_leaves_the_gauge() {
        let dir = tempfile::tempdir().unwrap();
        let usage = Arc::new(AtomicU64::new(LARGE_BYTES));
        let shelf = Arc::new(Shelf::new(usage.clone(), Counter::default()));
        let (data, idx) = pair(dir.path(), "r", LARGE_BYTES);
        assert!(shelf.put(&data, &idx, LARGE_BYTES));
        assert_eq!(Shelf::clear_leftovers(dir.path()), 2);
        let (d, i) = (dir.path().join("new.log"), dir.path().join("new.idx"));
        assert_eq!(shelf.take(&d, &i, true), None);
        assert!(!i.exists());
        assert_eq!((shelf.bytes(), usage.load(Ordering::Relaxed)), (0, 0));
    }

    #[test]
    fn leftovers_of_an_earlier_process_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let shelf = Arc::new(Shelf::default());
        let (data, idx) = pair(dir.path(), "r", 10);
        assert!(shelf.put(&data, &idx, 10));
        let (run_log, run_idx) = pair(dir.path(), "other", 10);
        std::fs::write(dir.path().join(format!("{DOOMED}7.log")), b"x").unwrap();
        assert_eq!(Shelf::clear_leftovers(dir.path()), 3);
        assert!(run_log.exists() && run_idx.exists());
        assert_eq!(Shelf::clear_leftovers(dir.path()), 0);
    }
}
