#!/usr/bin/env bash
# Runs real Runs end to end on this machine, no cluster needed: builds runtimed,
# the bash Runtime Server and krt, sets up the python Runtime Server's venv
# (cached outside the repo), then runs a python snippet and a bash command
# through `krt local`, which starts a private runtimed for each Run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --locked -p runtimed -p kruntimes-bash-runtime -p krt
KRUNTIMES_PYTHON=$(bash runtimes/python/scripts/venv.sh | tail -n 1)
export KRUNTIMES_PYTHON
krt=${CARGO_TARGET_DIR:-target}/debug/krt

echo '$ krt local -- python3 -c ...'
"$krt" local -- python3 -c 'import sys, platform; print(f"hello from python {platform.python_version()} (warm fork of {sys.executable})")'
echo '$ krt local -- bash -c ...'
"$krt" local -- bash -c 'echo "hello from bash $BASH_VERSION in $PWD"; echo "this line goes to stderr" >&2'
echo '$ krt local -- bash -c "exit 3"   # krt exits with the Run'"'"'s exit code'
set +e
"$krt" local -- bash -c 'exit 3'
echo "exit code: $?"
