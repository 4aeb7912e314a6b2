//! Writers that hash and count bytes as they pass and refuse the write that
//! would cross a bound, so a bound is enforced while copying, not after.

use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::io::{self, Write};
use std::rc::Rc;

/// Which bound a write would have crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// The stored bytes of this artifact.
    Artifact { seen: u64, limit: u64 },
    /// The stored bytes of all artifacts of the Run.
    Total { seen: u64, limit: u64 },
    /// The uncompressed tar stream of a gzip directory artifact.
    Uncompressed { seen: u64, limit: u64 },
}

/// Shared between the writers of one artifact and its packer, which reads it
/// after an I/O error to tell a crossed bound from a real I/O failure (the tar
/// and gzip layers in between do not preserve custom errors).
pub(crate) type Flag = Rc<Cell<Option<Exceeded>>>;

fn crossed(flag: &Flag, e: Exceeded) -> io::Error {
    flag.set(Some(e));
    io::Error::other("artifact size bound crossed")
}

/// The final writer: hashes and counts the stored bytes and enforces the
/// per-artifact and per-Run bounds.
pub(crate) struct Sink<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
    limit: u64,
    total_before: u64,
    total_limit: u64,
    flag: Flag,
}

impl<W: Write> Sink<W> {
    pub(crate) fn new(
        inner: W,
        limit: u64,
        total_before: u64,
        total_limit: u64,
        flag: Flag,
    ) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
            limit,
            total_before,
            total_limit,
            flag,
        }
    }

    /// Flushes and returns the inner writer, the byte count and `sha256:<hex>`.
    pub(crate) fn finish(mut self) -> io::Result<(W, u64, String)> {
        self.inner.flush()?;
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        Ok((self.inner, self.written, digest))
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let after = self.written + buf.len() as u64;
        if after > self.limit {
            return Err(crossed(
                &self.flag,
                Exceeded::Artifact {
                    seen: after,
                    limit: self.limit,
                },
            ));
        }
        if self.total_before + after > self.total_limit {
            return Err(crossed(
                &self.flag,
                Exceeded::Total {
                    seen: self.total_before + after,
                    limit: self.total_limit,
                },
            ));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Counts bytes on their way into a compressor and refuses to pass more than
/// `limit`, so a highly compressible tree cannot make us read without end.
pub(crate) struct Bounded<W: Write> {
    inner: W,
    written: u64,
    limit: u64,
    flag: Flag,
}

impl<W: Write> Bounded<W> {
    pub(crate) fn new(inner: W, limit: u64, flag: Flag) -> Self {
        Self {
            inner,
            written: 0,
            limit,
            flag,
        }
    }

    pub(crate) fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for Bounded<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let after = self.written + buf.len() as u64;
        if after > self.limit {
            return Err(crossed(
                &self.flag,
                Exceeded::Uncompressed {
                    seen: after,
                    limit: self.limit,
                },
            ));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_crossing_write_and_records_why() {
        let flag: Flag = Rc::default();
        let mut s = Sink::new(Vec::new(), 10, 0, 100, flag.clone());
        s.write_all(b"0123456789").unwrap();
        assert!(s.write_all(b"x").is_err());
        assert_eq!(
            flag.get(),
            Some(Exceeded::Artifact {
                seen: 11,
                limit: 10
            })
        );

        let flag: Flag = Rc::default();
        let mut s = Sink::new(Vec::new(), 10, 95, 100, flag.clone());
        assert!(s.write_all(b"123456").is_err());
        assert_eq!(
            flag.get(),
            Some(Exceeded::Total {
                seen: 101,
                limit: 100
            })
        );
    }

    #[test]
    fn digest_of_known_bytes() {
        let mut s = Sink::new(Vec::new(), 100, 0, 100, Rc::default());
        s.write_all(b"abc").unwrap();
        let (out, n, d) = s.finish().unwrap();
        assert_eq!((out.as_slice(), n), (&b"abc"[..], 3));
        assert_eq!(
            d,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
