//! The bounded buffer of one output stream (stdout or stderr) of an execution.
//!
//! Offsets are absolute byte positions in the stream. The buffer holds the
//! bytes `[oldest, end)`; `cursor` is where the current (or last) Attach has
//! read up to. Bytes from the cursor on are unsent and never evicted. Of the
//! sent bytes, the last `capacity / 2` are *retained*: they count against the
//! capacity and are never evicted to make room, so a client that died with
//! bytes in flight (less than that, by its flow-control window) can always
//! re-Attach from what it persisted. Older sent bytes go first.
//! The pipe may be read only while `room() > 0`: that is the back-pressure
//! on the child.
use std::collections::VecDeque;

/// Largest `OutputChunk.data` sent in one message.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;

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
    data: VecDeque<u8>,
    /// Offset of `data[0]`.
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
            data: VecDeque::new(),
            oldest: 0,
            cursor: 0,
            capacity: capacity.max(1),
            retain: capacity.max(1) / 2,
            eof: false,
        }
    }

    /// Offset one past the last byte produced (= bytes produced so far).
    pub fn end(&self) -> u64 {
        self.oldest + self.data.len() as u64
    }

    #[cfg(test)]
    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    #[cfg(test)]
    /// Bytes held in memory.
    pub fn held(&self) -> usize {
        self.data.len()
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
    pub fn push(&mut self, bytes: &[u8]) {
        let over = (self.data.len() + bytes.len()).saturating_sub(self.capacity);
        let evictable = usize::try_from(self.protected_from() - self.oldest).unwrap_or(usize::MAX);
        let evict = over.min(evictable);
        if evict > 0 {
            // Evict before extending so the deque never grows past capacity.
            self.data.drain(..evict);
            self.oldest += evict as u64;
        }
        self.data.extend(bytes);
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
    /// chunk (coalescing all reads since the last chunk) and advances the cursor.
    pub fn next_chunk(&mut self, max: usize) -> Option<(u64, Vec<u8>)> {
        let available = usize::try_from(self.end() - self.cursor).unwrap_or(usize::MAX);
        let n = available.min(max);
        if n == 0 {
            return None;
        }
        let from = usize::try_from(self.cursor - self.oldest).unwrap_or(usize::MAX);
        let (a, b) = self.data.as_slices();
        let mut out = Vec::with_capacity(n);
        if from < a.len() {
            let take = n.min(a.len() - from);
            out.extend_from_slice(&a[from..from + take]);
            if take < n {
                out.extend_from_slice(&b[..n - take]);
            }
        } else {
            let from_b = from - a.len();
            out.extend_from_slice(&b[from_b..from_b + n]);
        }
        let offset = self.cursor;
        self.cursor += n as u64;
        Some((offset, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut b = StreamBuffer::new(10); // retains 5 sent bytes
        assert_eq!(b.room(), 10);
        b.push(b"abcdef");
        assert_eq!(b.room(), 4);
        assert_eq!(b.next_chunk(6), Some((0, b"abcdef".to_vec())));
        // 6 sent: the last 5 are retained, the first may go.
        assert_eq!(b.room(), 5);
        b.push(b"ghijk");
        assert_eq!(b.oldest(), 1);
        assert_eq!(b.end(), 11);
        assert_eq!(b.held(), 10);
        assert_eq!(b.room(), 0);
    }

    /// The crash case: a reader took everything and vanished while the child
    /// keeps writing. The bytes it may not have persisted stay replayable.
    #[test]
    fn retained_bytes_survive_while_nobody_reads() {
        let mut b = StreamBuffer::new(8); // retains 4
        b.push(b"12345678");
        drain_all(&mut b);
        for _ in 0..10 {
            let n = b.room();
            b.push(&b"abcdefgh"[..n.min(8)]);
        }
        assert_eq!(b.room(), 0, "the child is back-pressured");
        b.seek(4).unwrap();
        assert_eq!(drain_all_from(&mut b), b"5678abcd");
        assert_eq!(b.seek(3), Err(SeekError::Evicted { oldest: 4 }));
    }

    #[test]
    fn unsent_bytes_are_never_evicted() {
        let mut b = StreamBuffer::new(8);
        b.push(b"12345678");
        assert_eq!(b.room(), 0);
        // A misbehaving caller pushing past room keeps all unsent bytes.
        b.push(b"9");
        assert_eq!(b.oldest(), 0);
        assert_eq!(drain_all(&mut b), b"123456789");
    }

    #[test]
    fn chunks_coalesce_and_respect_max() {
        let mut b = StreamBuffer::new(1 << 20);
        for i in 0..1000u32 {
            b.push(format!("{i}\n").as_bytes());
        }
        let (off, first) = b.next_chunk(MAX_CHUNK_BYTES).unwrap();
        assert_eq!(off, 0);
        assert_eq!(first.len() as u64, b.end(), "one chunk carries all reads");
        assert_eq!(b.next_chunk(MAX_CHUNK_BYTES), None);

        let mut b = StreamBuffer::new(1 << 20);
        b.push(&vec![7u8; MAX_CHUNK_BYTES * 2 + 5]);
        let sizes: Vec<usize> =
            std::iter::from_fn(|| b.next_chunk(MAX_CHUNK_BYTES).map(|(_, d)| d.len())).collect();
        assert_eq!(sizes, vec![MAX_CHUNK_BYTES, MAX_CHUNK_BYTES, 5]);
    }

    #[test]
    fn replay_from_older_offset_and_out_of_range() {
        let mut b = StreamBuffer::new(6);
        b.push(b"abcdef");
        drain_all(&mut b);
        b.push(b"gh");
        // Held: "cdefgh" at offsets 2..8.
        assert_eq!(b.oldest(), 2);
        assert_eq!(b.seek(1), Err(SeekError::Evicted { oldest: 2 }));
        assert_eq!(b.seek(9), Err(SeekError::Beyond { end: 8 }));
        b.seek(3).unwrap();
        assert_eq!(
            b.room(),
            0,
            "replaying moves the cursor back, shrinking room"
        );
        assert_eq!(b.next_chunk(100), Some((3, b"defgh".to_vec())));
        b.seek(8).unwrap();
        assert_eq!(b.next_chunk(100), None);
    }

    #[test]
    fn wraparound_copies_both_halves() {
        let mut b = StreamBuffer::new(8);
        let mut all = Vec::new();
        let mut got = Vec::new();
        for round in 0..50u8 {
            let piece: Vec<u8> = (0..(round % 7 + 1))
                .map(|i| round.wrapping_mul(31) ^ i)
                .collect();
            let n = piece.len().min(b.room());
            b.push(&piece[..n]);
            all.extend_from_slice(&piece[..n]);
            if round % 3 == 0 {
                while let Some((off, d)) = b.next_chunk(5) {
                    assert_eq!(off as usize, got.len());
                    got.extend_from_slice(&d);
                }
            }
            assert!(b.held() <= 8);
        }
        got.extend(drain_all_from(&mut b));
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
        let mut b = StreamBuffer::new(4);
        b.push(b"ab");
        b.set_eof();
        assert!(b.is_eof());
        assert!(!b.is_drained());
        drain_all(&mut b);
        assert!(b.is_drained());
    }

    #[test]
    fn non_utf8_bytes_pass_untouched() {
        let mut b = StreamBuffer::new(1024);
        let all: Vec<u8> = (0..=255u8).collect();
        b.push(&all);
        assert_eq!(drain_all(&mut b), all);
    }
}
