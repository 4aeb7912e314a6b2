//! `krt artifacts` end to end against a real runtimed with a filesystem
//! store: list (text and JSON), download with verification, resume from a
//! part file, and digest mismatches (a bad part file, a tampered store).

mod common;

use common::{Runtimed, free_port, krt, run, text};
use std::path::{Path, PathBuf};

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let data = std::fs::read(path).unwrap();
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)))
}

#[test]
fn list_download_resume_and_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let store = tmp.path().join("store");
    let out_dir = tmp.path().join("out");
    for d in [&data, &store, &out_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    let store_arg = format!("fs:{}", store.display());
    let d = Runtimed::start(&data, free_port(), &["--artifact-store", &store_arg]);
    let a = d.addr.as_str();

    let out = run(krt().args([
        "--addr",
        a,
        "run",
        "--id",
        "art",
        "--",
        "sh",
        "-c",
        "head -c 20000000 /dev/urandom > \"$KRUNTIMES_ARTIFACTS/big.bin\" && \
         mkdir -p \"$KRUNTIMES_ARTIFACTS/site\" && echo hi > \"$KRUNTIMES_ARTIFACTS/site/index.html\" && \
         printf '{\"ok\":1}' > \"$KRUNTIMES_ARTIFACTS/result.json\"",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // list: text table and JSON.
    let out = run(krt().args(["--addr", a, "artifacts", "list", "art"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("CONTENT-TYPE"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        table.contains("site.tar") && table.contains("application/x-tar"),
        "{table}"
    );
    let out = run(krt().args(["--addr", a, "artifacts", "list", "art", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let arts = v.as_array().unwrap();
    let names: Vec<&str> = arts.iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["big.bin", "result.json", "site.tar"]);
    let big = &arts[0];
    assert_eq!(big["size"], 20_000_000);
    assert_eq!(big["kind"], "file");
    let stored = PathBuf::from(big["location"].as_str().unwrap());
    assert!(stored.starts_with(&store), "{}", stored.display());
    let digest = big["digest"].as_str().unwrap().to_string();
    assert_eq!(sha256(&stored), digest);

    // download -o FILE: verified, renamed, no part left.
    let dest = out_dir.join("big.bin");
    let out = run(krt()
        .args(["--addr", a, "artifacts", "download", "art", "big.bin", "-o"])
        .arg(&dest));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&dest), digest);
    assert!(!out_dir.join("big.bin.part").exists());
    assert!(text(&out.stderr).contains(&digest), "{}", text(&out.stderr));

    // Default destination: ./NAME.
    let out = run(krt().current_dir(&out_dir).args([
        "--addr",
        a,
        "artifacts",
        "download",
        "art",
        "result.json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(out_dir.join("result.json")).unwrap(),
        b"{\"ok\":1}"
    );

    // Resume: a part file holding the first 7 MB is completed, not redone
    // (were the offset ignored, the bytes would repeat and the digest fail).
    let resumed = out_dir.join("resumed.bin");
    let prefix = &std::fs::read(&stored).unwrap()[..7_000_000];
    std::fs::write(out_dir.join("resumed.bin.part"), prefix).unwrap();
    let out = run(krt()
        .args(["--addr", a, "artifacts", "download", "art", "big.bin", "-o"])
        .arg(&resumed));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256(&resumed), digest);
    assert!(!out_dir.join("resumed.bin.part").exists());

    // A part file that is not a prefix of the artifact: mismatch, nothing kept.
    let wrong = out_dir.join("wrong.bin");
    std::fs::write(out_dir.join("wrong.bin.part"), vec![0u8; 1000]).unwrap();
    let out = run(krt()
        .args(["--addr", a, "artifacts", "download", "art", "big.bin", "-o"])
        .arg(&wrong));
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("digest mismatch"),
        "{}",
        text(&out.stderr)
    );
    assert!(!wrong.exists() && !out_dir.join("wrong.bin.part").exists());

    // The store's copy altered behind runtimed's back (same size): krt
    // notices, says so, and leaves nothing misleading on disk.
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[12_345_678] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let tampered = out_dir.join("tampered.bin");
    let out = run(krt()
        .args(["--addr", a, "artifacts", "download", "art", "big.bin", "-o"])
        .arg(&tampered));
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("digest mismatch for artifact big.bin") && err.contains(&digest),
        "{err}"
    );
    assert!(!tampered.exists() && !out_dir.join("tampered.bin.part").exists());

    // Unknown artifact and bad names.
    let out = run(krt().current_dir(&out_dir).args([
        "--addr",
        a,
        "artifacts",
        "download",
        "art",
        "nope",
    ]));
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
    assert!(!out_dir.join("nope").exists() && !out_dir.join("nope.part").exists());
    let out = run(krt().args(["--addr", a, "artifacts", "download", "art", "../etc/passwd"]));
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("single path component"),
        "{}",
        text(&out.stderr)
    );
}
