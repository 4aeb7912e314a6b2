#!/usr/bin/env bash
# Builds the release binaries, sets up the bench's venv (the python Runtime
# Server plus jupyter_client and ipykernel) and runs kruntimes-bench.
# Arguments go to the bench: `bash tests/bench/run.sh --quick`,
# `bash tests/bench/run.sh --only bash,python --json`, `... --help`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
target=${CARGO_TARGET_DIR:-$repo/target}

cargo build --release -p runtimed -p kruntimes-bash-runtime -p kruntimes-bench

# The venv of the python runtime with the "bench" extra (jupyter_client,
# ipykernel); the script prints the venv's python as its last line.
if [ -z "${KRUNTIMES_PYTHON:-}" ]; then
    if py=$(KRUNTIMES_VENV_EXTRAS=${KRUNTIMES_VENV_EXTRAS:-dev,bench} \
            bash runtimes/python/scripts/venv.sh | tail -n 1) && [ -x "$py" ]; then
        export KRUNTIMES_PYTHON=$py
    else
        echo "run.sh: the python venv could not be set up; the python figures will say why" >&2
    fi
fi
if [ -n "${KRUNTIMES_PYTHON:-}" ] \
        && ! "$KRUNTIMES_PYTHON" -c 'import jupyter_client, ipykernel' 2>/dev/null; then
    "$KRUNTIMES_PYTHON" -m pip install --quiet --disable-pip-version-check \
        'jupyter_client>=8' 'ipykernel>=6' >&2 \
        || echo "run.sh: could not install jupyter_client/ipykernel; the Jupyter row will say so" >&2
fi

exec "$target/release/kruntimes-bench" "$@"
