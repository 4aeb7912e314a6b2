//! Collecting artifacts from real directory trees into a real filesystem store:
//! validation (symlinks, FIFOs, sockets, devices, names), bounds while
//! copying, deterministic archives, scratch clean-up and bounded upload retries.

use kruntimes_artifacts::{
    ArtifactKind, ArtifactRef, CollectError, CollectOptions, Credentials, FilesystemStore, Limits,
    RetryPolicy, RunKey, StoreConfig, collect,
};
use nix::dir::Dir;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, mkdirat};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    scratch: PathBuf,
    store: FilesystemStore,
    key: RunKey,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("artifacts");
    let scratch = tmp.path().join("scratch");
    let root = tmp.path().join("store");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&root).unwrap();
    Fixture {
        store: FilesystemStore::new(root),
        _tmp: tmp,
        dir,
        scratch,
        key: RunKey::new("default", "3f2a9c1e-run"),
    }
}

impl Fixture {
    async fn collect(&self, opts: &CollectOptions) -> Result<Vec<ArtifactRef>, CollectError> {
        collect(&self.dir, &self.scratch, &self.store, &self.key, opts).await
    }

    fn scratch_is_empty(&self) -> bool {
        fs::read_dir(&self.scratch)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    }
}

fn write(path: &Path, data: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

async fn stored(f: &Fixture, name: &str) -> Vec<u8> {
    use futures::TryStreamExt;
    use kruntimes_artifacts::ArtifactStore;
    let chunks: Vec<bytes::Bytes> = f
        .store
        .get(&f.key, name, 0)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks.concat()
}

#[tokio::test]
async fn files_and_directories_are_stored_with_digests() {
    let f = fixture();
    write(&f.dir.join("report.json"), b"{\"ok\":true}");
    write(&f.dir.join("out/a.txt"), b"a");
    write(&f.dir.join("out/sub/b.bin"), &[0u8; 1000]);
    fs::create_dir_all(f.dir.join("out/empty")).unwrap();

    let refs = f.collect(&CollectOptions::default()).await.unwrap();
    let names: Vec<_> = refs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["out.tar", "report.json"]);

    let json = &refs[1];
    assert_eq!(json.kind, ArtifactKind::File);
    assert_eq!(json.content_type, "application/json");
    assert_eq!(json.size, 11);
    assert_eq!(json.digest, sha256(b"{\"ok\":true}"));
    assert_eq!(json.driver, "filesystem");
    assert!(
        json.location
            .ends_with("namespaces/default/runs/3f2a9c1e-run/report.json")
    );

    let tar = &refs[0];
    assert_eq!(tar.kind, ArtifactKind::Directory);
    assert_eq!(tar.content_type, "application/x-tar");
    let bytes = stored(&f, "out.tar").await;
    assert_eq!(bytes.len() as u64, tar.size);
    assert_eq!(sha256(&bytes), tar.digest);

    // The archive: sorted, no times, no owners, normalised modes.
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut seen = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.username().unwrap(), Some(""));
        let mode = h.mode().unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut content = Vec::new();
        e.read_to_end(&mut content).unwrap();
        seen.push((path, mode, content.len()));
    }
    assert_eq!(
        seen,
        [
            ("out".to_string(), 0o755, 0),
            ("out/a.txt".into(), 0o644, 1),
            ("out/empty".into(), 0o755, 0),
            ("out/sub".into(), 0o755, 0),
            ("out/sub/b.bin".into(), 0o644, 1000),
        ]
    );
    assert!(f.scratch_is_empty(), "scratch files left behind");
}

#[tokio::test]
async fn missing_or_empty_directory_gives_no_artifacts() {
    let f = fixture();
    assert!(
        f.collect(&CollectOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    fs::remove_dir(&f.dir).unwrap();
    assert!(
        f.collect(&CollectOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
}

/// Builds the same tree in `dir`, creating entries in the given order.
fn build_tree(dir: &Path, reverse: bool) {
    let mut files: Vec<(&str, &[u8])> = vec![
        ("site/index.html", b"<h1>hi</h1>"),
        ("site/css/main.css", b"body{}"),
        ("site/js/app.js", b"console.log(1)"),
        ("site/z/deep/er/file", b"deep"),
        ("site/run.sh", b"#!/bin/sh\necho hi\n"),
    ];
    if reverse {
        files.reverse();
    }
    for (p, d) in files {
        write(&dir.join(p), d);
    }
    fs::set_permissions(dir.join("site/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
}

async fn digest_of(f: &Fixture, gzip: bool) -> (String, Vec<u8>) {
    let opts = CollectOptions {
        gzip,
        ..Default::default()
    };
    let refs = f.collect(&opts).await.unwrap();
    assert_eq!(refs.len(), 1);
    let name = refs[0].name.clone();
    (refs[0].digest.clone(), stored(f, &name).await)
}

#[tokio::test]
async fn same_tree_gives_same_bytes_whatever_the_times_owners_and_order() {
    for gzip in [false, true] {
        let a = fixture();
        build_tree(&a.dir, false);
        let (d1, bytes1) = digest_of(&a, gzip).await;
        let (d2, bytes2) = digest_of(&a, gzip).await;
        assert_eq!(d1, d2);
        assert_eq!(bytes1, bytes2);

        // Another copy, created in the opposite order, with other mtimes,
        // other owners and other (non-exec) permission bits.
        let b = fixture();
        build_tree(&b.dir, true);
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for p in [
            "site/index.html",
            "site/css/main.css",
            "site/z/deep/er/file",
        ] {
            let file = fs::File::options().write(true).open(b.dir.join(p)).unwrap();
            file.set_modified(old).unwrap();
        }
        fs::set_permissions(
            b.dir.join("site/index.html"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::set_permissions(b.dir.join("site/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        nix::unistd::chown(
            &b.dir.join("site/js/app.js"),
            Some(nix::unistd::Uid::from_raw(1234)),
            Some(nix::unistd::Gid::from_raw(5678)),
        )
        .unwrap();
        let (d3, _) = digest_of(&b, gzip).await;
        assert_eq!(
            d1, d3,
            "gzip={gzip}: digest depends on times, owners or creation order"
        );

        // A change of content does change it.
        write(&b.dir.join("site/index.html"), b"<h1>ho</h1>");
        let (d4, _) = digest_of(&b, gzip).await;
        assert_ne!(d1, d4);
        if gzip {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes1.as_slice())
                .read_to_end(&mut out)
                .unwrap();
            assert!(tar::Archive::new(out.as_slice()).entries().unwrap().count() >= 9);
            // mtime 0 and OS "unknown" in the gzip header.
            assert_eq!(&bytes1[4..8], &[0, 0, 0, 0]);
            assert_eq!(bytes1[9], 255);
        }
    }
}

fn expect_forbidden(err: CollectError, path: &Path, kind: &str) {
    let msg = err.to_string();
    match &err {
        CollectError::Forbidden { path: p, kind: k } => {
            assert_eq!(p, path, "{msg}");
            assert_eq!(*k, kind, "{msg}");
        }
        other => panic!(
            "expected Forbidden {kind} at {}, got: {other}",
            path.display()
        ),
    }
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[tokio::test]
async fn symlinks_are_rejected_anywhere() {
    let f = fixture();
    write(&f.dir.join("out/sub/ok.txt"), b"ok");
    let link = f.dir.join("out/sub/passwd");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    expect_forbidden(err, &link, "symbolic link");
    assert!(f.scratch_is_empty());
    assert!(
        f.store.root().read_dir().unwrap().next().is_none(),
        "nothing uploaded"
    );

    // A symlinked directory in the middle of the tree.
    fs::remove_file(&link).unwrap();
    let dlink = f.dir.join("out/etc");
    std::os::unix::fs::symlink("/etc", &dlink).unwrap();
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    expect_forbidden(err, &dlink, "symbolic link");

    // At the top level.
    fs::remove_file(&dlink).unwrap();
    let top = f.dir.join("shadow");
    std::os::unix::fs::symlink("/etc/shadow", &top).unwrap();
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    expect_forbidden(err, &top, "symbolic link");

    // The artifacts directory itself replaced by a link to /.
    let g = fixture();
    fs::remove_dir(&g.dir).unwrap();
    std::os::unix::fs::symlink("/", &g.dir).unwrap();
    let err = g.collect(&CollectOptions::default()).await.unwrap_err();
    expect_forbidden(err, &g.dir, "symbolic link");
}

#[tokio::test]
async fn fifos_sockets_and_devices_are_rejected_without_blocking() {
    let f = fixture();
    let fifo = f.dir.join("out/nested/pipe");
    fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
    // Nobody writes to the FIFO: opening it for reading would block forever.
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    expect_forbidden(err, &fifo, "FIFO");
    fs::remove_file(&fifo).unwrap();

    let sock = f.dir.join("out/nested/sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    expect_forbidden(err, &sock, "socket");
    fs::remove_file(&sock).unwrap();

    let top_fifo = f.dir.join("pipe");
    nix::unistd::mkfifo(&top_fifo, Mode::from_bits_truncate(0o644)).unwrap();
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    expect_forbidden(err, &top_fifo, "FIFO");
    fs::remove_file(&top_fifo).unwrap();

    if !nix::unistd::geteuid().is_root() {
        panic!("the device check needs root (mknod); run the tests as root");
    }
    let dev = f.dir.join("out/null");
    nix::sys::stat::mknod(
        &dev,
        nix::sys::stat::SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    expect_forbidden(err, &dev, "character device");
    fs::remove_file(&dev).unwrap();
    let blk = f.dir.join("loop");
    nix::sys::stat::mknod(
        &blk,
        nix::sys::stat::SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(7, 0),
    )
    .unwrap();
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    expect_forbidden(err, &blk, "block device");
}

#[tokio::test]
async fn bad_names_are_rejected_with_the_rule() {
    use std::os::unix::ffi::OsStrExt;
    let cases: Vec<(std::ffi::OsString, &str)> = vec![
        ("line\nbreak".into(), "control characters"),
        (std::ffi::OsStr::from_bytes(b"bad\xffutf8").into(), "UTF-8"),
        (".kruntimes-tmp-1".into(), "reserved"),
    ];
    for (name, rule) in cases {
        let f = fixture();
        write(&f.dir.join(&name), b"x");
        let err = f.collect(&CollectOptions::default()).await.unwrap_err();
        assert!(matches!(err, CollectError::InvalidName { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(rule), "{msg}");
        assert!(msg.contains(&f.dir.display().to_string()), "{msg}");
    }
    // A directory whose stored name (+".tar.gz") would be too long.
    let f = fixture();
    fs::create_dir_all(f.dir.join("d".repeat(250))).unwrap();
    let opts = CollectOptions {
        gzip: true,
        ..Default::default()
    };
    let err = f.collect(&opts).await.unwrap_err().to_string();
    assert!(err.contains("257 bytes") && err.contains("255"), "{err}");
}

#[tokio::test]
async fn two_entries_stored_under_one_name_are_rejected() {
    let f = fixture();
    write(&f.dir.join("a.tar"), b"file");
    write(&f.dir.join("a/x"), b"dir");
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    assert!(
        matches!(&err, CollectError::Duplicate { name, .. } if name == "a.tar"),
        "{err}"
    );
}

#[tokio::test]
async fn count_and_size_bounds() {
    let limits = |max_count, max_artifact_bytes, max_total_bytes| CollectOptions {
        limits: Limits {
            max_count,
            max_artifact_bytes,
            max_total_bytes,
        },
        ..Default::default()
    };

    let f = fixture();
    for n in ["a", "b", "c"] {
        write(&f.dir.join(n), b"x");
    }
    let err = f.collect(&limits(2, 1 << 20, 1 << 20)).await.unwrap_err();
    assert!(
        matches!(err, CollectError::TooMany { limit: 2, .. }),
        "{err}"
    );
    assert_eq!(
        f.collect(&limits(3, 1 << 20, 1 << 20)).await.unwrap().len(),
        3
    );

    // One file over the per-artifact bound: refused before copying.
    let f = fixture();
    write(&f.dir.join("big"), &vec![7u8; 100_001]);
    let err = f.collect(&limits(8, 100_000, 1 << 30)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            CollectError::TooLarge {
                limit: 100_000,
                seen: 100_001,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("big") && msg.contains("100000"), "{msg}");
    // Exactly at the bound is fine.
    write(&f.dir.join("big"), &vec![7u8; 100_000]);
    assert_eq!(
        f.collect(&limits(8, 100_000, 1 << 30)).await.unwrap()[0].size,
        100_000
    );

    // Per-Run total across artifacts.
    let f = fixture();
    write(&f.dir.join("one"), &vec![1u8; 60_000]);
    write(&f.dir.join("two"), &vec![2u8; 60_000]);
    let err = f.collect(&limits(8, 100_000, 100_000)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("all artifacts of the Run together"),
        "{err}"
    );
    assert!(f.scratch_is_empty());

    // A file inside a directory over the bound.
    let f = fixture();
    write(&f.dir.join("d/x"), &vec![0u8; 200_000]);
    let err = f.collect(&limits(8, 100_000, 1 << 30)).await.unwrap_err();
    assert!(
        matches!(&err, CollectError::TooLarge { path, .. } if path.ends_with("d/x")),
        "{err}"
    );

    // gzip: zeros compress to almost nothing, but the bytes read are bounded too.
    let f = fixture();
    write(&f.dir.join("zeros/z"), &vec![0u8; 300_000]);
    let mut opts = limits(8, 100_000, 1 << 30);
    opts.gzip = true;
    let err = f.collect(&opts).await.unwrap_err();
    assert!(err.to_string().contains("uncompressed"), "{err}");
}

/// Appends to `path` as fast as it can, starting only once somebody reads
/// the file (inotify IN_ACCESS): by then collect has opened and measured it
/// (within the bound), so only the checks made while copying can catch the
/// growth. Stops at 256 MiB or when `stop` is set.
fn grow_once_read(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
    inotify.add_watch(&path, AddWatchFlags::IN_ACCESS).unwrap();
    std::thread::spawn(move || {
        loop {
            match inotify.read_events() {
                Ok(events) if !events.is_empty() => break,
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => {
                    if stop.load(Ordering::Relaxed) {
                        return 0;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("inotify: {e}"),
            }
        }
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        let chunk = vec![b'b'; 64 << 10];
        let mut written = 0u64;
        while !stop.load(Ordering::Relaxed) && written < (256 << 20) {
            file.write_all(&chunk).unwrap();
            written += chunk.len() as u64;
        }
        written
    })
}

#[tokio::test]
async fn a_file_growing_past_its_bound_while_copied_is_caught() {
    const LIMIT: u64 = 4 << 20;
    let f = fixture();
    let path = f.dir.join("growing.log");
    // Within the bound when collect opens it.
    write(&path, &vec![b'a'; 3 << 20]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = grow_once_read(path.clone(), stop.clone());
    let opts = CollectOptions {
        limits: Limits {
            max_count: 8,
            max_artifact_bytes: LIMIT,
            max_total_bytes: 1 << 30,
        },
        ..Default::default()
    };
    let result = f.collect(&opts).await;
    stop.store(true, Ordering::Relaxed);
    let appended = writer.join().unwrap();
    assert!(appended > 0, "the writer never saw collect read the file");
    match result {
        Err(CollectError::TooLarge {
            path: p,
            limit,
            seen,
            ..
        }) => {
            assert_eq!(p, path);
            assert_eq!(limit, LIMIT);
            assert!(seen > LIMIT);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(f.scratch_is_empty());
}

#[tokio::test]
async fn a_file_changing_while_archived_is_reported() {
    let f = fixture();
    let path = f.dir.join("logs/app.log");
    write(&path, &vec![b'a'; 3 << 20]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = grow_once_read(path.clone(), stop.clone());
    let result = f.collect(&CollectOptions::default()).await;
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    // The tar header already holds the size seen at open: growth after that
    // cannot be archived consistently, so it is reported, not hidden.
    match result {
        Err(CollectError::Changed { path: p, detail }) => {
            assert_eq!(p, path);
            assert!(detail.contains("grew"), "{detail}");
        }
        other => panic!("expected Changed, got {other:?}"),
    }
    assert!(f.scratch_is_empty());
}

#[tokio::test]
async fn tree_depth_entry_path_bounds() {
    // 70 nested directories: deeper than MAX_TREE_DEPTH (64).
    let f = fixture();
    let mut p = f.dir.join("deep");
    for _ in 0..70 {
        p.push("d");
    }
    fs::create_dir_all(&p).unwrap();
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    assert!(
        matches!(err, CollectError::TooDeep { limit: 64, .. }),
        "{err}"
    );

    // Paths longer than 4096 bytes inside the archive (built with *at calls:
    // the absolute path is longer than PATH_MAX).
    let f = fixture();
    fs::create_dir_all(f.dir.join("long")).unwrap();
    let mut dir = Dir::open(
        &f.dir.join("long"),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    let seg = "s".repeat(250);
    for _ in 0..20 {
        mkdirat(dir.as_fd(), seg.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        dir = Dir::openat(
            dir.as_fd(),
            seg.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
    }
    let err = f.collect(&CollectOptions::default()).await.unwrap_err();
    assert!(
        matches!(err, CollectError::PathTooLong { limit: 4096, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn persistent_upload_failure_names_the_artifact_and_stops() {
    let f = fixture();
    write(&f.dir.join("result.txt"), b"data");
    // A real S3 client against a port where nothing listens: connection refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = StoreConfig::parse(&format!(
        "s3://bucket?endpoint=http://127.0.0.1:{port}&path_style=true&region=us-east-1"
    ))
    .unwrap();
    let store = config
        .open_with(Credentials::Static(kruntimes_artifacts::S3Credentials {
            access_key_id: "A".into(),
            secret_access_key: "S".into(),
            session_token: None,
        }))
        .unwrap();
    let opts = CollectOptions {
        retry: RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
        },
        ..Default::default()
    };
    let err = collect(&f.dir, &f.scratch, store.as_ref(), &f.key, &opts)
        .await
        .unwrap_err();
    match &err {
        CollectError::Upload { name, attempts, .. } => {
            assert_eq!(name, "result.txt");
            assert_eq!(*attempts, 3);
        }
        other => panic!("expected Upload error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("result.txt") && msg.contains("3 attempt"),
        "{msg}"
    );
    assert!(f.scratch_is_empty());
}
