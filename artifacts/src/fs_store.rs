//! The filesystem store: artifacts under a root directory (e.g. a PVC mount)
//! at `<root>/namespaces/<ns>/runs/<uid>/<name>`. Below the root every
//! component is opened relative to its parent with O_NOFOLLOW, so a symlink
//! planted in the store never redirects a write, read or delete; a file is
//! written to a temp name, synced, then renamed into place.

use crate::error::StoreError;
use crate::key::RunKey;
use crate::name::TMP_PREFIX;
use crate::store::{ArtifactStore, ByteStream};
use crate::tree::{self, Kind};
use bytes::Bytes;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bytes per chunk of a download stream.
const CHUNK: usize = 1 << 20;
/// Chunks read ahead of the consumer.
const READ_AHEAD: usize = 4;
/// Most objects one Run may have in the store (a Run stores at most
/// `Limits::max_count`, far fewer).
const MAX_OBJECTS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct FilesystemStore {
    root: PathBuf,
}

impl FilesystemStore {
    /// A store rooted at `root`, which must exist when the store is used.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn describe(&self) -> String {
        format!("filesystem store {}", self.root.display())
    }

    fn path_of(&self, key: &RunKey, name: &str) -> PathBuf {
        self.root.join(key.object_key(None, name))
    }

    fn io(&self, path: PathBuf, source: io::Error) -> StoreError {
        StoreError::Io {
            store: self.describe(),
            path,
            source,
        }
    }

    /// Opens `runs/` and `runs/<uid>/` of the Run, creating them when asked;
    /// `None` when they do not exist and `create` is false. The root itself
    /// must exist: a missing root (an unmounted volume) is an error, never
    /// "nothing stored".
    fn open_run_dir(&self, key: &RunKey, create: bool) -> Result<Option<(Dir, Dir)>, StoreError> {
        let mut cur = Dir::open(
            &self.root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io(self.root.clone(), errno(e)))?;
        let mut path = self.root.clone();
        let mut parent = None;
        for comp in key.components() {
            path.push(comp);
            if create {
                match mkdirat(cur.as_fd(), comp, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(self.io(path, errno(e))),
                }
            }
            let next = match tree::open_dir_at(&cur, OsStr::new(comp)) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
                Err(e) => return Err(self.io(path, e)),
            };
            parent = Some(std::mem::replace(&mut cur, next));
        }
        match parent {
            Some(p) => Ok(Some((p, cur))),
            None => Err(self.io(path, io::Error::other("empty key"))),
        }
    }

    fn put_blocking(
        &self,
        key: &RunKey,
        name: &str,
        src_path: &Path,
    ) -> Result<String, StoreError> {
        key.check(Some(name))?;
        let mut src = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(src_path)
            .map_err(|e| self.io(src_path.to_path_buf(), e))?;
        let meta = src
            .metadata()
            .map_err(|e| self.io(src_path.to_path_buf(), e))?;
        if !meta.is_file() {
            return Err(StoreError::NotAFile {
                store: self.describe(),
                path: src_path.to_path_buf(),
                detail: "only regular files can be stored".into(),
            });
        }
        let Some((_, run)) = self.open_run_dir(key, true)? else {
            return Err(self.io(self.path_of(key, name), io::ErrorKind::NotFound.into()));
        };
        let dest = self.path_of(key, name);
        let tmp = format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let fd = openat(
            run.as_fd(),
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| self.io(dest.clone(), errno(e)))?;
        let mut dst = File::from(fd);
        let written = io::copy(&mut src, &mut dst)
            .and_then(|_| dst.sync_all())
            .and_then(|()| renameat(run.as_fd(), tmp.as_str(), run.as_fd(), name).map_err(errno))
            .and_then(|()| fsync(run.as_fd()).map_err(errno));
        if let Err(e) = written {
            let _ = unlinkat(run.as_fd(), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return Err(self.io(dest, e));
        }
        Ok(dest.display().to_string())
    }

    fn open_blocking(&self, key: &RunKey, name: &str, offset: u64) -> Result<File, StoreError> {
        key.check(Some(name))?;
        let not_found = || StoreError::NotFound {
            store: self.describe(),
            run: key.to_string(),
            name: name.to_string(),
        };
        let Some((_, run)) = self.open_run_dir(key, false)? else {
            return Err(not_found());
        };
        let path = self.path_of(key, name);
        let (mut file, st) = match tree::open_file_at(&run, OsStr::new(name)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(self.io(path, e)),
        };
        if Kind::of(&st) != Kind::File {
            return Err(StoreError::NotAFile {
                store: self.describe(),
                path,
                detail: format!("is a {}", Kind::of(&st).describe()),
            });
        }
        let size = st.st_size.max(0) as u64;
        if offset > size {
            return Err(StoreError::InvalidOffset {
                name: name.to_string(),
                offset,
                size,
            });
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| self.io(path, e))?;
        Ok(file)
    }

    fn list_blocking(&self, key: &RunKey) -> Result<Vec<(String, u64)>, StoreError> {
        key.check(None)?;
        let Some((_, mut run)) = self.open_run_dir(key, false)? else {
            return Ok(Vec::new());
        };
        let dir = self.root.join(key.run_prefix(None));
        let names = self.entries(key, &mut run, &dir)?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if name.starts_with(TMP_PREFIX) {
                continue;
            }
            match tree::stat_at(&run, OsStr::new(&name)) {
                Ok(st) if Kind::of(&st) == Kind::File => out.push((name, st.st_size.max(0) as u64)),
                Ok(st) => {
                    tracing::warn!(path = %dir.join(&name).display(), kind = Kind::of(&st).describe(), "ignoring unexpected entry in the artifact store");
                }
                // Deleted meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(dir.join(&name), e)),
            }
        }
        Ok(out)
    }

    /// Names in the Run's directory (UTF-8 only: the store never writes others).
    fn entries(&self, key: &RunKey, run: &mut Dir, dir: &Path) -> Result<Vec<String>, StoreError> {
        let names = tree::list(run, MAX_OBJECTS)
            .map_err(|e| self.io(dir.to_path_buf(), e))?
            .map_err(|()| StoreError::TooManyObjects {
                store: self.describe(),
                run: key.to_string(),
                limit: MAX_OBJECTS,
            })?;
        Ok(names
            .into_iter()
            .filter_map(|n| n.into_string().ok())
            .collect())
    }

    fn delete_blocking(&self, key: &RunKey) -> Result<usize, StoreError> {
        key.check(None)?;
        let Some((runs, mut run)) = self.open_run_dir(key, false)? else {
            return Ok(0);
        };
        let dir = self.root.join(key.run_prefix(None));
        let names = self.entries(key, &mut run, &dir)?;
        let mut deleted = 0;
        for name in names {
            match unlinkat(run.as_fd(), name.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) if name.starts_with(TMP_PREFIX) => {}
                Ok(()) => deleted += 1,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(self.io(dir.join(&name), errno(e))),
            }
        }
        drop(run);
        match unlinkat(runs.as_fd(), key.run_uid.as_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(deleted),
            Err(e) => Err(self.io(dir, errno(e))),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Self) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this))
            .await
            .map_err(|e| StoreError::Task {
                store: self.describe(),
                detail: e.to_string(),
            })?
    }
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Streams `file` from its current position in [`CHUNK`]s read on a blocking
/// thread, a few chunks ahead; stops reading when the consumer goes away.
fn stream_file(file: File, path: PathBuf, store: String) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut buf = vec![0u8; CHUNK];
            let mut filled = 0;
            let result = loop {
                match file.read(&mut buf[filled..]) {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        filled += n;
                        if filled == buf.len() {
                            break Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            };
            if filled > 0 {
                buf.truncate(filled);
                if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    return;
                }
            }
            match result {
                Ok(()) if filled < CHUNK => return,
                Ok(()) => {}
                Err(source) => {
                    let _ = tx.blocking_send(Err(StoreError::Io {
                        store,
                        path,
                        source,
                    }));
                    return;
                }
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[async_trait::async_trait]
impl ArtifactStore for FilesystemStore {
    fn driver(&self) -> &'static str {
        "filesystem"
    }

    async fn put_file(
        &self,
        key: &RunKey,
        name: &str,
        path: &Path,
        _size_hint: u64,
    ) -> Result<String, StoreError> {
        let (key, name, path) = (key.clone(), name.to_string(), path.to_path_buf());
        self.blocking(move |s| s.put_blocking(&key, &name, &path))
            .await
    }

    async fn get(&self, key: &RunKey, name: &str, offset: u64) -> Result<ByteStream, StoreError> {
        let (k, n) = (key.clone(), name.to_string());
        let file = self
            .blocking(move |s| s.open_blocking(&k, &n, offset))
            .await?;
        Ok(stream_file(file, self.path_of(key, name), self.describe()))
    }

    async fn list(&self, key: &RunKey) -> Result<Vec<(String, u64)>, StoreError> {
        let key = key.clone();
        self.blocking(move |s| s.list_blocking(&key)).await
    }

    async fn delete_run(&self, key: &RunKey) -> Result<usize, StoreError> {
        let key = key.clone();
        self.blocking(move |s| s.delete_blocking(&key)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    async fn read_all(s: ByteStream) -> Vec<u8> {
        let chunks: Vec<Bytes> = s.try_collect().await.unwrap();
        chunks.concat()
    }

    fn content(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn put_get_from_offset_list_delete() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(root.path());
        let key = RunKey::new("ns", "run-1");

        // Larger than one chunk, not a multiple of it.
        let data = content(CHUNK * 2 + 12345);
        let f = src.path().join("f");
        std::fs::write(&f, &data).unwrap();
        let loc = store
            .put_file(&key, "big.bin", &f, data.len() as u64)
            .await
            .unwrap();
        assert_eq!(
            Path::new(&loc),
            root.path().join("namespaces/ns/runs/run-1/big.bin")
        );
        std::fs::write(&f, b"hello").unwrap();
        store.put_file(&key, "small.txt", &f, 5).await.unwrap();

        assert_eq!(
            read_all(store.get(&key, "big.bin", 0).await.unwrap()).await,
            data
        );
        for off in [1usize, CHUNK, data.len() - 1] {
            let got = read_all(store.get(&key, "big.bin", off as u64).await.unwrap()).await;
            assert_eq!(got, &data[off..], "offset {off}");
        }
        assert!(
            read_all(store.get(&key, "small.txt", 5).await.unwrap())
                .await
                .is_empty()
        );
        let Err(err) = store.get(&key, "small.txt", 6).await else {
            panic!("offset past the end accepted")
        };
        assert!(
            matches!(
                err,
                StoreError::InvalidOffset {
                    offset: 6,
                    size: 5,
                    ..
                }
            ),
            "{err}"
        );
        let Err(err) = store.get(&key, "nope", 0).await else {
            panic!("missing artifact served")
        };
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

        assert_eq!(
            store.list(&key).await.unwrap(),
            vec![
                ("big.bin".into(), data.len() as u64),
                ("small.txt".into(), 5)
            ]
        );
        // Another Run is untouched by this one's deletion.
        let other = RunKey::new("ns", "run-2");
        store.put_file(&other, "x", &f, 5).await.unwrap();

        assert_eq!(store.delete_run(&key).await.unwrap(), 2);
        assert_eq!(store.delete_run(&key).await.unwrap(), 0);
        assert!(store.list(&key).await.unwrap().is_empty());
        assert!(!root.path().join("namespaces/ns/runs/run-1").exists());
        assert_eq!(store.list(&other).await.unwrap(), vec![("x".into(), 5)]);
        // A Run never stored at all.
        assert_eq!(
            store.delete_run(&RunKey::new("other", "u")).await.unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn replaces_whole_and_leaves_no_temp_files() {
        let root = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(root.path());
        let key = RunKey::new("ns", "r");
        let f = root.path().join("src");
        std::fs::write(&f, b"first version, long").unwrap();
        store.put_file(&key, "a", &f, 0).await.unwrap();
        std::fs::write(&f, b"second").unwrap();
        store.put_file(&key, "a", &f, 0).await.unwrap();
        assert_eq!(
            read_all(store.get(&key, "a", 0).await.unwrap()).await,
            b"second"
        );
        let names: Vec<_> = std::fs::read_dir(root.path().join("namespaces/ns/runs/r"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a")]);
    }

    #[tokio::test]
    async fn never_follows_symlinks_planted_in_the_store() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(root.path());
        let key = RunKey::new("ns", "r");
        // `runs` redirected elsewhere: writes must not land outside the root.
        std::fs::create_dir_all(root.path().join("namespaces/ns")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("namespaces/ns/runs")).unwrap();
        let f = root.path().join("src");
        std::fs::write(&f, b"x").unwrap();
        let err = store.put_file(&key, "a", &f, 1).await.unwrap_err();
        assert!(err.to_string().contains("namespaces/ns/runs"), "{err}");
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        assert!(store.delete_run(&key).await.is_err());

        // An artifact replaced by a symlink to a secret is not served.
        std::fs::remove_file(root.path().join("namespaces/ns/runs")).unwrap();
        store.put_file(&key, "a", &f, 1).await.unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"secret").unwrap();
        let art = root.path().join("namespaces/ns/runs/r/a");
        std::fs::remove_file(&art).unwrap();
        std::os::unix::fs::symlink(&secret, &art).unwrap();
        assert!(store.get(&key, "a", 0).await.is_err());
        // Deleting removes the link, not its target.
        store.delete_run(&key).await.unwrap();
        assert!(secret.exists());
    }

    #[tokio::test]
    async fn bad_names_and_keys_and_missing_root() {
        let root = tempfile::tempdir().unwrap();
        let store = FilesystemStore::new(root.path());
        let f = root.path().join("src");
        std::fs::write(&f, b"x").unwrap();
        let key = RunKey::new("ns", "r");
        for name in ["../x", "a/b", "..", ""] {
            let err = store.put_file(&key, name, &f, 1).await.unwrap_err();
            assert!(matches!(err, StoreError::InvalidKey(_)), "{name:?}: {err}");
        }
        let err = store
            .list(&RunKey::new("../../etc", "r"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");

        let gone = FilesystemStore::new(root.path().join("not-mounted"));
        let err = gone.delete_run(&key).await.unwrap_err();
        assert!(err.to_string().contains("not-mounted"), "{err}");
    }
}
