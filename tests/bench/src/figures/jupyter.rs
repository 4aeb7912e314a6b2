//! The Jupyter-kernel peer for figure 2: runs `tests/bench/jupyter_kernel.py`
//! (embedded in the binary) with the bench's interpreter and reads its p50/p90.

use crate::cli::Counts;
use crate::stats::Summary;
use std::path::Path;
use std::time::Duration;

const HELPER: &str = include_str!("../../jupyter_kernel.py");

#[derive(Debug, serde::Deserialize)]
struct HelperOutput {
    ok: bool,
    #[serde(default)]
    error: String,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    n: Option<usize>,
    ipykernel: Option<String>,
    jupyter_client: Option<String>,
}

/// The kernel's `print(1)`-until-idle latency and the versions used, or why
/// it could not be measured.
pub async fn measure(
    python: &Path,
    counts: Counts,
    scratch: &Path,
) -> Result<(Summary, String), String> {
    let script = scratch.join("jupyter_kernel.py");
    std::fs::write(&script, HELPER).map_err(|e| format!("writing {}: {e}", script.display()))?;
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(&script)
        .args(["--iterations", &counts.iterations.to_string()])
        .args(["--warmup", &counts.warmup.to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // A generous bound: kernel start-up plus a second per iteration.
    let limit = Duration::from_secs(120 + u64::from(counts.warmup + counts.iterations));
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .map_err(|_| {
            format!(
                "the Jupyter helper did not finish within {}s",
                limit.as_secs()
            )
        })?
        .map_err(|e| format!("cannot run {} {}: {e}", python.display(), script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let parsed: HelperOutput = serde_json::from_str(last).map_err(|e| {
        format!(
            "the Jupyter helper exited with {} and printed no result ({e}); stderr: {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr))
        )
    })?;
    if !parsed.ok {
        return Err(parsed.error);
    }
    match (parsed.p50_ms, parsed.p90_ms, parsed.n) {
        (Some(p50_ms), Some(p90_ms), Some(n)) => Ok((
            Summary { p50_ms, p90_ms, n },
            format!(
                "ipykernel {}, jupyter_client {}",
                parsed.ipykernel.unwrap_or_default(),
                parsed.jupyter_client.unwrap_or_default()
            ),
        )),
        _ => Err(format!(
            "the Jupyter helper's result lacks p50/p90/n: {last}"
        )),
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
