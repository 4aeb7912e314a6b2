//! Packing the artifacts directory into scratch files: every top-level entry
//! is validated, then copied (files) or archived as a deterministic tar
//! (directories: entries sorted by name, mtime/uid/gid zero, owner names
//! empty, modes 0755 for directories and executable files, else 0644;
//! optionally gzip with mtime 0 and OS "unknown"), hashed and counted while
//! copying. Blocking code: run it on a blocking thread.

use crate::artifact::ArtifactKind;
use crate::content_type::content_type_for;
use crate::error::CollectError;
use crate::limits::{Limits, MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_PATH_BYTES};
use crate::name::validate_name;
use crate::sink::{Bounded, Exceeded, Flag, Sink};
use crate::tree::{self, Kind};
use flate2::{Compression, GzBuilder};
use nix::dir::Dir;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::rc::Rc;
use tempfile::NamedTempFile;

const COPY_BUFFER: usize = 256 << 10;
/// gzip level: fixed, so the same tree always gives the same bytes.
const GZIP_LEVEL: u32 = 6;
/// gzip header OS byte 255 = "unknown", instead of the build host's.
const GZIP_OS_UNKNOWN: u8 = 255;

/// One packed artifact waiting in scratch for upload (removed when dropped).
#[derive(Debug)]
pub(crate) struct Packed {
    pub name: String,
    pub kind: ArtifactKind,
    pub content_type: String,
    pub size: u64,
    pub digest: String,
    pub file: NamedTempFile,
}

/// Packs every top-level entry of `dir` into `scratch`; results sorted by name.
/// A missing `dir` means the Run left no artifacts.
pub(crate) fn pack_all(
    dir: &Path,
    scratch: &Path,
    gzip: bool,
    limits: Limits,
) -> Result<Vec<Packed>, CollectError> {
    let mut root = match tree::open_dir_path(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) if tree::is_symlink_error(&e) || e.raw_os_error() == Some(libc::ENOTDIR) => {
            // O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR.
            let is_link = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                return Err(CollectError::Forbidden {
                    path: dir.to_path_buf(),
                    kind: Kind::Symlink.describe(),
                });
            }
            return Err(CollectError::Dir {
                path: dir.to_path_buf(),
                source: e,
            });
        }
        Err(source) => {
            return Err(CollectError::Dir {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let names = tree::list(&mut root, limits.max_count)
        .map_err(|source| CollectError::Dir {
            path: dir.to_path_buf(),
            source,
        })?
        .map_err(|()| CollectError::TooMany {
            path: dir.to_path_buf(),
            limit: limits.max_count,
        })?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(scratch).map_err(|source| CollectError::Io {
        path: scratch.to_path_buf(),
        source,
    })?;

    let mut packer = Packer {
        dir,
        scratch,
        gzip,
        limits,
        total: 0,
    };
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::with_capacity(names.len());
    for entry in names {
        let path = dir.join(&entry);
        let name = entry
            .to_str()
            .ok_or_else(|| CollectError::InvalidName {
                path: path.clone(),
                name: entry.to_string_lossy().into_owned(),
                rule: "must be valid UTF-8".into(),
            })?
            .to_string();
        validate_name(&name).map_err(|rule| CollectError::InvalidName {
            path: path.clone(),
            name: name.clone(),
            rule,
        })?;
        let st = tree::stat_at(&root, &entry).map_err(|e| vanished(&path, e))?;
        let packed = match Kind::of(&st) {
            Kind::File => packer.file(&root, &entry, &name)?,
            Kind::Dir => packer.directory(&root, &entry, &name)?,
            other => {
                return Err(CollectError::Forbidden {
                    path,
                    kind: other.describe(),
                });
            }
        };
        if let Some(first) = stored.insert(packed.name.clone(), name.clone()) {
            return Err(CollectError::Duplicate {
                first,
                second: name,
                name: packed.name,
            });
        }
        out.push(packed);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn vanished(path: &Path, e: io::Error) -> CollectError {
    if e.kind() == io::ErrorKind::NotFound {
        CollectError::Changed {
            path: path.to_path_buf(),
            detail: "disappeared".into(),
        }
    } else {
        CollectError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

struct Packer<'a> {
    dir: &'a Path,
    scratch: &'a Path,
    gzip: bool,
    limits: Limits,
    /// Stored bytes of the artifacts packed so far.
    total: u64,
}

impl Packer<'_> {
    fn scratch_file(&self) -> Result<NamedTempFile, CollectError> {
        tempfile::Builder::new()
            .prefix("artifact-")
            .tempfile_in(self.scratch)
            .map_err(|source| CollectError::Io {
                path: self.scratch.to_path_buf(),
                source,
            })
    }

    fn too_large(&self, path: &Path, stored: &str, e: Exceeded) -> CollectError {
        let (what, seen, limit) = match e {
            Exceeded::Artifact { seen, limit } => (format!("artifact {stored:?}"), seen, limit),
            Exceeded::Total { seen, limit } => {
                ("all artifacts of the Run together".to_string(), seen, limit)
            }
            Exceeded::Uncompressed { seen, limit } => (
                format!("the uncompressed tar stream of artifact {stored:?}"),
                seen,
                limit,
            ),
        };
        CollectError::TooLarge {
            path: path.to_path_buf(),
            what,
            seen,
            limit,
        }
    }

    /// Refuses at once a file whose current size already crosses a bound.
    /// `so_far` is the content already archived in this artifact; with
    /// `compressed`, only the uncompressed bound can be judged up front.
    fn precheck(
        &self,
        path: &Path,
        stored: &str,
        size: u64,
        so_far: u64,
        compressed: bool,
    ) -> Result<(), CollectError> {
        let artifact = so_far.saturating_add(size);
        let limit = self.limits.max_artifact_bytes;
        if artifact > limit {
            let e = if compressed {
                Exceeded::Uncompressed {
                    seen: artifact,
                    limit,
                }
            } else {
                Exceeded::Artifact {
                    seen: artifact,
                    limit,
                }
            };
            return Err(self.too_large(path, stored, e));
        }
        let total = self.total.saturating_add(artifact);
        if !compressed && total > self.limits.max_total_bytes {
            return Err(self.too_large(
                path,
                stored,
                Exceeded::Total {
                    seen: total,
                    limit: self.limits.max_total_bytes,
                },
            ));
        }
        Ok(())
    }

    fn sink<'f>(&self, file: &'f NamedTempFile, flag: &Flag) -> Sink<BufWriter<&'f File>> {
        Sink::new(
            BufWriter::with_capacity(COPY_BUFFER, file.as_file()),
            self.limits.max_artifact_bytes,
            self.total,
            self.limits.max_total_bytes,
            flag.clone(),
        )
    }

    /// Copies a regular file as it is, reading until EOF (so growth while we
    /// copy counts against the bounds).
    fn file(&mut self, root: &Dir, entry: &OsStr, name: &str) -> Result<Packed, CollectError> {
        let path = self.dir.join(entry);
        let (mut src, st) = open_regular(root, entry, &path)?;
        self.precheck(&path, name, st.st_size.max(0) as u64, 0, false)?;

        let tmp = self.scratch_file()?;
        let flag: Flag = Rc::default();
        let mut sink = self.sink(&tmp, &flag);
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(CollectError::Io { path, source }),
            };
            if let Err(e) = sink.write_all(&buf[..n]) {
                return Err(self.write_failed(&path, name, &flag, tmp.path(), e));
            }
        }
        let (_, size, digest) = sink
            .finish()
            .map_err(|e| self.write_failed(&path, name, &flag, tmp.path(), e))?;
        self.total += size;
        Ok(Packed {
            name: name.to_string(),
            kind: ArtifactKind::File,
            content_type: content_type_for(name).to_string(),
            size,
            digest,
            file: tmp,
        })
    }

    fn write_failed(
        &self,
        path: &Path,
        stored: &str,
        flag: &Flag,
        scratch: &Path,
        e: io::Error,
    ) -> CollectError {
        match flag.get() {
            Some(x) => self.too_large(path, stored, x),
            None => CollectError::Io {
                path: scratch.to_path_buf(),
                source: e,
            },
        }
    }

    /// Archives a directory as a deterministic tar (optionally gzip).
    fn directory(&mut self, root: &Dir, entry: &OsStr, name: &str) -> Result<Packed, CollectError> {
        let path = self.dir.join(entry);
        let stored = if self.gzip {
            format!("{name}.tar.gz")
        } else {
            format!("{name}.tar")
        };
        validate_name(&stored).map_err(|rule| CollectError::InvalidName {
            path: path.clone(),
            name: stored.clone(),
            rule: format!("(directory {name:?} stored as {stored:?}) {rule}"),
        })?;
        let dir = open_directory(root, entry, &path)?;

        let tmp = self.scratch_file()?;
        let flag: Flag = Rc::default();
        let sink = self.sink(&tmp, &flag);
        let mut walk = Walk {
            packer: self,
            stored: &stored,
            flag: &flag,
            scratch: tmp.path(),
            entries: 0,
            written: 0,
        };
        let sink = if walk.packer.gzip {
            let gz = GzBuilder::new()
                .mtime(0)
                .operating_system(GZIP_OS_UNKNOWN)
                .write(sink, Compression::new(GZIP_LEVEL));
            let bounded = Bounded::new(gz, walk.packer.limits.max_artifact_bytes, flag.clone());
            let bounded = walk.archive(bounded, dir, entry)?;
            bounded
                .into_inner()
                .finish()
                .map_err(|e| walk.write_error(&path, e))?
        } else {
            walk.archive(sink, dir, entry)?
        };
        let (_, size, digest) = sink
            .finish()
            .map_err(|e| self.write_failed(&path, &stored, &flag, tmp.path(), e))?;
        self.total += size;
        let content_type = if self.gzip {
            "application/gzip"
        } else {
            "application/x-tar"
        };
        Ok(Packed {
            name: stored,
            kind: ArtifactKind::Directory,
            content_type: content_type.to_string(),
            size,
            digest,
            file: tmp,
        })
    }
}

fn open_regular(
    dir: &Dir,
    entry: &OsStr,
    path: &Path,
) -> Result<(File, nix::sys::stat::FileStat), CollectError> {
    let (file, st) = tree::open_file_at(dir, entry).map_err(|e| {
        if tree::is_symlink_error(&e) {
            CollectError::Forbidden {
                path: path.to_path_buf(),
                kind: Kind::Symlink.describe(),
            }
        } else {
            vanished(path, e)
        }
    })?;
    match Kind::of(&st) {
        Kind::File => Ok((file, st)),
        other => Err(CollectError::Forbidden {
            path: path.to_path_buf(),
            kind: other.describe(),
        }),
    }
}

fn open_directory(parent: &Dir, entry: &OsStr, path: &Path) -> Result<Dir, CollectError> {
    tree::open_dir_at(parent, entry).map_err(|e| {
        if tree::is_symlink_error(&e) {
            CollectError::Forbidden {
                path: path.to_path_buf(),
                kind: Kind::Symlink.describe(),
            }
        } else if e.raw_os_error() == Some(libc::ENOTDIR) {
            // O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR, not ELOOP.
            match tree::stat_at(parent, entry).map(|st| Kind::of(&st)) {
                Ok(Kind::Dir) | Err(_) => CollectError::Changed {
                    path: path.to_path_buf(),
                    detail: "was a directory, is no longer one".into(),
                },
                Ok(kind) => CollectError::Forbidden {
                    path: path.to_path_buf(),
                    kind: kind.describe(),
                },
            }
        } else {
            vanished(path, e)
        }
    })
}

/// A problem with a source file, raised from inside the tar writer.
#[derive(Debug)]
struct SourceError {
    changed: bool,
    detail: String,
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for SourceError {}

/// Reads exactly the size recorded in the tar header; a file that shrinks or
/// grows meanwhile is reported instead of silently archived inconsistently.
struct Snapshot {
    src: BufReader<File>,
    expected: u64,
    remaining: u64,
}

impl Read for Snapshot {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let source =
            |changed: bool, detail: String| io::Error::other(SourceError { changed, detail });
        if self.remaining == 0 {
            let mut probe = [0u8; 1];
            return match self.src.read(&mut probe) {
                Ok(0) => Ok(0),
                Ok(_) => Err(source(
                    true,
                    format!(
                        "grew beyond its size of {} bytes while being archived",
                        self.expected
                    ),
                )),
                Err(e) => Err(source(false, e.to_string())),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        match self.src.read(&mut buf[..want]) {
            Ok(0) => Err(source(
                true,
                format!(
                    "shrank while being archived: {} bytes expected, {} read",
                    self.expected,
                    self.expected - self.remaining
                ),
            )),
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) => Err(source(false, e.to_string())),
        }
    }
}

/// One directory artifact being archived.
struct Walk<'p, 'a> {
    packer: &'p Packer<'a>,
    stored: &'p str,
    flag: &'p Flag,
    scratch: &'p Path,
    entries: usize,
    /// Bytes of file content archived so far (for the early size check).
    written: u64,
}

impl Walk<'_, '_> {
    fn archive<W: Write>(&mut self, w: W, dir: Dir, entry: &OsStr) -> Result<W, CollectError> {
        let mut builder = tar::Builder::new(w);
        let rel = entry.to_os_string();
        self.walk(&mut builder, dir, rel, 1)?;
        let path = self.packer.dir.join(entry);
        builder.into_inner().map_err(|e| self.write_error(&path, e))
    }

    fn write_error(&self, path: &Path, e: io::Error) -> CollectError {
        if let Some(x) = self.flag.get() {
            return self.packer.too_large(path, self.stored, x);
        }
        if let Some(s) = e.get_ref().and_then(|i| i.downcast_ref::<SourceError>()) {
            return if s.changed {
                CollectError::Changed {
                    path: path.to_path_buf(),
                    detail: s.detail.clone(),
                }
            } else {
                CollectError::Io {
                    path: path.to_path_buf(),
                    source: io::Error::other(s.detail.clone()),
                }
            };
        }
        CollectError::Io {
            path: self.scratch.to_path_buf(),
            source: e,
        }
    }

    fn count(&mut self, path: &Path) -> Result<(), CollectError> {
        self.entries += 1;
        if self.entries > MAX_TREE_ENTRIES {
            return Err(CollectError::TooManyEntries {
                path: path.to_path_buf(),
                name: self.stored.to_string(),
                limit: MAX_TREE_ENTRIES,
            });
        }
        Ok(())
    }

    fn walk<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        mut dir: Dir,
        rel: OsString,
        depth: usize,
    ) -> Result<(), CollectError> {
        let path = self.packer.dir.join(&rel);
        self.count(&path)?;
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, Path::new(&rel), io::empty())
            .map_err(|e| self.write_error(&path, e))?;

        let room = MAX_TREE_ENTRIES.saturating_sub(self.entries);
        let names = tree::list(&mut dir, room)
            .map_err(|source| CollectError::Io {
                path: path.clone(),
                source,
            })?
            .map_err(|()| CollectError::TooManyEntries {
                path: path.clone(),
                name: self.stored.to_string(),
                limit: MAX_TREE_ENTRIES,
            })?;
        for child in names {
            let mut child_rel = rel.clone().into_vec();
            child_rel.push(b'/');
            child_rel.extend_from_slice(child.as_bytes());
            let child_rel = OsString::from_vec(child_rel);
            let child_path = self.packer.dir.join(&child_rel);
            if child_rel.len() > MAX_TREE_PATH_BYTES {
                return Err(CollectError::PathTooLong {
                    path: child_path,
                    len: child_rel.len(),
                    limit: MAX_TREE_PATH_BYTES,
                });
            }
            let st = tree::stat_at(&dir, &child).map_err(|e| vanished(&child_path, e))?;
            match Kind::of(&st) {
                Kind::File => self.file(b, &dir, &child, &child_rel, &child_path)?,
                Kind::Dir => {
                    if depth >= MAX_TREE_DEPTH {
                        return Err(CollectError::TooDeep {
                            path: child_path,
                            limit: MAX_TREE_DEPTH,
                        });
                    }
                    let sub = open_directory(&dir, &child, &child_path)?;
                    self.walk(b, sub, child_rel, depth + 1)?;
                }
                other => {
                    return Err(CollectError::Forbidden {
                        path: child_path,
                        kind: other.describe(),
                    });
                }
            }
        }
        Ok(())
    }

    fn file<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        dir: &Dir,
        name: &OsStr,
        rel: &OsStr,
        path: &Path,
    ) -> Result<(), CollectError> {
        self.count(path)?;
        let (src, st) = open_regular(dir, name, path)?;
        let size = st.st_size.max(0) as u64;
        self.packer
            .precheck(path, self.stored, size, self.written, self.packer.gzip)?;
        let mode = if st.st_mode & 0o100 != 0 {
            0o755
        } else {
            0o644
        };
        let mut h = header(tar::EntryType::Regular, mode, size);
        let data = Snapshot {
            src: BufReader::with_capacity(COPY_BUFFER, src),
            expected: size,
            remaining: size,
        };
        b.append_data(&mut h, Path::new(rel), data)
            .map_err(|e| self.write_error(path, e))?;
        self.written += size;
        Ok(())
    }
}

/// A header with nothing host- or time-specific in it.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}
