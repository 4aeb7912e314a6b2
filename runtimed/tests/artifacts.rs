//! Artifacts through the runtimed API: collected after the Run (files as they
//! are, directories as deterministic tars), listed with metadata, downloaded
//! with the digest first and resumable offsets; bad trees fail the Run.

mod common;

use common::{Daemon, execute, sh};
use kruntimes_proto::runtimed::v1 as pb;
use sha2::{Digest, Sha256};
use tonic::Code;

type Client = pb::runtimed_client::RuntimedClient<tonic::transport::Channel>;

async fn download(
    c: &mut Client,
    run: &str,
    name: &str,
    offset: u64,
) -> Result<(pb::Artifact, Vec<u8>), tonic::Status> {
    let mut s = c
        .download_artifact(pb::DownloadArtifactRequest {
            run_id: run.into(),
            name: name.into(),
            offset,
        })
        .await?
        .into_inner();
    let mut meta = None;
    let mut data = Vec::new();
    while let Some(m) = s.message().await? {
        match m.event.unwrap() {
            pb::download_artifact_response::Event::Metadata(a) => {
                assert!(
                    meta.is_none() && data.is_empty(),
                    "metadata comes first, once"
                );
                meta = Some(a);
            }
            pb::download_artifact_response::Event::Chunk(ch) => {
                assert_eq!(ch.offset, offset + data.len() as u64);
                data.extend_from_slice(&ch.data);
            }
        }
    }
    Ok((meta.expect("metadata"), data))
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_collected_listed_and_downloaded() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let script = r#"
        cd "$KRUNTIMES_ARTIFACTS"
        seq 1 100000 > numbers.txt
        mkdir -p report/sub && echo '{"ok":true}' > report/sub/result.json && echo hi > report/a.txt
    "#;
    let mut req = sh(script);
    req.run_id = "arts".into();
    let run = execute(&mut c, req).await.run.unwrap();
    assert_eq!(run.phase, pb::Phase::Succeeded as i32, "{}", run.message);
    let names: Vec<_> = run.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["numbers.txt", "report.tar"]);

    let listed = c
        .list_artifacts(pb::ListArtifactsRequest {
            run_id: "arts".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .artifacts;
    assert_eq!(listed, run.artifacts);

    let (meta, data) = download(&mut c, "arts", "numbers.txt", 0).await.unwrap();
    let want: Vec<u8> = (1..=100000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    assert!(data == want);
    assert_eq!(meta.size, want.len() as u64);
    assert_eq!(meta.digest, sha(&want));
    assert_eq!(meta.kind, "file");
    assert!(
        meta.content_type.starts_with("text/plain"),
        "{}",
        meta.content_type
    );
    assert_eq!(meta.driver, "filesystem");

    // Resume from an offset.
    let (_, tail) = download(&mut c, "arts", "numbers.txt", 500_000)
        .await
        .unwrap();
    assert!(tail == want[500_000..]);

    let (meta, tar) = download(&mut c, "arts", "report.tar", 0).await.unwrap();
    assert_eq!(meta.kind, "directory");
    assert_eq!(meta.digest, sha(&tar));
    assert_eq!(meta.content_type, "application/x-tar");

    let e = download(&mut c, "arts", "nope", 0).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("numbers.txt"), "{}", e.message());
    let e = download(&mut c, "arts", "numbers.txt", 1 << 40)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // The same tree gives the same tar bytes (deterministic), even later.
    let mut again = sh(script);
    again.run_id = "arts2".into();
    let run2 = execute(&mut c, again).await.run.unwrap();
    assert_eq!(run2.artifacts[1].digest, run.artifacts[1].digest);
}

/// A Run that comes without an id gets the one whose directories runtimed
/// renamed into place between Runs: it runs there like any other Run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_named_run_runs_in_directories_put_in_place_ahead() {
    let d = Daemon::start(&[]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();
    let first = execute(&mut c, sh("true")).await.run.unwrap();
    assert_eq!(
        first.phase,
        pb::Phase::Succeeded as i32,
        "{}",
        first.message
    );
    // Its directories go back to the spares, and a pair is renamed into
    // place for the next self-named Run: wait for that.
    let workspace = d.dir.path().join("workspace");
    let artifacts = workspace.join(".kruntimes/artifacts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let prenamed = loop {
        let names: Vec<String> = std::fs::read_dir(&artifacts)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        if let [one] = &names[..]
            && one != &first.run_id
        {
            break one.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{names:?}\n{}",
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(workspace.join(&prenamed).is_dir(), "{}", d.log());

    let got = execute(
        &mut c,
        sh(r#"pwd; ls -A; echo "$KRUNTIMES_RUN_ID"; echo hi > "$KRUNTIMES_ARTIFACTS/x""#),
    )
    .await;
    let run = got.run.unwrap();
    assert_eq!(run.phase, pb::Phase::Succeeded as i32, "{}", run.message);
    assert_eq!(run.run_id, prenamed);
    let want = format!("{}\n{prenamed}\n", workspace.join(&prenamed).display());
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        want,
        "an empty working directory"
    );
    let names: Vec<_> = run.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["x"]);
    let (_, data) = download(&mut c, &run.run_id, "x", 0).await.unwrap();
    assert_eq!(data, b"hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_and_bad_trees() {
    let d = Daemon::start(&["--max-artifact-bytes", "100000"]).await;
    d.wait_ready("bash").await;
    let mut c = d.client();

    let failed = execute(
        &mut c,
        sh(r#"echo x > "$KRUNTIMES_ARTIFACTS/log.txt"; exit 2"#),
    )
    .await
    .run
    .unwrap();
    assert_eq!(failed.exit_code, Some(2));
    assert!(
        failed.artifacts.is_empty(),
        "no artifacts from a failed Run unless asked"
    );
    let mut on_failure = sh(r#"echo x > "$KRUNTIMES_ARTIFACTS/log.txt"; exit 2"#);
    on_failure.artifacts_on_failure = true;
    let failed = execute(&mut c, on_failure).await.run.unwrap();
    assert_eq!(failed.artifacts.len(), 1);
    assert_eq!(failed.exit_code, Some(2));

    let link = execute(
        &mut c,
        sh(r#"mkdir "$KRUNTIMES_ARTIFACTS/d"; ln -s /etc/passwd "$KRUNTIMES_ARTIFACTS/d/pw""#),
    )
    .await
    .run
    .unwrap();
    assert_eq!(link.phase, pb::Phase::Failed as i32);
    assert!(
        link.message.contains("d/pw") && link.message.contains("symlink"),
        "{}",
        link.message
    );
    assert!(link.artifacts.is_empty());

    let big = execute(
        &mut c,
        sh(r#"head -c 200000 /dev/zero > "$KRUNTIMES_ARTIFACTS/big.bin""#),
    )
    .await
    .run
    .unwrap();
    assert_eq!(big.phase, pb::Phase::Failed as i32);
    assert!(
        big.message.contains("big.bin") && big.message.contains("100000"),
        "{}",
        big.message
    );
}
