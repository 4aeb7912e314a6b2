//! `crdgen`: writes the CRD YAML into `charts/kruntimes/crds/` and the API reference
//! into `docs/api.md`, or with `--check` reports files that differ from the types.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Generate (or check) the kruntimes CRDs and API reference from the Rust types.
#[derive(Parser)]
#[command(name = "crdgen")]
struct Args {
    /// Repository root; defaults to the workspace this crate was built from.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Do not write; exit 1 and name every file that differs from the generated one.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = args
        .root
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."));
    let files = match kruntimes_api::generated_files() {
        Ok(files) => files,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stale = Vec::new();
    for file in files {
        let path = root.join(&file.path);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == file.contents {
            continue;
        }
        if args.check {
            stale.push(file.path);
            continue;
        }
        if let Some(dir) = path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            eprintln!("crdgen: {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        if let Err(e) = std::fs::write(&path, &file.contents) {
            eprintln!("crdgen: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", file.path);
    }
    if stale.is_empty() {
        ExitCode::SUCCESS
    } else {
        for path in stale {
            eprintln!(
                "crdgen: {path} differs from the Rust types; run `cargo run -p kruntimes-api --bin crdgen`"
            );
        }
        ExitCode::FAILURE
    }
}
