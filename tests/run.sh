#!/usr/bin/env bash
# The whole kruntimes test suite, as CI runs it (.ci/run calls exactly this).
# Builds what the tests need first — the Go-built control plane (etcd,
# kube-apiserver, kube-controller-manager, kubectl, helm, versitygw; cached
# outside the repo) and the python Runtime Server's venv (cached outside the
# repo) — then runs every tier. A missing prerequisite fails the run with a
# message saying what to install; no tier is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log_dir=$(mktemp -d "${TMPDIR:-/tmp}/kruntimes-tests.XXXXXX")
step() { printf '\n==> %s\n' "$*"; }
need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "tests/run.sh: '$1' is required but not installed: $2" >&2
    exit 1
  }
}
need cargo "install Rust 1.88 or newer (rustup.rs)"
need go "install Go 1.24 or newer; it builds the test control plane from Go modules"
need python3 "install Python 3.10 or newer with the venv module"

step "control plane binaries (tests/controlplane/build.sh)"
KRUNTIMES_K8S_BIN=$(bash tests/controlplane/build.sh | tail -n 1)
export KRUNTIMES_K8S_BIN
echo "using $KRUNTIMES_K8S_BIN"

step "python Runtime Server venv (runtimes/python/scripts/venv.sh)"
KRUNTIMES_PYTHON=$(bash runtimes/python/scripts/venv.sh | tail -n 1)
export KRUNTIMES_PYTHON
echo "using $KRUNTIMES_PYTHON"

step "format check"
cargo fmt --all -- --check

step "build (all crates, binaries and tests)"
cargo build --locked --workspace --all-targets

step "Rust tests: unit, runtimed API, conformance (bash server), control plane, charts"
cargo test --locked --workspace 2>&1 | tee "$log_dir/cargo.log"

step "Runtime Server conformance suite against the python server"
KRUNTIMES_CONFORMANCE_CMD="$KRUNTIMES_PYTHON -m kruntimes_runtime" \
  cargo test --locked -p kruntimes-conformance 2>&1 | tee "$log_dir/conformance-python.log"

step "python Runtime Server tests (pytest)"
(cd runtimes/python && "$KRUNTIMES_PYTHON" -m pytest -q) 2>&1 | tee "$log_dir/pytest.log"

# One closing line over all tiers.
passed=0
failed=0
while read -r p f; do
  passed=$((passed + p))
  failed=$((failed + f))
done < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' \
  "$log_dir/cargo.log" "$log_dir/conformance-python.log")
# (grep finds nothing when there is nothing to count: not an error here)
py_passed=$(grep -oE '[0-9]+ passed' "$log_dir/pytest.log" | tail -n 1 | cut -d' ' -f1 || true)
py_failed=$(grep -oE '[0-9]+ failed' "$log_dir/pytest.log" | tail -n 1 | cut -d' ' -f1 || true)
passed=$((passed + ${py_passed:-0}))
failed=$((failed + ${py_failed:-0}))
rm -rf "$log_dir"
echo
echo "all tiers: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
