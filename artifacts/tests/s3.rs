//! The S3 store against a real S3-compatible server (versitygw): put, get from
//! an offset, multipart for a 64 MiB+ object, list, delete-by-run, collect end
//! to end, wrong credentials and a missing bucket.

mod common;

use bytes::Bytes;
use common::versitygw::{SECRET, Versitygw};
use futures::TryStreamExt;
use kruntimes_artifacts::{
    ArtifactKind, ArtifactStore, CollectError, CollectOptions, RunKey, S3Store, StoreError, collect,
};
use sha2::Digest;
use std::path::Path;

async fn read_all(store: &dyn ArtifactStore, key: &RunKey, name: &str, offset: u64) -> Vec<u8> {
    let chunks: Vec<Bytes> = store
        .get(key, name, offset)
        .await
        .unwrap_or_else(|e| panic!("get {name}@{offset}: {e}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("reading {name}@{offset}: {e}"));
    chunks.concat()
}

fn pattern(n: usize) -> Vec<u8> {
    // Not repetitive at part boundaries: a misplaced part changes the digest.
    let mut out = Vec::with_capacity(n);
    let mut x: u32 = 0x1234_5678;
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_offset_list_delete_by_run() {
    let gw = Versitygw::start();
    gw.create_bucket("artifacts");
    let store = gw.store("artifacts", Some("ci/prod"));
    assert_eq!(store.driver(), "s3");
    let key = RunKey::new("team-a", "6f1c2d3e-0000-4000-8000-000000000001");
    let other = RunKey::new("team-a", "6f1c2d3e-0000-4000-8000-000000000002");
    let tmp = tempfile::tempdir().unwrap();

    let data = pattern(3 << 20);
    let f = tmp.path().join("f");
    std::fs::write(&f, &data).unwrap();
    let loc = store
        .put_file(&key, "blob.bin", &f, data.len() as u64)
        .await
        .unwrap();
    assert_eq!(
        loc,
        format!(
            "s3://artifacts/ci/prod/namespaces/team-a/runs/{}/blob.bin",
            key.run_uid
        )
    );
    // The server really holds it under the documented key layout.
    let on_disk = gw.object_path(
        "artifacts",
        &format!("ci/prod/namespaces/team-a/runs/{}/blob.bin", key.run_uid),
    );
    assert_eq!(std::fs::read(&on_disk).unwrap(), data);

    std::fs::write(&f, b"{\"a\":1}").unwrap();
    store.put_file(&key, "result.json", &f, 7).await.unwrap();
    store.put_file(&other, "keep.txt", &f, 7).await.unwrap();

    assert_eq!(read_all(store.as_ref(), &key, "blob.bin", 0).await, data);
    for off in [1usize, 1 << 20, data.len() - 1] {
        assert_eq!(
            read_all(store.as_ref(), &key, "blob.bin", off as u64).await,
            &data[off..],
            "offset {off}"
        );
    }
    assert!(
        read_all(store.as_ref(), &key, "result.json", 7)
            .await
            .is_empty()
    );
    match store.get(&key, "result.json", 8).await {
        Err(StoreError::InvalidOffset {
            offset: 8, size: 7, ..
        }) => {}
        Err(e) => panic!("expected InvalidOffset, got {e}"),
        Ok(_) => panic!("offset past the end accepted"),
    }
    match store.get(&key, "missing", 0).await {
        Err(StoreError::NotFound { name, .. }) => assert_eq!(name, "missing"),
        Err(e) => panic!("expected NotFound, got {e}"),
        Ok(_) => panic!("missing object served"),
    }

    assert_eq!(
        store.list(&key).await.unwrap(),
        vec![
            ("blob.bin".to_string(), data.len() as u64),
            ("result.json".to_string(), 7)
        ]
    );
    assert_eq!(store.delete_run(&key).await.unwrap(), 2);
    assert!(store.list(&key).await.unwrap().is_empty());
    assert!(!on_disk.exists());
    // Idempotent, and the other Run is untouched.
    assert_eq!(store.delete_run(&key).await.unwrap(), 0);
    assert_eq!(
        store.list(&other).await.unwrap(),
        vec![("keep.txt".to_string(), 7)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_go_up_as_multipart() {
    let gw = Versitygw::start();
    gw.create_bucket("big");
    let config = gw.config("big", None);
    let store = S3Store::connect(&config, Versitygw::credentials(SECRET)).unwrap();
    let key = RunKey::new("default", "run-multipart");
    let tmp = tempfile::tempdir().unwrap();

    // 64 MiB plus a ragged tail: 9 parts of 8 MiB, the last one short.
    let size = (64 << 20) + 12_345;
    let data = pattern(size);
    let f = tmp.path().join("big.bin");
    std::fs::write(&f, &data).unwrap();
    store
        .put_file(&key, "big.bin", &f, size as u64)
        .await
        .unwrap();

    let (stored, etag) = store.head(&key, "big.bin").await.unwrap();
    assert_eq!(stored, size as u64);
    let etag = etag.expect("etag");
    assert!(
        etag.trim_matches('"').ends_with("-9"),
        "expected a 9-part multipart ETag, got {etag}"
    );

    let got = read_all(&store, &key, "big.bin", 0).await;
    assert_eq!(got.len(), size);
    assert_eq!(sha2::Sha256::digest(&got), sha2::Sha256::digest(&data));
    let off = (40 << 20) + 7;
    assert_eq!(
        read_all(&store, &key, "big.bin", off as u64).await,
        &data[off..]
    );
    assert_eq!(store.delete_run(&key).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_into_s3_end_to_end() {
    let gw = Versitygw::start();
    gw.create_bucket("runs");
    let store = gw.store("runs", None);
    let key = RunKey::new("default", "run-collect");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("artifacts");
    std::fs::create_dir_all(dir.join("site/css")).unwrap();
    std::fs::write(dir.join("site/index.html"), b"<h1>hi</h1>").unwrap();
    std::fs::write(dir.join("site/css/a.css"), b"body{}").unwrap();
    std::fs::write(dir.join("summary.txt"), b"all good\n").unwrap();

    let opts = CollectOptions {
        gzip: true,
        ..Default::default()
    };
    let refs = collect(
        &dir,
        &tmp.path().join("scratch"),
        store.as_ref(),
        &key,
        &opts,
    )
    .await
    .unwrap();
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[0].name, "site.tar.gz");
    assert_eq!(refs[0].kind, ArtifactKind::Directory);
    assert_eq!(refs[0].content_type, "application/gzip");
    assert_eq!(refs[1].name, "summary.txt");
    for r in &refs {
        assert_eq!(r.driver, "s3");
        assert_eq!(
            r.location,
            format!("s3://runs/namespaces/default/runs/run-collect/{}", r.name)
        );
        let bytes = read_all(store.as_ref(), &key, &r.name, 0).await;
        assert_eq!(bytes.len() as u64, r.size);
        assert_eq!(
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes))),
            r.digest
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_give_a_clear_error_without_retrying() {
    let gw = Versitygw::start();
    gw.create_bucket("locked");
    let store = gw
        .config("locked", None)
        .open_with(Versitygw::credentials("not-the-secret"))
        .unwrap();
    let key = RunKey::new("default", "run-denied");
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    std::fs::write(&f, b"x").unwrap();

    let err = store.put_file(&key, "f", &f, 1).await.unwrap_err();
    assert!(matches!(err, StoreError::Denied { .. }), "{err}");
    assert!(!err.is_transient());
    let msg = err.to_string();
    eprintln!("wrong credentials: {msg}");
    assert!(msg.contains("access denied"), "{msg}");
    assert!(msg.contains("AWS_SECRET_ACCESS_KEY"), "{msg}");
    assert!(msg.contains("s3://locked"), "{msg}");
    assert!(!msg.contains("not-the-secret"), "secret leaked: {msg}");

    let err = store.list(&key).await.unwrap_err();
    assert!(matches!(err, StoreError::Denied { .. }), "{err}");

    // collect gives up at once: retrying cannot fix credentials.
    let dir = tmp.path().join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("out.txt"), b"x").unwrap();
    match collect(
        &dir,
        &tmp.path().join("scratch"),
        store.as_ref(),
        &key,
        &CollectOptions::default(),
    )
    .await
    {
        Err(CollectError::Upload {
            name,
            attempts,
            source,
        }) => {
            assert_eq!((name.as_str(), attempts), ("out.txt", 1));
            assert!(matches!(*source, StoreError::Denied { .. }), "{source}");
        }
        other => panic!("expected an Upload error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_gives_a_clear_error() {
    let gw = Versitygw::start();
    let store = gw.store("no-such-bucket", None);
    let key = RunKey::new("default", "run-nobucket");
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    std::fs::write(&f, b"x").unwrap();

    for err in [
        store.put_file(&key, "f", &f, 1).await.unwrap_err(),
        store.list(&key).await.unwrap_err(),
        store.delete_run(&key).await.unwrap_err(),
    ] {
        let msg = err.to_string();
        eprintln!("missing bucket: {msg}");
        assert!(matches!(err, StoreError::BucketMissing { .. }), "{msg}");
        assert!(
            msg.contains("bucket \"no-such-bucket\" does not exist"),
            "{msg}"
        );
        assert!(!err.is_transient());
    }
    assert!(!Path::new(&gw.data_dir().join("no-such-bucket")).exists());
}

#[tokio::test]
async fn credentials_from_the_environment_are_used_by_open() {
    // `open` reads AWS_* variables; prove it without touching this process's
    // environment (other tests run in parallel) by running this test binary
    // again with them set, filtered to the child-only test below.
    if std::env::var_os("KRUNTIMES_S3_ENV_CHILD").is_some() {
        return;
    }
    let gw = Versitygw::start();
    gw.create_bucket("envbucket");
    let exe = std::env::current_exe().unwrap();
    for (secret, expect_ok) in [(SECRET, true), ("wrong", false)] {
        let out = std::process::Command::new(&exe)
            .args(["--exact", "env_child", "--nocapture", "--test-threads=1"])
            .env(
                "KRUNTIMES_S3_ENV_CHILD",
                gw.config("envbucket", None).to_string(),
            )
            .env("AWS_ACCESS_KEY_ID", common::versitygw::ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "child test did not run: {text}");
        if expect_ok {
            assert!(text.contains("ENV-CHILD OK"), "{text}");
        } else {
            assert!(
                text.contains("ENV-CHILD ERR") && text.contains("access denied"),
                "{text}"
            );
        }
    }
}

/// Runs only as the child of the test above, with AWS_* set by it.
#[tokio::test]
async fn env_child() {
    let Ok(config) = std::env::var("KRUNTIMES_S3_ENV_CHILD") else {
        return;
    };
    let store = kruntimes_artifacts::StoreConfig::parse(&config)
        .unwrap()
        .open()
        .unwrap();
    let key = RunKey::new("default", "run-env");
    match store.list(&key).await {
        Ok(v) => println!("ENV-CHILD OK {}", v.len()),
        Err(e) => println!("ENV-CHILD ERR {e}"),
    }
}

#[test]
fn the_server_is_stopped_on_drop() {
    let gw = Versitygw::start();
    let pid = nix::unistd::Pid::from_raw(gw.pid() as i32);
    let endpoint = gw.endpoint.clone();
    assert!(nix::sys::signal::kill(pid, None).is_ok());
    drop(gw);
    assert_eq!(
        nix::sys::signal::kill(pid, None),
        Err(nix::errno::Errno::ESRCH),
        "versitygw survived its Drop"
    );
    let addr = endpoint.trim_start_matches("http://");
    assert!(std::net::TcpStream::connect(addr).is_err());
}
