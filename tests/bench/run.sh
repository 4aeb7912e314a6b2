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

# nginx and curl are the artifact-download baseline (Debian packages).
if ! command -v nginx >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq nginx-light curl >/dev/null
    else
        echo "run.sh: nginx and curl are missing (apt-get install nginx-light curl); the artifact figure will say n/a" >&2
    fi
fi

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
