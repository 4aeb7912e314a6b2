//! The per-Run log spool: an append-only file of the combined output (stdout
//! and stderr interleaved in arrival order) plus an index of records saying
//! which stream each byte range came from, its offset within that stream and
//! when it arrived (microseconds). Followers read from the file at any offset
//! and wait on a watch channel for more; nothing is held in memory but the
//! index, so a slow or absent reader costs disk, not RAM.
//!
//! Files: `<dir>/<run>.log` (raw bytes; file position == combined offset) and
//! `<dir>/<run>.idx` (32-byte little-endian records, see [`Record`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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

    fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.stream_offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.time_us.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28] = self.stream.code();
        b
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
    pub data: Vec<u8>,
}

struct Inner {
    index: Vec<Record>,
    idx_file: File,
    len: u64,
    stdout_len: u64,
    stderr_len: u64,
}

pub struct Spool {
    data: File,
    data_path: PathBuf,
    idx_path: PathBuf,
    inner: Mutex<Inner>,
    progress: watch::Sender<Progress>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Spool {
    /// Creates a new, empty spool for a Run. Fails if one exists.
    pub fn create(dir: &Path, run_id: &str) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let data_path = dir.join(format!("{run_id}.log"));
        let idx_path = dir.join(format!("{run_id}.idx"));
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .open(p)
        };
        let data = open(&data_path)?;
        let idx_file = open(&idx_path)?;
        Ok(Spool {
            data,
            data_path,
            idx_path,
            inner: Mutex::new(Inner {
                index: Vec::new(),
                idx_file,
                len: 0,
                stdout_len: 0,
                stderr_len: 0,
            }),
            progress: watch::channel(Progress::default()).0,
        })
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
        data: &[u8],
    ) -> std::io::Result<usize> {
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
        let new = &data[skip..];
        let mut pos = 0;
        while pos < new.len() {
            // Records are at most 4 GiB by construction of `len: u32`.
            let piece = &new[pos..new.len().min(pos + (u32::MAX as usize))];
            (&self.data).write_all(piece)?;
            let rec = Record {
                offset: inner.len,
                stream_offset: stream_offset.max(have) + pos as u64,
                time_us: now_us(),
                len: piece.len() as u32,
                stream,
            };
            inner.idx_file.write_all(&rec.encode())?;
            inner.len += piece.len() as u64;
            inner.index.push(rec);
            pos += piece.len();
        }
        let new_stream_len = stream_offset.max(have) + new.len() as u64;
        match stream {
            StreamKind::Stdout => inner.stdout_len = new_stream_len,
            StreamKind::Stderr => inner.stderr_len = new_stream_len,
        }
        let len = inner.len;
        drop(inner);
        self.progress.send_modify(|p| p.len = len);
        Ok(new.len())
    }

    /// Marks the log complete: followers end once they have read it all.
    pub fn close(&self) {
        self.progress.send_modify(|p| p.closed = true);
    }

    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
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
        let (stream, start, end) = {
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
            (first.stream, start, end.min(start + max as u64))
        };
        let mut data = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
        self.data.read_exact_at(&mut data, start)?;
        Ok((
            Some(Chunk {
                stream,
                offset: start,
                data,
            }),
            end,
        ))
    }

    /// Removes the spool's files.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.data_path);
        let _ = std::fs::remove_file(&self.idx_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_coalesce_filter_dedupe() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(dir.path(), "r1").unwrap();
        s.append(StreamKind::Stdout, 0, b"hello ").unwrap();
        s.append(StreamKind::Stdout, 6, b"world\n").unwrap();
        s.append(StreamKind::Stderr, 0, b"oops\n").unwrap();
        // A replay overlapping what we have stores only the new tail.
        assert_eq!(s.append(StreamKind::Stdout, 6, b"world\nmore").unwrap(), 4);
        assert_eq!(s.stream_lengths(), (16, 5));
        assert!(Spool::create(dir.path(), "r1").is_err());

        let (c, next) = s.read(0, 1 << 20, None).unwrap();
        let c = c.unwrap();
        assert_eq!(c.data, b"hello world\n");
        assert_eq!((c.stream, c.offset, next), (StreamKind::Stdout, 0, 12));
        let (c, next) = s.read(next, 1 << 20, None).unwrap();
        assert_eq!(c.unwrap().data, b"oops\n");
        let (c, next) = s.read(next, 1 << 20, None).unwrap();
        assert_eq!(c.unwrap().data, b"more");
        assert_eq!(next, 21);
        let (c, next) = s.read(next, 1 << 20, None).unwrap();
        assert!(c.is_none());
        assert_eq!(next, 21);

        // Mid-record offsets, max bounds, stream filters.
        let (c, _) = s.read(3, 4, None).unwrap();
        assert_eq!(c.unwrap().data, b"lo w");
        let (c, next) = s.read(0, 1 << 20, Some(StreamKind::Stderr)).unwrap();
        let c = c.unwrap();
        assert_eq!(
            (c.offset, c.data.as_slice(), next),
            (12, &b"oops\n"[..], 17)
        );
        let (c, next) = s.read(17, 1 << 20, Some(StreamKind::Stderr)).unwrap();
        assert!(c.is_none());
        assert_eq!(next, 21);
        assert_eq!(std::fs::read(dir.path().join("r1.log")).unwrap().len(), 21);
        assert_eq!(
            std::fs::read(dir.path().join("r1.idx")).unwrap().len(),
            4 * 32
        );
    }
}
