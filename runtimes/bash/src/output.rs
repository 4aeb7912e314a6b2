//! The bounded buffer of one output stream (stdout or stderr) of an execution.
//!
//! Offsets are absolute byte positions in the stream. The buffer holds the
//! bytes `[oldest, end)`; `cursor` is where the current (or last) reader has
//! read up to. Bytes from the cursor on are unsent and never evicted. Of the
//! sent bytes, the last `capacity / 2` are *retained*: they count against the
//! capacity and are never evicted to make room, so a client that died with
//! bytes in flight (less than that, by its flow-control window) can always
//! re-Attach from what it persisted. Older sent bytes go first.
//! The pipe may be read only while `room() > 0`: that is the back-pressure
//! on the child.
//!
//! Storage: large reads are kept as the `Bytes` the pump read them into and
//! handed out as slices of it (no copy from pipe to message). Small reads are
//! appended to a `tail` (a cheap copy), so a chatty child does not leave one
//! segment per line: every segment but the tail is either a large read or a
//! full tail, which bounds the number of segments by the capacity.
use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Largest `OutputChunk.data` sent in one message. Bounded so that what a
/// reader can have in flight (the send queue, the encoder and the client's
/// flow-control window) stays below the retained half of the buffer.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

/// Reads smaller than this are copied into the tail instead of kept as a
/// segment of their own.
const SMALL_PUSH: usize = 16 * 1024;
/// The tail becomes a segment once it holds this much.
const TAIL_BYTES: usize = 64 * 1024;

/// Why an Attach offset cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekError {
    /// Older than the oldest byte still held.
    Evicted { oldest: u64 },
    /// Past the bytes produced so far.
    Beyond { end: u64 },
}

#[derive(Debug)]
pub struct StreamBuffer {
    /// Frozen segments, oldest first; `segs[0]` starts at `oldest`.
    segs: VecDeque<Bytes>,
    /// Bytes in `segs`.
    segs_len: usize,
    /// Recent small reads, after `segs`.
    tail: BytesMut,
    /// Offset of the first held byte.
    oldest: u64,
    cursor: u64,
    capacity: usize,
    /// Sent bytes kept for replay, behind the cursor.
    retain: usize,
    eof: bool,
}

impl StreamBuffer {
    pub fn new(capacity: usize) -> Self {
        Self {
            segs: VecDeque::new(),
            segs_len: 0,
            tail: BytesMut::new(),
            oldest: 0,
            cursor: 0,
            capacity: capacity.max(1),
            retain: capacity.max(1) / 2,
            eof: false,
        }
    }

    fn held_bytes(&self) -> usize {
        self.segs_len + self.tail.len()
    }

    /// Offset one past the last byte produced (= bytes produced so far).
    pub fn end(&self) -> u64 {
        self.oldest + self.held_bytes() as u64
    }

    #[cfg(test)]
    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    #[cfg(test)]
    /// Bytes held in memory.
    pub fn held(&self) -> usize {
        self.held_bytes()
    }

    #[cfg(test)]
    pub fn segments(&self) -> usize {
        self.segs.len() + usize::from(!self.tail.is_empty())
    }

    /// First offset that may not be evicted: unsent bytes and the retained
    /// window of sent ones.
    fn protected_from(&self) -> u64 {
        self.cursor
            .saturating_sub(self.retain as u64)
            .max(self.oldest)
    }

    /// How many more bytes may be read from the pipe now.
    pub fn room(&self) -> usize {
        let protected = usize::try_from(self.end() - self.protected_from()).unwrap_or(usize::MAX);
        self.capacity.saturating_sub(protected)
    }

    /// Appends bytes read from the pipe, evicting the oldest sent bytes
    /// outside the retained window so the buffer stays within capacity.
    /// Protected bytes are never evicted; a caller that reads at most
    /// `room()` bytes keeps the buffer within capacity (a re-Attach to an
    /// older offset between room() and push() can overshoot it by one read).
    pub fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let over = (self.held_bytes() + bytes.len()).saturating_sub(self.capacity);
        let evictable = usize::try_from(self.protected_from() - self.oldest).unwrap_or(usize::MAX);
        self.evict(over.min(evictable));
        if bytes.len() < SMALL_PUSH {
            self.tail.extend_from_slice(&bytes);
            if self.tail.len() >= TAIL_BYTES {
                self.freeze_tail();
            }
        } else {
            self.freeze_tail();
            self.segs_len += bytes.len();
            self.segs.push_back(bytes);
        }
    }

    /// Moves the tail into the segments (no copy: the tail's allocation is
    /// shared, and later small reads continue in its spare capacity).
    fn freeze_tail(&mut self) {
        if !self.tail.is_empty() {
            let seg = self.tail.split().freeze();
            self.segs_len += seg.len();
            self.segs.push_back(seg);
        }
    }

    /// Drops the oldest `n` bytes (the caller checked they are evictable).
    fn evict(&mut self, mut n: usize) {
        self.oldest += n as u64;
        while n > 0 {
            let Some(front) = self.segs.front_mut() else {
                // Only the tail is left.
                self.tail.advance(n.min(self.tail.len()));
                return;
            };
            if front.len() <= n {
                n -= front.len();
                self.segs_len -= front.len();
                self.segs.pop_front();
            } else {
                front.advance(n);
                self.segs_len -= n;
                n = 0;
            }
        }
    }

    /// Marks the end of the stream: nothing more will be pushed.
    pub fn set_eof(&mut self) {
        self.eof = true;
    }

    #[cfg(test)]
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// True once the stream ended and everything was handed to the reader.
    pub fn is_drained(&self) -> bool {
        self.eof && self.cursor == self.end()
    }

    /// Checks that `offset` can be served, without moving the cursor.
    pub fn check_offset(&self, offset: u64) -> Result<(), SeekError> {
        if offset < self.oldest {
            Err(SeekError::Evicted {
                oldest: self.oldest,
            })
        } else if offset > self.end() {
            Err(SeekError::Beyond { end: self.end() })
        } else {
            Ok(())
        }
    }

    /// Moves the read cursor (a new Attach).
    pub fn seek(&mut self, offset: u64) -> Result<(), SeekError> {
        self.check_offset(offset)?;
        self.cursor = offset;
        Ok(())
    }

    /// Takes everything available from the cursor, up to `max` bytes, as one
    /// chunk and advances the cursor. A chunk within one segment is a slice
    /// of it; the tail and chunks spanning segments are copied (those are
    /// small reads, or a replay crossing a boundary).
    pub fn next_chunk(&mut self, max: usize) -> Option<(u64, Bytes)> {
        let available = usize::try_from(self.end() - self.cursor).unwrap_or(usize::MAX);
        let n = available.min(max);
        if n == 0 {
            return None;
        }
        let offset = self.cursor;
        let from = usize::try_from(self.cursor - self.oldest).unwrap_or(usize::MAX);
        let out = self.slice(from, n);
        self.cursor += n as u64;
        Some((offset, out))
    }

    /// `n` bytes from position `from` (relative to `oldest`); both in range.
    fn slice(&self, from: usize, n: usize) -> Bytes {
        if from >= self.segs_len {
            let at = from - self.segs_len;
            return Bytes::copy_from_slice(&self.tail[at..at + n]);
        }
        // Find the segment holding `from`, scanning from the newest: readers
        // are usually near the end.
        let mut start = self.segs_len;
        let mut idx = self.segs.len();
        while start > from {
            idx -= 1;
            start -= self.segs[idx].len();
        }
        let seg = &self.segs[idx];
        let at = from - start;
        if at + n <= seg.len() {
            return seg.slice(at..at + n);
        }
        let mut out = BytesMut::with_capacity(n);
        out.extend_from_slice(&seg[at..]);
        for s in self.segs.iter().skip(idx + 1) {
            let take = (n - out.len()).min(s.len());
            out.extend_from_slice(&s[..take]);
            if out.len() == n {
                return out.freeze();
            }
        }
        let take = n - out.len();
        out.extend_from_slice(&self.tail[..take]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    fn drain_all(b: &mut StreamBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((off, data)) = b.next_chunk(MAX_CHUNK_BYTES) {
            assert_eq!(off as usize, out.len());
            out.extend_from_slice(&data);
        }
        out
    }

    #[test]
    fn room_counts_unsent_and_the_retained_window() {
        let mut buf = StreamBuffer::new(10); // retains 5 sent bytes
        assert_eq!(buf.room(), 10);
        buf.push(b(b"abcdef"));
        assert_eq!(buf.room(), 4);
        assert_eq!(buf.next_chunk(6), Some((0, b(b"abcdef"))));
        // 6 sent: the last 5 are retained, the first may go.
        assert_eq!(buf.room(), 5);
        buf.push(b(b"ghijk"));
        assert_eq!(buf.oldest(), 1);
        assert_eq!(buf.end(), 11);
        assert_eq!(buf.held(), 10);
        assert_eq!(buf.room(), 0);
    }

    /// The crash case: a reader took everything and vanished while the child
    /// keeps writing. The bytes it may not have persisted stay replayable.
    #[test]
    fn retained_bytes_survive_while_nobody_reads() {
        let mut buf = StreamBuffer::new(8); // retains 4
        buf.push(b(b"12345678"));
        drain_all(&mut buf);
        for _ in 0..10 {
            let n = buf.room();
            buf.push(b(&b"abcdefgh"[..n.min(8)]));
        }
        assert_eq!(buf.room(), 0, "the child is back-pressured");
        buf.seek(4).unwrap();
        assert_eq!(drain_all_from(&mut buf), b"5678abcd");
        assert_eq!(buf.seek(3), Err(SeekError::Evicted { oldest: 4 }));
    }

    #[test]
    fn unsent_bytes_are_never_evicted() {
        let mut buf = StreamBuffer::new(8);
        buf.push(b(b"12345678"));
        assert_eq!(buf.room(), 0);
        // A misbehaving caller pushing past room keeps all unsent bytes.
        buf.push(b(b"9"));
        assert_eq!(buf.oldest(), 0);
        assert_eq!(drain_all(&mut buf), b"123456789");
    }

    #[test]
    fn chunks_coalesce_and_respect_max() {
        let mut buf = StreamBuffer::new(1 << 20);
        for i in 0..1000u32 {
            buf.push(Bytes::from(format!("{i}\n")));
        }
        let (off, first) = buf.next_chunk(MAX_CHUNK_BYTES).unwrap();
        assert_eq!(off, 0);
        assert_eq!(first.len() as u64, buf.end(), "one chunk carries all reads");
        assert_eq!(buf.next_chunk(MAX_CHUNK_BYTES), None);

        let mut buf = StreamBuffer::new(1 << 20);
        buf.push(Bytes::from(vec![7u8; MAX_CHUNK_BYTES * 2 + 5]));
        let sizes: Vec<usize> =
            std::iter::from_fn(|| buf.next_chunk(MAX_CHUNK_BYTES).map(|(_, d)| d.len())).collect();
        assert_eq!(sizes, vec![MAX_CHUNK_BYTES, MAX_CHUNK_BYTES, 5]);
    }

    /// A large read travels as slices of the very allocation it was read
    /// into: no copy between the pipe and the message.
    #[test]
    fn large_reads_are_sent_without_copying() {
        let mut buf = StreamBuffer::new(4 << 20);
        let read = Bytes::from(vec![1u8; 1 << 20]);
        let base = read.as_ptr() as usize;
        buf.push(read);
        let mut at = 0;
        while let Some((off, d)) = buf.next_chunk(MAX_CHUNK_BYTES) {
            assert_eq!(d.as_ptr() as usize, base + off as usize, "slice, not copy");
            at += d.len();
        }
        assert_eq!(at, 1 << 20);
    }

    /// A chatty child's many tiny reads do not become as many segments.
    #[test]
    fn tiny_reads_are_bounded_in_segments() {
        let mut buf = StreamBuffer::new(1 << 20);
        let mut sent = Vec::new();
        let mut all = Vec::new();
        for i in 0..200_000u32 {
            let line = format!("{i}\n");
            all.extend_from_slice(line.as_bytes());
            assert!(buf.room() >= line.len());
            buf.push(Bytes::from(line));
            if i % 7 == 0 {
                while let Some((off, d)) = buf.next_chunk(MAX_CHUNK_BYTES) {
                    assert_eq!(off as usize, sent.len());
                    sent.extend_from_slice(&d);
                }
            }
        }
        sent.extend(drain_all_from(&mut buf));
        assert_eq!(sent, all);
        assert!(buf.held() <= 1 << 20);
        assert!(
            buf.segments() <= (1 << 20) / TAIL_BYTES + 2,
            "{}",
            buf.segments()
        );
    }

    #[test]
    fn chunks_span_segments_and_the_tail() {
        let mut buf = StreamBuffer::new(1 << 20);
        let big = vec![b'B'; SMALL_PUSH];
        buf.push(b(b"ab"));
        buf.push(Bytes::from(big.clone()));
        buf.push(b(b"cd"));
        let mut want = b"ab".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"cd");
        let (off, d) = buf.next_chunk(MAX_CHUNK_BYTES).unwrap();
        assert_eq!((off, &d[..]), (0, &want[..]));
        // Replays from inside each part.
        for from in [1, 3, want.len() - 1] {
            buf.seek(from as u64).unwrap();
            assert_eq!(drain_all_from(&mut buf), &want[from..]);
        }
    }

    #[test]
    fn replay_from_older_offset_and_out_of_range() {
        let mut buf = StreamBuffer::new(6);
        buf.push(b(b"abcdef"));
        drain_all(&mut buf);
        buf.push(b(b"gh"));
        // Held: "cdefgh" at offsets 2..8.
        assert_eq!(buf.oldest(), 2);
        assert_eq!(buf.seek(1), Err(SeekError::Evicted { oldest: 2 }));
        assert_eq!(buf.seek(9), Err(SeekError::Beyond { end: 8 }));
        buf.seek(3).unwrap();
        assert_eq!(
            buf.room(),
            0,
            "replaying moves the cursor back, shrinking room"
        );
        assert_eq!(buf.next_chunk(100), Some((3, b(b"defgh"))));
        buf.seek(8).unwrap();
        assert_eq!(buf.next_chunk(100), None);
    }

    #[test]
    fn eviction_across_segments_keeps_order() {
        let mut buf = StreamBuffer::new(64 * 1024);
        let mut all = Vec::new();
        let mut got = Vec::new();
        for round in 0..400u32 {
            let len = if round % 5 == 0 {
                SMALL_PUSH + 3
            } else {
                1 + (round as usize % 900)
            };
            let piece: Vec<u8> = (0..len).map(|i| (round as usize * 31 + i) as u8).collect();
            let n = piece.len().min(buf.room());
            buf.push(Bytes::copy_from_slice(&piece[..n]));
            all.extend_from_slice(&piece[..n]);
            if round % 3 == 0 {
                while let Some((off, d)) = buf.next_chunk(5000) {
                    assert_eq!(off as usize, got.len());
                    got.extend_from_slice(&d);
                }
            }
            assert!(buf.held() <= 64 * 1024);
        }
        got.extend(drain_all_from(&mut buf));
        assert_eq!(got, all);
    }

    fn drain_all_from(b: &mut StreamBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((_, d)) = b.next_chunk(3) {
            out.extend_from_slice(&d);
        }
        out
    }

    #[test]
    fn eof_and_drained() {
        let mut buf = StreamBuffer::new(4);
        buf.push(b(b"ab"));
        buf.set_eof();
        assert!(buf.is_eof());
        assert!(!buf.is_drained());
        drain_all(&mut buf);
        assert!(buf.is_drained());
    }

    #[test]
    fn non_utf8_bytes_pass_untouched() {
        let mut buf = StreamBuffer::new(1024);
        let all: Vec<u8> = (0..=255u8).collect();
        buf.push(Bytes::from(all.clone()));
        assert_eq!(drain_all(&mut buf), all);
    }
}
