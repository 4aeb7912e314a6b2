//! Working directories: `<workspace_root>/<execution_id>/<working_dir>`,
//! created, per execution, and never outside the execution directory.
use tonic::Code;

use crate::client::{Ended, ended, expect_error, run, sh, start_raw, unique_id};
use crate::{Failure, ServerUnderTest, ensure};

/// An execution runs in `<workspace_root>/<id>` (working_dir ""), or in the
/// `working_dir` subdirectory, created if missing; a file written by one
/// execution is not in another's directory; `..` and absolute working_dirs
/// are rejected with INVALID_ARGUMENT naming working_dir and start nothing.
pub async fn working_directory(s: &ServerUnderTest) -> Result<(), Failure> {
    let mut c = s.client();
    let root = s.workspace_root();

    let a = unique_id("wd-a");
    let out = run(&mut c, sh(&a, "pwd -P; echo from-a > marker")).await?;
    let want = canonical(&root.join(&a));
    ensure!(
        out.stdout_text().trim_end() == want,
        "{a}: working directory {:?}, want {want:?}",
        out.stdout_text().trim_end()
    );

    let b = unique_id("wd-b");
    let mut req = sh(&b, "pwd -P; ls -A");
    req.working_dir = "sub/dir".into();
    let out = run(&mut c, req).await?;
    let want = canonical(&root.join(&b).join("sub/dir"));
    let text = out.stdout_text();
    let mut lines = text.lines();
    ensure!(
        lines.next() == Some(want.as_str()),
        "{b}: working_dir \"sub/dir\" ran in {text:?}, want {want:?}"
    );
    ensure!(
        lines.next().is_none(),
        "{b}: a fresh working directory must be empty, it holds {text:?}"
    );
    ensure!(
        !root.join(&b).join("marker").exists() && root.join(&a).join("marker").exists(),
        "marker written by {a} must be in its own directory only"
    );

    for bad in ["../escape", "sub/../../escape", "/tmp"] {
        let id = unique_id("wd-bad");
        let mut req = sh(&id, "echo should-not-run > ran");
        req.working_dir = bad.into();
        expect_error(
            &format!("Start with working_dir {bad:?}"),
            start_raw(&mut c, req).await,
            Code::InvalidArgument,
            &["working_dir"],
        )?;
        ensure!(
            !root.join("escape").exists() && !root.join(&id).join("ran").exists(),
            "working_dir {bad:?} was rejected but something ran or was created"
        );
    }

    // "." is the execution directory itself.
    let d = unique_id("wd-dot");
    let mut req = sh(&d, "pwd -P");
    req.working_dir = ".".into();
    let out = run(&mut c, req).await?;
    ensure!(
        ended(&out.exit)? == Ended::Code(0),
        "{d}: working_dir \".\" failed: {:?}",
        out.exit
    );
    ensure!(
        out.stdout_text().trim_end() == canonical(&root.join(&d)),
        "{d}: working_dir \".\" ran in {:?}",
        out.stdout_text()
    );
    Ok(())
}

fn canonical(p: &std::path::Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}
