//! The per-Run log spool: an append-only file of the combined output (stdout
//! and stderr interleaved in arrival order) plus an index of records saying
//! which stream each byte range came from, its offset within that stream and
//! when it arrived (microseconds). Followers read from the file at any offset
//! and wait on a watch channel for more; nothing is held in memory but the
//! index, so a slow or absent reader costs disk, not RAM.
//!
//! Files: `<dir>/<run>.log` (raw bytes; file position == combined offset) and
//! `<dir>/<run>.idx` (32-byte little-endian records, see [`Record`]). A Run's
//! first [`HOLD_MAX`] bytes are held in memory and the files created only
//! when more arrive or, via [`Spool::persist`], once the Run's result has
//! been sent: creating two files (two inodes) is the costliest step of a
//! short Run's exit, and a Run that prints nothing costs no inodes. Held
//! bytes are safe: until runtimed has persisted them and saved the Run as
//! finished, it has not sent the Runtime Server `Forget`, and the server
//! replays them to a runtimed restarted after a crash. Data is written
//! before its index record, so after a crash the index never points past the
//! data: [`Spool::open`] trims whatever the index does not cover, and runtimed
//! re-attaches to the Runtime Server from the per-stream offsets the index
//! records (the server replays what it still buffers).
//!
//! Output handed off by the Runtime Server (a fast writer's pipe, see
//! `drain`) is moved from the pipe into the data file with `splice(2)`: the
//! bytes leave the pipe exactly when they enter the file, so a SIGKILL
//! cannot lose any. Its index record is written *before* the splice, for
//! the bytes the pipe holds; after a crash in between, [`Spool::open`]
//! shortens that last record to the data that did arrive (the rest is still
//! in the pipe, read again after re-attaching). The copy itself runs without
//! the lock readers take (only the writer lock that orders all appends), so
//! followers keep reading while fresh page-cache pages are filled.
//!
//! A per-Run cap bounds the log: bytes past it are dropped and counted, and a
//! zero-length marker record at the cap says where (followers get an in-band
//! Truncated event there).
//!
//! A Run's files may be a removed log's, taken from the [`Shelf`]: a large
//! pair (with its blocks and cached pages) for output that outgrows the
//! hold, a small one for a short log that is persisted, sparing two inodes.
//! The index comes empty; the data file is written over: data is written
//! at explicit offsets, never appended, and
//! the stale bytes past the log's length are never read (the index bounds
//! every read, and [`Spool::open`] trims them after a crash); when the log
//! is closed the file is cut to the log's length, and so it is before the
//! first splice (the recovery of a splice reads the file's size).

use crate::shelf::Shelf;
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Which output stream a byte came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdout,
    Stderr,
}

impl StreamKind {
    fn code(self) -> u8 {
        match self {
            StreamKind::Stdout => 1,
            StreamKind::Stderr => 2,
        }
    }
}

/// Index code of the truncation marker record.
const MARKER: u8 = 3;

/// One appended range of the combined log.
#[derive(Debug, Clone, Copy)]
pub struct Record {
    pub offset: u64,
    pub stream_offset: u64,
    pub time_us: u64,
    pub len: u32,
    pub stream: StreamKind,
}

impl Record {
    const SIZE: usize = 32;

    fn encode(&self, code: u8) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.stream_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.time_us.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28] = code;
        b
    }

    /// Decodes one index record; `None` for a marker, `Err` for garbage.
    fn decode(b: &[u8]) -> Result<Option<Record>, ()> {
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(&b[24..28]);
        let stream = match b[28] {
            1 => StreamKind::Stdout,
            2 => StreamKind::Stderr,
            MARKER => return Ok(None),
            _ => return Err(()),
        };
        Ok(Some(Record {
            offset: u64_at(0),
            stream_offset: u64_at(8),
            time_us: u64_at(16),
            len: u32::from_le_bytes(len),
            stream,
        }))
    }

    fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// What followers watch: how much is durable in the log, and whether the
/// writer has finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub len: u64,
    pub closed: bool,
}

/// A contiguous piece of one stream read back from the spool.
#[derive(Debug)]
pub struct Chunk {
    pub stream: StreamKind,
    pub offset: u64,
    pub data: Bytes,
}

/// Largest chunk kept in memory for followers that keep up.
const MAX_RECENT: usize = 1 << 20;
/// The same for a closed log: it may be kept long after its Run finished.
const MAX_RECENT_CLOSED: usize = 64 << 10;
/// Output held in memory before the files exist (well below what a Runtime
/// Server retains for replay: 2 MiB behind what it sent).
pub const HOLD_MAX: usize = 64 << 10;

struct Inner {
    index: Vec<Record>,
    /// The write handles: `None` until the first output creates the files,
    /// and again once the log is closed (a finished Run holds no descriptor;
    /// readers open the data file when they need it) or removed.
    idx_file: Option<File>,
    /// Written at explicit offsets (no `O_APPEND`: `splice` refuses it, and a
    /// recycled file holds stale bytes past the log's end).
    data: Option<Arc<File>>,
    /// The size of a recycled data file taken from the shelf while it is
    /// larger than the log: the gauge counts `max(len, reserved)`.
    reserved: u64,
    /// Whether the files exist (created when output outgrows `held`, by
    /// `persist`, or found after a restart).
    created: bool,
    /// Output not written yet, from offset 0: every record so far while the
    /// files do not exist.
    held: Vec<u8>,
    /// Whether the files were removed (the bytes left the usage gauge).
    removed: bool,
    /// The last appended record's bytes, from combined offset `.0`.
    recent: Option<(u64, Bytes)>,
    len: u64,
    stdout_len: u64,
    stderr_len: u64,
    /// Where output started being dropped, once the cap was reached.
    truncated_at: Option<u64>,
    dropped: u64,
}

pub struct Spool {
    data_path: PathBuf,
    idx_path: PathBuf,
    cap: u64,
    /// Held by whoever appends (messages or splices) for the whole append;
    /// taken before `inner`.
    writer: Mutex<()>,
    inner: Mutex<Inner>,
    progress: watch::Sender<Progress>,
    evicted: std::sync::atomic::AtomicBool,
    /// Bytes in all live spools of this runtimed (the spool budget's gauge).
    usage: Arc<AtomicU64>,
    /// Where a removed data file goes, and a large log's file comes from.
    shelf: Option<Arc<Shelf>>,
}

/// Where a reader gets a log's bytes.
enum Source {
    File(Arc<File>),
    /// A copy of the held output (it starts at offset 0).
    Held(Bytes),
}

impl Source {
    /// The bytes of `start..end`.
    fn read(&self, start: u64, end: u64) -> std::io::Result<Bytes> {
        let len = usize::try_from(end.saturating_sub(start)).unwrap_or(0);
        match self {
            Source::File(f) => {
                let mut data = vec![0u8; len];
                f.read_exact_at(&mut data, start)?;
                Ok(data.into())
            }
            Source::Held(b) => {
                let from = usize::try_from(start).unwrap_or(usize::MAX);
                b.get(from..from.saturating_add(len))
                    .map(|_| b.slice(from..from + len))
                    .ok_or_else(|| std::io::Error::other("held output shorter than its index"))
            }
        }
    }
}

/// Truncation state of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    pub offset: u64,
    pub dropped: u64,
}

/// What the gauge grows by when a log of `len` bytes (after growing by
/// `added`) lies in a file of at least `reserved` bytes already counted.
fn grown(len: u64, added: u64, reserved: u64) -> u64 {
    len.saturating_sub(len.saturating_sub(added).max(reserved))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Spool {
    /// A new, empty spool for a Run, holding at most `cap` bytes; its files
    /// are created by the first append. `usage` counts the bytes of all spools.
    pub fn create(dir: &Path, run_id: &str, cap: u64, usage: Arc<AtomicU64>) -> Spool {
        Spool {
            data_path: dir.join(format!("{run_id}.log")),
            idx_path: dir.join(format!("{run_id}.idx")),
            cap,
            writer: Mutex::new(()),
            inner: Mutex::new(Inner {
                index: Vec::new(),
                idx_file: None,
                data: None,
                reserved: 0,
                created: false,
                held: Vec::new(),
                removed: false,
                recent: None,
                len: 0,
                stdout_len: 0,
                stderr_len: 0,
                truncated_at: None,
                dropped: 0,
            }),
            progress: watch::channel(Progress::default()).0,
            evicted: Default::default(),
            usage,
            shelf: None,
        }
    }

    /// Recycles data files through `shelf` (see the module doc).
    pub fn with_shelf(mut self, shelf: Arc<Shelf>) -> Spool {
        self.shelf = Some(shelf);
        self
    }

    /// Re-opens the spool of a Run after a restart: keeps every whole index
    /// record the data file covers and trims the rest, so what follows is
    /// appended exactly where the durable log ends.
    pub fn open(
        dir: &Path,
        run_id: &str,
        cap: u64,
        closed: bool,
        usage: Arc<AtomicU64>,
    ) -> std::io::Result<Spool> {
        let spool = Spool::create(dir, run_id, cap, usage);
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&spool.data_path);
        let idx = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&spool.idx_path);
        let (data, idx_file) = match (data, idx) {
            (Ok(d), Ok(i)) => (d, i),
            // Nothing was ever spooled (the files come with the first output).
            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                if closed {
                    spool.close();
                }
                return Ok(spool);
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let raw = std::fs::read(&spool.idx_path)?;
        let data_len = data.metadata()?.len();
        let mut index = Vec::with_capacity(raw.len() / Record::SIZE);
        let (mut len, mut stdout_len, mut stderr_len) = (0u64, 0u64, 0u64);
        let mut truncated_at = None;
        let mut kept = 0usize;
        let records = raw.chunks_exact(Record::SIZE).count();
        // The last record may have been written for a splice that moved
        // fewer bytes (or none) before the crash: it keeps what arrived.
        let mut shortened = None;
        for (n, b) in raw.chunks_exact(Record::SIZE).enumerate() {
            let mut r = match Record::decode(b) {
                Ok(Some(r)) if r.offset == len => r,
                Ok(None) => {
                    truncated_at = Some(len);
                    kept += Record::SIZE;
                    continue;
                }
                _ => break,
            };
            if r.end() > data_len {
                if n + 1 < records || data_len <= r.offset {
                    break;
                }
                r.len = u32::try_from(data_len - r.offset).unwrap_or(0);
                shortened = Some(r);
            }
            len = r.end();
            let end = r.stream_offset + u64::from(r.len);
            match r.stream {
                StreamKind::Stdout => stdout_len = stdout_len.max(end),
                StreamKind::Stderr => stderr_len = stderr_len.max(end),
            }
            index.push(r);
            if shortened.is_some() {
                // Written back below, after the records before it.
                break;
            }
            kept += Record::SIZE;
        }
        idx_file.set_len(kept as u64)?;
        if let Some(r) = shortened {
            (&idx_file).write_all(&r.encode(r.stream.code()))?;
        }
        data.set_len(len)?;
        {
            let mut inner = spool.lock();
            inner.index = index;
            inner.idx_file = Some(idx_file);
            inner.data = Some(Arc::new(data));
            inner.created = true;
            inner.len = len;
            inner.stdout_len = stdout_len;
            inner.stderr_len = stderr_len;
            inner.truncated_at = truncated_at;
        }
        spool.usage.fetch_add(len, Ordering::Relaxed);
        spool.progress.send_modify(|p| p.len = len);
        if closed {
            spool.close();
        }
        Ok(spool)
    }

    /// Creates both files for an append (not after the log is closed) and
    /// writes what was held; the output outgrew the hold, so a large
    /// recycled pair suits it best.
    fn create_files(&self, inner: &mut Inner) -> std::io::Result<()> {
        if self.progress().closed {
            // Its handles are gone; a late append must not re-create the files.
            return Err(std::io::Error::other("the spool is closed"));
        }
        self.open_files(inner, true)
    }

    /// Creates both files (once; from a recycled pair when the shelf has
    /// one that fits, a large one only if `large_ok`) and writes the held
    /// output into them.
    fn open_files(&self, inner: &mut Inner, large_ok: bool) -> std::io::Result<()> {
        if inner.removed {
            return Err(std::io::Error::other("the spool was removed"));
        }
        if inner.idx_file.is_some() || inner.created {
            return Ok(());
        }
        let recycled = self
            .shelf
            .as_ref()
            .and_then(|shelf| shelf.take(&self.data_path, &self.idx_path, large_ok));
        let (idx_file, data) = match self.write_held(inner, recycled.is_some()) {
            Ok(files) => files,
            Err(e) => {
                if let Some(size) = recycled {
                    // Of no use to this log: deleted, its bytes leave the gauge.
                    let _ = std::fs::remove_file(&self.data_path);
                    let _ = std::fs::remove_file(&self.idx_path);
                    self.usage.fetch_sub(size, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        if let Some(size) = recycled {
            // The shelf's bytes were in the gauge already; the held ones
            // were written over part of them.
            inner.reserved = size;
            self.usage.fetch_sub(inner.len.min(size), Ordering::Relaxed);
        }
        inner.held = Vec::new();
        inner.idx_file = Some(idx_file);
        inner.data = Some(Arc::new(data));
        inner.created = true;
        Ok(())
    }

    /// Opens (creating) both files and writes the held output and its index
    /// records into them; a `recycled` data file keeps its stale bytes past
    /// the log, any other is emptied, and so is any index.
    fn write_held(&self, inner: &Inner, recycled: bool) -> std::io::Result<(File, File)> {
        let open = |p: &Path, append: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .append(append)
                .create(true)
                .open(p)
        };
        let mut idx_file = match open(&self.idx_path, true) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = self.idx_path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                open(&self.idx_path, true)?
            }
            r => r?,
        };
        // A stale index of an unknown earlier Run with this id is emptied (a
        // recycled one is empty already), and so is such a data file.
        if idx_file.metadata()?.len() > 0 {
            idx_file.set_len(0)?;
        }
        let data = open(&self.data_path, false)?;
        if !recycled && data.metadata()?.len() > 0 {
            data.set_len(0)?;
        }
        // Everything so far was held: the index has no marker yet (a
        // truncation creates the files first).
        data.write_all_at(&inner.held, 0)?;
        let records: Vec<u8> = inner
            .index
            .iter()
            .flat_map(|r| r.encode(r.stream.code()))
            .collect();
        idx_file.write_all(&records)?;
        Ok((idx_file, data))
    }

    /// Writes held output to the files (creating them, or taking a small
    /// recycled pair); for a finished Run, once its result has gone out.
    /// The handles are dropped again if the log is closed.
    pub fn persist(&self) -> std::io::Result<()> {
        let mut inner = self.lock();
        if inner.held.is_empty() {
            return Ok(());
        }
        self.open_files(&mut inner, false)?;
        if self.progress().closed {
            self.cut_finished(&mut inner);
            inner.idx_file = None;
            inner.data = None;
        }
        Ok(())
    }

    /// Cuts a recycled data file's stale bytes past the log, so the file is
    /// exactly the log (and so is the gauge): when the log is finished, and
    /// before the first splice (see [`Spool::splice_from`]).
    fn cut_stale_tail(&self, inner: &mut Inner) -> std::io::Result<()> {
        if inner.reserved <= inner.len {
            return Ok(());
        }
        let Some(data) = &inner.data else {
            return Ok(());
        };
        data.set_len(inner.len)?;
        self.usage
            .fetch_sub(inner.reserved - inner.len, Ordering::Relaxed);
        inner.reserved = 0;
        Ok(())
    }

    /// [`Spool::cut_stale_tail`] for a finished log: a failure leaves
    /// stale bytes no read reaches, so it is only logged.
    fn cut_finished(&self, inner: &mut Inner) {
        if let Err(e) = self.cut_stale_tail(inner) {
            tracing::warn!(path = %self.data_path.display(), error = %e, "cannot cut a recycled spool file to its log");
        }
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the index inconsistent
        // with itself (pushes are last), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends bytes of `stream` that start at `stream_offset` within it.
    /// Bytes already spooled (a replay after re-attaching) are skipped, so each
    /// byte is stored exactly once. Returns how many bytes were new.
    pub fn append(
        &self,
        stream: StreamKind,
        stream_offset: u64,
        data: Bytes,
    ) -> std::io::Result<usize> {
        let _writer = self.writer();
        let mut inner = self.lock();
        let have = match stream {
            StreamKind::Stdout => inner.stdout_len,
            StreamKind::Stderr => inner.stderr_len,
        };
        let end = stream_offset + data.len() as u64;
        if end <= have {
            return Ok(0);
        }
        if stream_offset > have {
            tracing::warn!(
                ?stream,
                expected = have,
                got = stream_offset,
                "gap in runtime server output; bytes in between were lost"
            );
        }
        let skip = usize::try_from(have.saturating_sub(stream_offset)).unwrap_or(data.len());
        let all_new = data.slice(skip..);
        let room = usize::try_from(self.cap.saturating_sub(inner.len)).unwrap_or(usize::MAX);
        let new = all_new.slice(..all_new.len().min(room));
        let dropped = (all_new.len() - new.len()) as u64;
        let hold = !inner.created
            && dropped == 0
            && inner.held.len() + new.len() <= HOLD_MAX
            && !self.progress().closed;
        if !hold && (!new.is_empty() || dropped > 0) {
            self.create_files(&mut inner)?;
        }
        let inner = &mut *inner;
        if !hold && (inner.data.is_none() || inner.idx_file.is_none()) {
            return Ok(0);
        }
        let mut pos = 0;
        while pos < new.len() {
            // Records are at most 4 GiB by construction of `len: u32`.
            let piece = &new[pos..new.len().min(pos + (u32::MAX as usize))];
            let rec = Record {
                offset: inner.len,
                stream_offset: stream_offset.max(have) + pos as u64,
                time_us: now_us(),
                len: piece.len() as u32,
                stream,
            };
            match (inner.data.as_ref(), inner.idx_file.as_mut()) {
                (Some(data_file), Some(idx_file)) => {
                    data_file.write_all_at(piece, rec.offset)?;
                    idx_file.write_all(&rec.encode(rec.stream.code()))?;
                }
                _ => inner.held.extend_from_slice(piece),
            }
            inner.recent =
                (piece.len() <= MAX_RECENT).then(|| (inner.len, new.slice(pos..pos + piece.len())));
            inner.len += piece.len() as u64;
            inner.index.push(rec);
            pos += piece.len();
        }
        if dropped > 0 {
            if inner.truncated_at.is_none() {
                let marker = Record {
                    offset: inner.len,
                    stream_offset: 0,
                    time_us: now_us(),
                    len: 0,
                    stream,
                };
                if let Some(idx_file) = inner.idx_file.as_mut() {
                    idx_file.write_all(&marker.encode(MARKER))?;
                }
                inner.truncated_at = Some(inner.len);
                tracing::warn!(
                    cap = self.cap,
                    "run output reached the log cap; dropping the rest"
                );
            }
            inner.dropped += dropped;
        }
        // Stream lengths count dropped bytes too: they are where to re-attach.
        let new_stream_len = stream_offset.max(have) + all_new.len() as u64;
        match stream {
            StreamKind::Stdout => inner.stdout_len = new_stream_len,
            StreamKind::Stderr => inner.stderr_len = new_stream_len,
        }
        let len = inner.len;
        self.usage.fetch_add(
            grown(len, new.len() as u64, inner.reserved),
            Ordering::Relaxed,
        );
        self.progress.send_modify(|p| p.len = len);
        Ok(new.len())
    }

    /// Whether the per-Run cap is reached: further output is dropped.
    pub fn at_cap(&self) -> bool {
        self.lock().len >= self.cap
    }

    /// Moves up to `want` bytes of `stream` from `pipe` (which holds at
    /// least that many; nobody else reads it) to the end of the log, at the
    /// stream's current length. The index record goes first (see the module
    /// doc). Returns the bytes moved; `want` is cut to the cap (use
    /// [`Spool::append`] for what is dropped past it).
    pub fn splice_from(
        &self,
        stream: StreamKind,
        pipe: std::os::fd::BorrowedFd<'_>,
        want: usize,
    ) -> std::io::Result<usize> {
        use nix::fcntl::{SpliceFFlags, splice};
        // Writers one at a time; readers only wait for `inner`, which is not
        // held during the copy itself (the slow part: fresh page-cache pages).
        let _writer = self.writer();
        let (mut rec, idx_at, target) = {
            let mut inner = self.lock();
            let room = usize::try_from(self.cap.saturating_sub(inner.len)).unwrap_or(usize::MAX);
            let want = want.min(room).min(u32::MAX as usize);
            if want == 0 {
                return Ok(0);
            }
            self.create_files(&mut inner)?;
            // After a crash, `open` reads how much of a splice arrived off
            // the data file's size, which a recycled file's stale bytes
            // would hide: they go first (its cached pages with them).
            self.cut_stale_tail(&mut inner)?;
            let inner = &mut *inner;
            let (Some(idx_file), Some(target)) = (inner.idx_file.as_mut(), inner.data.clone())
            else {
                return Err(std::io::Error::other("the spool is closed"));
            };
            let rec = Record {
                offset: inner.len,
                stream_offset: match stream {
                    StreamKind::Stdout => inner.stdout_len,
                    StreamKind::Stderr => inner.stderr_len,
                },
                time_us: now_us(),
                len: want as u32,
                stream,
            };
            let idx_at = idx_file.metadata()?.len();
            idx_file.write_all(&rec.encode(rec.stream.code()))?;
            (rec, idx_at, target)
        };
        let want = rec.len as usize;
        let mut moved = 0usize;
        let mut failed = None;
        while moved < want {
            let mut at = i64::try_from(rec.offset + moved as u64).unwrap_or(i64::MAX);
            match splice(
                pipe,
                None,
                &*target,
                Some(&mut at),
                want - moved,
                SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
            ) {
                Ok(0) => break,
                Ok(n) => moved += n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    failed = Some(std::io::Error::from(e));
                    break;
                }
            }
        }
        let mut inner = self.lock();
        if moved < want {
            // The record said more than arrived: say what did.
            if let Some(idx_file) = inner.idx_file.as_mut() {
                idx_file.set_len(idx_at)?;
                if moved > 0 {
                    rec.len = moved as u32;
                    idx_file.write_all(&rec.encode(rec.stream.code()))?;
                }
            }
        }
        if moved > 0 {
            inner.recent = None;
            inner.len += moved as u64;
            inner.index.push(rec);
            match stream {
                StreamKind::Stdout => inner.stdout_len += moved as u64,
                StreamKind::Stderr => inner.stderr_len += moved as u64,
            }
            let len = inner.len;
            self.usage
                .fetch_add(grown(len, moved as u64, inner.reserved), Ordering::Relaxed);
            self.progress.send_modify(|p| p.len = len);
        }
        match failed {
            Some(e) if moved == 0 => Err(e),
            _ => Ok(moved),
        }
    }

    /// Marks the log complete: followers end once they have read it all.
    /// Drops the write handles, so that finished Runs hold no descriptors,
    /// and keeps the last record in memory only if it is small.
    pub fn close(&self) {
        let mut inner = self.lock();
        self.cut_finished(&mut inner);
        inner.idx_file = None;
        inner.data = None;
        // A copy: the slice may share a much larger receive buffer.
        inner.recent = inner
            .recent
            .take()
            .filter(|(_, b)| b.len() <= MAX_RECENT_CLOSED)
            .map(|(at, b)| (at, Bytes::copy_from_slice(&b)));
        self.progress.send_modify(|p| p.closed = true);
    }

    /// Where to read the log from: the held output before the files exist,
    /// then the data file (the write handle while the Run runs, a read-only
    /// handle of its own once the log is closed); `None` before the first
    /// output and after removal.
    fn source(&self, inner: &Inner) -> std::io::Result<Option<Source>> {
        if inner.removed {
            return Ok(None);
        }
        if let Some(data) = &inner.data {
            return Ok(Some(Source::File(data.clone())));
        }
        if inner.created {
            return Ok(Some(Source::File(Arc::new(File::open(&self.data_path)?))));
        }
        if inner.held.is_empty() {
            return Ok(None);
        }
        Ok(Some(Source::Held(Bytes::copy_from_slice(&inner.held))))
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn truncation(&self) -> Option<Truncation> {
        let inner = self.lock();
        inner.truncated_at.map(|offset| Truncation {
            offset,
            dropped: inner.dropped,
        })
    }

    /// Restores the dropped-bytes count recorded before a restart.
    pub fn restore_dropped(&self, dropped: u64) {
        self.lock().dropped = dropped;
    }

    /// Offset where the last `lines` lines (of `only`, if given) begin.
    pub fn tail_offset(&self, lines: u64, only: Option<StreamKind>) -> std::io::Result<u64> {
        if lines == 0 {
            return Ok(self.progress().len);
        }
        let (records, data): (Vec<Record>, _) = {
            let inner = self.lock();
            let records = inner
                .index
                .iter()
                .rev()
                .filter(|r| only.is_none_or(|s| r.stream == s))
                .copied()
                .collect();
            (records, self.source(&inner)?)
        };
        let Some(data) = data else {
            return Ok(0);
        };
        let mut seen = 0u64;
        let mut first_byte = true;
        let mut start = None;
        'records: for r in &records {
            let mut end = r.end();
            while end > r.offset {
                let n = (end - r.offset).min(64 * 1024) as usize;
                let from = end - n as u64;
                let buf = data.read(from, end)?;
                for i in (0..n).rev() {
                    if buf[i] == b'\n' {
                        // A final newline ends the last line; it does not start one.
                        if !first_byte {
                            seen += 1;
                            if seen == lines {
                                start = Some(from + i as u64 + 1);
                                break 'records;
                            }
                        }
                    }
                    first_byte = false;
                }
                end = from;
            }
            start = Some(r.offset);
        }
        Ok(start.unwrap_or(0))
    }

    /// Offset of the first output that arrived at or after `time_us`.
    pub fn offset_since(&self, time_us: u64) -> u64 {
        let inner = self.lock();
        let i = inner.index.partition_point(|r| r.time_us < time_us);
        inner.index.get(i).map(|r| r.offset).unwrap_or(inner.len)
    }

    /// Bytes of each stream spooled so far: where to re-attach from.
    pub fn stream_lengths(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.stdout_len, inner.stderr_len)
    }

    /// Reads up to `max` bytes of one stream starting at combined `offset`,
    /// coalescing adjacent records of the same stream. With `only`, records of
    /// the other stream are skipped. Returns the chunk (if any) and the offset
    /// to continue from.
    pub fn read(
        &self,
        offset: u64,
        max: usize,
        only: Option<StreamKind>,
    ) -> std::io::Result<(Option<Chunk>, u64)> {
        let (stream, start, end, file) = {
            let inner = self.lock();
            let idx = &inner.index;
            // First record whose end is past `offset`.
            let mut i = idx.partition_point(|r| r.end() <= offset);
            if let Some(want) = only {
                while i < idx.len() && idx[i].stream != want {
                    i += 1;
                }
            }
            let Some(first) = idx.get(i) else {
                return Ok((None, offset.max(inner.len)));
            };
            // A follower that keeps up reads the last chunk from memory.
            if let Some((at, bytes)) = &inner.recent
                && *at == first.offset
                && i + 1 == idx.len()
            {
                let from = usize::try_from(offset.max(first.offset) - at).unwrap_or(0);
                let to = bytes.len().min(from.saturating_add(max));
                return Ok((
                    Some(Chunk {
                        stream: first.stream,
                        offset: offset.max(first.offset),
                        data: bytes.slice(from..to),
                    }),
                    at + to as u64,
                ));
            }
            let start = offset.max(first.offset);
            let mut end = first.end();
            let mut j = i + 1;
            while j < idx.len()
                && idx[j].stream == first.stream
                && idx[j].offset == end
                && end - start < max as u64
            {
                end = idx[j].end();
                j += 1;
            }
            let Some(source) = self.source(&inner)? else {
                return Ok((None, offset.max(inner.len)));
            };
            (first.stream, start, end.min(start + max as u64), source)
        };
        Ok((
            Some(Chunk {
                stream,
                offset: start,
                data: file.read(start, end)?,
            }),
            end,
        ))
    }

    pub fn is_evicted(&self) -> bool {
        self.evicted.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Removes the spool's files; readers get an error from then on.
    pub fn evict(&self) {
        self.evicted
            .store(true, std::sync::atomic::Ordering::Release);
        // The budget wants the space back: nothing goes on the shelf.
        self.remove_files(false);
    }

    /// Removes the spool's files (once: its bytes leave the usage gauge,
    /// unless its data file goes on the shelf and takes them along).
    pub fn remove(&self) {
        self.remove_files(true);
    }

    fn remove_files(&self, recycle: bool) {
        let mut inner = self.lock();
        if inner.removed {
            return;
        }
        inner.removed = true;
        inner.data = None;
        inner.idx_file = None;
        inner.held = Vec::new();
        inner.recent = None;
        let size = inner.len.max(inner.reserved);
        let mut shelved = false;
        if inner.created {
            shelved = recycle
                && self
                    .shelf
                    .as_ref()
                    .is_some_and(|s| s.put(&self.data_path, &self.idx_path, size));
            if !shelved {
                crate::shelf::delete(&self.data_path, &self.idx_path, size);
            }
        }
        if !shelved {
            self.usage.fetch_sub(size, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_spool_holds_no_descriptors_and_stays_readable() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path(), "r1", 1 << 20, Default::default());
        s.append(StreamKind::Stdout, 0, Bytes::from_static(b"one\n"))
            .unwrap();
        s.append(StreamKind::Stderr, 0, Bytes::from_static(b"two\n"))
            .unwrap();
        s.close();
        // Read while held in memory, then from the file `persist` wrote.
        for persisted in [false, true] {
            if persisted {
                s.persist().unwrap();
            }
            {
                let inner = s.lock();
                assert!(inner.data.is_none() && inner.idx_file.is_none());
            }
            let (c, next) = s.read(0, 1024, None).unwrap();
            assert_eq!((&c.unwrap().data[..], next), (&b"one\n"[..], 4));
            let (c, _) = s.read(4, 1024, None).unwrap();
            assert_eq!(&c.unwrap().data[..], b"two\n");
            assert_eq!(s.tail_offset(1, Some(StreamKind::Stdout)).unwrap(), 0);
            assert_eq!(dir.path().join("r1.log").exists(), persisted);
        }
        // A late append fails and leaves the log as it was.
        assert!(
            s.append(StreamKind::Stdout, 4, Bytes::from_static(b"late"))
                .is_err()
        );
        assert_eq!(
            std::fs::read(dir.path().join("r1.log")).unwrap(),
            b"one\ntwo\n"
        );
        // Re-opened after a restart as finished: no handles either.
        let r = Spool::open(dir.path(), "r1", 1 << 20, true, Default::default()).unwrap();
        assert!(r.lock().data.is_none());
        assert_eq!(r.read(0, 1024, None).unwrap().1, 4);
        r.remove();
        assert!(!dir.path().join("r1.log").exists());
    }

    #[test]
    fn append_read_coalesce_filter_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path(), "r1", 1 << 20, Default::default());
        s.append(StreamKind::Stdout, 0, Bytes::from_static(b"hello "))
            .unwrap();
        s.append(StreamKind::Stdout, 6, Bytes::from_static(b"world\n"))
            .unwrap();
        s.append(StreamKind::Stderr, 0, Bytes::from_static(b"oops\n"))
            .unwrap();
        // A replay overlapping what we have stores only the new tail.
        assert_eq!(
            s.append(StreamKind::Stdout, 6, Bytes::from_static(b"world\nmore"))
                .unwrap(),
            4
        );
        assert_eq!(s.stream_lengths(), (16, 5));

        let (c, next) = s.read(0, 1 << 20, None).unwrap();
        let c = c.unwrap();
        assert_eq!(&c.data[..], b"hello world\n");
        assert_eq!((c.stream, c.offset, next), (StreamKind::Stdout, 0, 12));
        let (c, next) = s.read(next, 1 << 20, None).unwrap();
        assert_eq!(&c.unwrap().data[..], b"oops\n");
        let (c, next) = s.read(next, 1 << 20, None).unwrap();
        assert_eq!(&c.unwrap().data[..], b"more");
        assert_eq!(next, 21);
        let (c, next) = s.read(next, 1 << 20, None).unwrap();
        assert!(c.is_none());
        assert_eq!(next, 21);
        // The last record comes from memory: mid-record and bounded too.
        let (c, next) = s.read(18, 2, None).unwrap();
        let c = c.unwrap();
        assert_eq!((&c.data[..], c.offset, next), (&b"or"[..], 18, 20));

        // Mid-record offsets, max bounds, stream filters.
        let (c, _) = s.read(3, 4, None).unwrap();
        assert_eq!(&c.unwrap().data[..], b"lo w");
        let (c, next) = s.read(0, 1 << 20, Some(StreamKind::Stderr)).unwrap();
        let c = c.unwrap();
        assert_eq!((c.offset, &c.data[..], next), (12, &b"oops\n"[..], 17));
        let (c, next) = s.read(17, 1 << 20, Some(StreamKind::Stderr)).unwrap();
        assert!(c.is_none());
        assert_eq!(next, 21);
        assert!(!dir.path().join("r1.log").exists(), "held in memory");
        s.persist().unwrap();
        let (c, _) = s.read(3, 4, None).unwrap();
        assert_eq!(&c.unwrap().data[..], b"lo w");
        assert_eq!(std::fs::read(dir.path().join("r1.log")).unwrap().len(), 21);
        assert_eq!(
            std::fs::read(dir.path().join("r1.idx")).unwrap().len(),
            4 * 32
        );
    }

    #[test]
    fn cap_truncates_with_a_marker_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path(), "r", 10, Default::default());
        s.append(StreamKind::Stdout, 0, Bytes::from_static(b"0123456"))
            .unwrap();
        s.append(StreamKind::Stderr, 0, Bytes::from_static(b"abcdef"))
            .unwrap();
        s.append(StreamKind::Stdout, 7, Bytes::from_static(b"789"))
            .unwrap();
        assert_eq!(s.progress().len, 10);
        assert_eq!(
            s.truncation(),
            Some(Truncation {
                offset: 10,
                dropped: 6
            })
        );
        // Stream lengths include dropped bytes: re-attach continues after them.
        assert_eq!(s.stream_lengths(), (10, 6));
        drop(s);
        let r = Spool::open(dir.path(), "r", 10, false, Default::default()).unwrap();
        assert_eq!(r.progress().len, 10);
        assert_eq!(r.truncation().map(|t| t.offset), Some(10));
        let (c, _) = r.read(7, 100, None).unwrap();
        assert_eq!(&c.unwrap().data[..], b"abc");
    }

    #[test]
    fn reopen_trims_data_the_index_does_not_cover() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path(), "r", 1 << 20, Default::default());
        s.append(StreamKind::Stdout, 0, Bytes::from_static(b"hello\n"))
            .unwrap();
        s.append(StreamKind::Stderr, 0, Bytes::from_static(b"err\n"))
            .unwrap();
        s.persist().unwrap();
        drop(s);
        // A crash between the data write and its index record, plus a torn
        // index record: both are dropped on open.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("r.log"))
            .unwrap();
        f.write_all(b"unindexed").unwrap();
        let mut i = OpenOptions::new()
            .append(true)
            .open(dir.path().join("r.idx"))
            .unwrap();
        i.write_all(&[1u8; 7]).unwrap();
        let r = Spool::open(dir.path(), "r", 1 << 20, false, Default::default()).unwrap();
        assert_eq!(r.progress().len, 10);
        assert_eq!(r.stream_lengths(), (6, 4));
        assert_eq!(
            std::fs::metadata(dir.path().join("r.log")).unwrap().len(),
            10
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("r.idx")).unwrap().len(),
            64
        );
        r.append(StreamKind::Stdout, 6, Bytes::from_static(b"more\n"))
            .unwrap();
        let (c, _) = r.read(10, 100, None).unwrap();
        assert_eq!(&c.unwrap().data[..], b"more\n");
    }

    #[test]
    fn files_come_with_persisted_output_and_usage_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let usage = Arc::new(AtomicU64::new(0));
        let quiet = Spool::create(dir.path(), "quiet", 100, usage.clone());
        quiet.close();
        assert_eq!(quiet.read(0, 10, None).unwrap().1, 0);
        assert_eq!(quiet.tail_offset(5, None).unwrap(), 0);
        assert!(!dir.path().join("quiet.log").exists());
        // Re-opened after a restart: still empty, still no files.
        let again = Spool::open(dir.path(), "quiet", 100, true, usage.clone()).unwrap();
        assert_eq!((again.progress().len, again.stream_lengths()), (0, (0, 0)));

        // A stale file of an unknown earlier Run is emptied, not appended to.
        std::fs::write(dir.path().join("r.log"), b"stale").unwrap();
        let s = Spool::create(dir.path(), "r", 100, usage.clone());
        s.append(StreamKind::Stdout, 0, Bytes::from_static(b"fresh"))
            .unwrap();
        s.persist().unwrap();
        assert_eq!(std::fs::read(dir.path().join("r.log")).unwrap(), b"fresh");
        s.append(StreamKind::Stderr, 0, Bytes::from_static(b"err"))
            .unwrap();
        assert_eq!(usage.load(Ordering::Relaxed), 8);
        let r = Spool::open(dir.path(), "r", 100, true, usage.clone()).unwrap();
        assert_eq!(usage.load(Ordering::Relaxed), 16);
        r.remove();
        r.remove();
        s.remove();
        assert_eq!(usage.load(Ordering::Relaxed), 0);
        assert!(!dir.path().join("r.log").exists() && !dir.path().join("r.idx").exists());
    }

    /// The whole log read back (both streams, in arrival order).
    fn read_all(s: &Spool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            match s.read(at, 1 << 20, None).unwrap() {
                (Some(c), next) => {
                    out.extend_from_slice(&c.data);
                    at = next;
                }
                (None, _) => return out,
            }
        }
    }

    /// Spools in a temporary directory that recycle through one shelf and
    /// count in one gauge.
    struct Recycling {
        dir: tempfile::TempDir,
        usage: Arc<AtomicU64>,
        shelf: Arc<Shelf>,
    }

    impl Recycling {
        fn new() -> Self {
            let usage = Arc::new(AtomicU64::new(0));
            let shelf = Arc::new(Shelf::new(usage.clone(), Default::default()));
            let dir = tempfile::tempdir().unwrap();
            Recycling { dir, usage, shelf }
        }

        fn spool(&self, id: &str) -> Spool {
            Spool::create(self.dir.path(), id, 1 << 30, self.usage.clone())
                .with_shelf(self.shelf.clone())
        }
    }

    /// A removed log's data file goes on the shelf; the next log that
    /// outgrows the hold writes over it in place (same inode), shows only
    /// its own bytes, is cut to its length when closed, and the gauge
    /// counts the file's real size throughout.
    #[test]
    fn a_large_removed_log_is_recycled_by_the_next_large_one() {
        use std::os::unix::fs::MetadataExt;
        let f = Recycling::new();
        let (dir, usage, shelf) = (&f.dir, &f.usage, &f.shelf);
        let spool = |id: &str| f.spool(id);
        let big = crate::shelf::LARGE_BYTES + 4096;
        let old = spool("old");
        old.append(StreamKind::Stdout, 0, Bytes::from(vec![b'o'; big as usize]))
            .unwrap();
        old.close();
        let ino = std::fs::metadata(dir.path().join("old.log")).unwrap().ino();
        old.remove();
        assert!(!dir.path().join("old.log").exists());
        assert_eq!(shelf.bytes(), big);
        assert_eq!(
            usage.load(Ordering::Relaxed),
            big,
            "the shelf keeps its bytes counted"
        );

        // A short Run's log (persisted after its result) does not take it.
        let short = spool("short");
        short
            .append(StreamKind::Stdout, 0, Bytes::from_static(b"hi"))
            .unwrap();
        short.close();
        short.persist().unwrap();
        assert_eq!(shelf.bytes(), big);
        short.remove();
        assert_eq!(shelf.bytes(), big + 2, "its small pair is shelved too");

        // One that outgrows the hold takes the large file.
        let new = spool("new");
        let held = vec![b'h'; 1000];
        new.append(StreamKind::Stdout, 0, Bytes::from(held.clone()))
            .unwrap();
        let more = vec![b'n'; HOLD_MAX];
        new.append(StreamKind::Stderr, 0, Bytes::from(more.clone()))
            .unwrap();
        let path = dir.path().join("new.log");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
        assert_eq!(shelf.bytes(), 2);
        let len = (held.len() + more.len()) as u64;
        assert_eq!(new.progress().len, len);
        assert_eq!(read_all(&new), [held.as_slice(), more.as_slice()].concat());
        assert_eq!(
            usage.load(Ordering::Relaxed),
            big + 2,
            "max(len, file size)"
        );
        new.close();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert_eq!(usage.load(Ordering::Relaxed), len + 2);
        assert_eq!(read_all(&new), [held.as_slice(), more.as_slice()].concat());
        // Now a small pair itself.
        new.remove();
        assert!(!path.exists());
        assert_eq!(shelf.bytes(), len + 2);
        assert_eq!(usage.load(Ordering::Relaxed), len + 2);
        assert_eq!(shelf.discard(u64::MAX), len + 2);
        assert_eq!(usage.load(Ordering::Relaxed), 0);
        assert_eq!(Shelf::clear_leftovers(dir.path()), 0);
    }

    /// A short log that is persisted takes a removed short log's pair (the
    /// same two inodes): its index holds only its own records, its data
    /// file is cut to its length, and it reads back (and recovers after a
    /// restart) as exactly its own bytes.
    #[test]
    fn a_short_log_reuses_a_removed_short_logs_files() {
        use std::os::unix::fs::MetadataExt;
        let f = Recycling::new();
        let (dir, usage, shelf) = (&f.dir, &f.usage, &f.shelf);
        let spool = |id: &str| f.spool(id);
        let ino = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().ino();
        let old = spool("old");
        let old_out = vec![b'o'; 5000];
        old.append(StreamKind::Stdout, 0, Bytes::from(old_out))
            .unwrap();
        old.append(StreamKind::Stderr, 0, Bytes::from_static(b"e"))
            .unwrap();
        old.close();
        old.persist().unwrap();
        let (old_log, old_idx) = (ino("old.log"), ino("old.idx"));
        old.remove();
        assert_eq!(shelf.bytes(), 5001);

        let new = spool("new");
        new.append(StreamKind::Stderr, 0, Bytes::from_static(b"err\n"))
            .unwrap();
        new.append(StreamKind::Stdout, 0, Bytes::from_static(b"out\n"))
            .unwrap();
        new.close();
        new.persist().unwrap();
        assert_eq!((ino("new.log"), ino("new.idx")), (old_log, old_idx));
        assert_eq!(shelf.bytes(), 0);
        let size = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().len();
        assert_eq!(size("new.log"), 8, "cut to the log");
        assert_eq!(
            size("new.idx"),
            2 * Record::SIZE as u64,
            "only its own records"
        );
        assert_eq!(usage.load(Ordering::Relaxed), 8);
        assert_eq!(read_all(&new), b"err\nout\n");
        let again = Spool::open(dir.path(), "new", 1 << 30, true, Default::default()).unwrap();
        assert_eq!(read_all(&again), b"err\nout\n");
        let recovered = again.lock();
        assert_eq!((recovered.stdout_len, recovered.stderr_len), (4, 4));
    }

    /// A recycled pair a log cannot use (here its index path is taken by a
    /// directory) is deleted, and its bytes leave the gauge; the log keeps
    /// its held output.
    #[test]
    fn a_recycled_pair_that_cannot_be_used_is_deleted_with_its_bytes() {
        let f = Recycling::new();
        let (dir, usage, shelf) = (&f.dir, &f.usage, &f.shelf);
        let spool = |id: &str| f.spool(id);
        let old = spool("old");
        old.append(StreamKind::Stdout, 0, Bytes::from(vec![b'o'; 5000]))
            .unwrap();
        old.close();
        old.persist().unwrap();
        old.remove();
        assert_eq!((shelf.bytes(), usage.load(Ordering::Relaxed)), (5000, 5000));

        std::fs::create_dir(dir.path().join("new.idx")).unwrap();
        let new = spool("new");
        new.append(StreamKind::Stdout, 0, Bytes::from_static(b"hi"))
            .unwrap();
        new.close();
        assert!(new.persist().is_err());
        assert_eq!(shelf.bytes(), 0);
        assert_eq!(usage.load(Ordering::Relaxed), 2, "only the held bytes");
        assert!(!dir.path().join("new.log").exists());
        assert_eq!(Shelf::clear_leftovers(dir.path()), 0);
        assert_eq!(read_all(&new), b"hi");
    }

    /// A recycled file's stale bytes past the log never show: not while it
    /// is written, not after a crash (re-opening trims them); a splice cuts
    /// them first (its crash recovery reads the file's size); and a log the
    /// budget evicts does not go on the shelf.
    #[test]
    fn stale_bytes_of_a_recycled_file_never_show_and_evicted_logs_are_not_shelved() {
        use std::os::fd::AsFd;
        let f = Recycling::new();
        let (dir, shelf) = (&f.dir, &f.shelf);
        let big = vec![b'x'; 2 * crate::shelf::LARGE_BYTES as usize];
        let size = |id: &str| {
            std::fs::metadata(dir.path().join(format!("{id}.log")))
                .unwrap()
                .len()
        };
        let shelve = |id: &str| {
            let old = f.spool(id);
            old.append(StreamKind::Stdout, 0, Bytes::from(big.clone()))
                .unwrap();
            old.remove();
        };
        let past_hold = vec![b'm'; HOLD_MAX + 1];

        // Written over in place: only the log's bytes show.
        shelve("old");
        let s = f.spool("r");
        s.append(StreamKind::Stdout, 0, Bytes::from(past_hold.clone()))
            .unwrap();
        assert_eq!(read_all(&s), past_hold);
        let (chunk, next) = s.read(past_hold.len() as u64, 100, None).unwrap();
        assert!(chunk.is_none() && next == past_hold.len() as u64);
        // A crash now (no close): the file is still 2 MiB of which only the
        // log's bytes are this log's; re-opening trims the rest.
        assert_eq!(size("r"), big.len() as u64);
        let usage2 = Arc::new(AtomicU64::new(0));
        let again = Spool::open(dir.path(), "r", 1 << 30, true, usage2.clone()).unwrap();
        assert_eq!(read_all(&again), past_hold);
        assert_eq!(size("r"), past_hold.len() as u64);
        assert_eq!(usage2.load(Ordering::Relaxed), past_hold.len() as u64);

        // A splice lands at the log's offset with no stale byte after it.
        shelve("old2");
        let p = f.spool("p");
        p.append(StreamKind::Stdout, 0, Bytes::from(past_hold.clone()))
            .unwrap();
        assert_eq!(size("p"), big.len() as u64, "a recycled file");
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"spliced").unwrap();
        assert_eq!(p.splice_from(StreamKind::Stdout, r.as_fd(), 7).unwrap(), 7);
        let want = [&past_hold[..], b"spliced"].concat();
        assert_eq!(read_all(&p), want);
        assert_eq!(size("p"), want.len() as u64);
        // The gauge: r's whole file (never closed), p's log.
        assert_eq!(
            f.usage.load(Ordering::Relaxed),
            (big.len() + want.len()) as u64
        );

        // Evicted (the budget wants the space): deleted, not shelved.
        let e = f.spool("e");
        e.append(StreamKind::Stdout, 0, Bytes::from(big.clone()))
            .unwrap();
        e.close();
        e.evict();
        assert!(!dir.path().join("e.log").exists());
        assert_eq!(shelf.bytes(), 0);
    }

    #[test]
    fn output_past_the_hold_goes_to_the_files_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path(), "r", 1 << 20, Default::default());
        let small = Bytes::from(vec![b'a'; HOLD_MAX - 1]);
        s.append(StreamKind::Stdout, 0, small).unwrap();
        assert!(!dir.path().join("r.log").exists());
        s.append(StreamKind::Stderr, 0, Bytes::from_static(b"xy"))
            .unwrap();
        let log = std::fs::read(dir.path().join("r.log")).unwrap();
        assert_eq!(log.len(), HOLD_MAX + 1);
        assert_eq!(&log[HOLD_MAX - 1..], b"xy");
        let idx = std::fs::read(dir.path().join("r.idx")).unwrap();
        assert_eq!(
            idx.len(),
            2 * Record::SIZE,
            "the held record, then the new one"
        );
        // A crash now loses nothing: the files hold it all.
        drop(s);
        let r = Spool::open(dir.path(), "r", 1 << 20, false, Default::default()).unwrap();
        assert_eq!(r.stream_lengths(), (HOLD_MAX as u64 - 1, 2));
        let (c, _) = r.read(HOLD_MAX as u64 - 1, 10, None).unwrap();
        assert_eq!(&c.unwrap().data[..], b"xy");
    }

    #[test]
    fn tail_and_since() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path(), "r", 1 << 20, Default::default());
        s.append(StreamKind::Stdout, 0, Bytes::from_static(b"a\nb\n"))
            .unwrap();
        s.append(StreamKind::Stderr, 0, Bytes::from_static(b"E1\n"))
            .unwrap();
        s.append(StreamKind::Stdout, 4, Bytes::from_static(b"c\nd\n"))
            .unwrap();
        // combined: "a\nb\n" (0..4) "E1\n" (4..7) "c\nd\n" (7..11)
        assert_eq!(s.tail_offset(1, None).unwrap(), 9);
        assert_eq!(s.tail_offset(2, None).unwrap(), 7);
        assert_eq!(s.tail_offset(3, None).unwrap(), 4);
        assert_eq!(s.tail_offset(100, None).unwrap(), 0);
        assert_eq!(s.tail_offset(3, Some(StreamKind::Stdout)).unwrap(), 2);
        assert_eq!(s.tail_offset(1, Some(StreamKind::Stderr)).unwrap(), 4);
        assert_eq!(s.tail_offset(0, None).unwrap(), 11);
        assert_eq!(s.offset_since(0), 0);
        assert_eq!(s.offset_since(u64::MAX), 11);
    }

    /// Bytes spliced from a pipe land in the log under one record each, at
    /// the stream's offset, after output that came as messages; past the
    /// cap, `splice_from` moves nothing.
    #[test]
    fn splice_appends_from_a_pipe() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path(), "r", 20, Default::default());
        s.append(StreamKind::Stdout, 0, Bytes::from_static(b"msg\n"))
            .unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"from the pipe\n").unwrap();
        assert_eq!(
            s.splice_from(StreamKind::Stdout, r.as_fd(), 14).unwrap(),
            14
        );
        assert_eq!(s.stream_lengths(), (18, 0));
        let (c, next) = s.read(0, 100, None).unwrap();
        assert_eq!(&c.unwrap().data[..], b"msg\nfrom the pipe\n");
        assert_eq!(next, 18);
        w.write_all(b"0123456789").unwrap();
        assert_eq!(
            s.splice_from(StreamKind::Stdout, r.as_fd(), 10).unwrap(),
            2,
            "cut to the cap"
        );
        assert!(s.at_cap());
        assert_eq!(s.splice_from(StreamKind::Stdout, r.as_fd(), 8).unwrap(), 0);
        drop(s);
        let o = Spool::open(dir.path(), "r", 20, false, Default::default()).unwrap();
        assert_eq!(o.stream_lengths(), (20, 0));
    }

    /// A crash between a splice's index record and its data: after a
    /// restart the record keeps only the bytes that reached the file (the
    /// rest is still in the pipe), or goes if none did.
    #[test]
    fn a_record_written_ahead_of_its_splice_is_cut_to_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path(), "r", 1 << 20, Default::default());
        s.append(StreamKind::Stdout, 0, Bytes::from(vec![b'a'; HOLD_MAX + 6]))
            .unwrap();
        drop(s);
        let ahead = |spliced: &[u8]| {
            let rec = Record {
                offset: HOLD_MAX as u64 + 6,
                stream_offset: HOLD_MAX as u64 + 6,
                time_us: 1,
                len: 100,
                stream: StreamKind::Stdout,
            };
            let mut idx = OpenOptions::new()
                .append(true)
                .open(dir.path().join("r.idx"))
                .unwrap();
            idx.write_all(&rec.encode(1)).unwrap();
            let mut log = OpenOptions::new()
                .append(true)
                .open(dir.path().join("r.log"))
                .unwrap();
            log.write_all(spliced).unwrap();
        };
        ahead(b"");
        let o = Spool::open(dir.path(), "r", 1 << 20, false, Default::default()).unwrap();
        assert_eq!(
            o.stream_lengths(),
            (HOLD_MAX as u64 + 6, 0),
            "a record without data goes"
        );
        drop(o);
        ahead(b"partial");
        let o = Spool::open(dir.path(), "r", 1 << 20, false, Default::default()).unwrap();
        assert_eq!(o.stream_lengths(), (HOLD_MAX as u64 + 13, 0));
        let (c, _) = o.read(HOLD_MAX as u64 + 6, 100, None).unwrap();
        assert_eq!(&c.unwrap().data[..], b"partial");
        drop(o);
        // The shortened record was written back: a second restart agrees.
        let o = Spool::open(dir.path(), "r", 1 << 20, false, Default::default()).unwrap();
        assert_eq!(o.stream_lengths(), (HOLD_MAX as u64 + 13, 0));
        assert_eq!(
            std::fs::metadata(dir.path().join("r.idx")).unwrap().len(),
            2 * Record::SIZE as u64
        );
    }
}
