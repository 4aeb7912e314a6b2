//! Drift test: the committed CRD YAML and `docs/api.md` must equal what the Rust types
//! generate. Fix a failure with `cargo run -p kruntimes-api --bin crdgen`.

use std::path::PathBuf;

#[test]
fn committed_crds_and_reference_match_the_types() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let files = kruntimes_api::generated_files().expect("generate");
    assert_eq!(files.len(), 4, "three CRDs and the API reference");
    let mut stale = Vec::new();
    for file in files {
        let on_disk = std::fs::read_to_string(root.join(&file.path)).unwrap_or_default();
        if on_disk != file.contents {
            stale.push(file.path);
        }
    }
    assert!(
        stale.is_empty(),
        "generated files differ from the Rust types: {stale:?}; run `cargo run -p kruntimes-api --bin crdgen` and commit the result"
    );
}

#[test]
fn crd_directory_holds_only_generated_crds() {
    // A stale file left behind after a rename would still be installed by Helm.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names: Vec<String> = std::fs::read_dir(root.join(kruntimes_api::crd::CRD_DIR))
        .expect("read crds dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "runs.kruntimes.io.yaml",
            "runtimes.kruntimes.io.yaml",
            "workflows.kruntimes.io.yaml"
        ]
    );
}
