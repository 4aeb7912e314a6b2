#!/usr/bin/env bash
# Creates (idempotently) the python Runtime Server's virtualenv outside the repo,
# installs the package editable with its dev extras, (re)generates the gRPC
# stubs when the .proto is newer, and prints the venv's python as the LAST line.
#
# Env: KRUNTIMES_CACHE (default ~/.cache/kruntimes), KRUNTIMES_PYTHON_BASE (the
# base interpreter; default: the real executable behind `python3`, never a shim),
# KRUNTIMES_VENV_EXTRAS (default "dev"; e.g. "dev,bench").
set -euo pipefail

pkg_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
repo_dir=$(cd "$pkg_dir/../.." && pwd)
proto_root="$repo_dir/proto/proto"
extras=${KRUNTIMES_VENV_EXTRAS:-dev}

# Resolve the real interpreter: a version-manager shim costs >100 ms per start.
base=${KRUNTIMES_PYTHON_BASE:-$(python3 -c 'import sys; print(sys.executable)')}
base=$(readlink -f "$base")
[ -x "$base" ] || { echo "venv.sh: base interpreter '$base' is not executable" >&2; exit 1; }
version=$("$base" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')

# The key covers what the venv depends on: the manifest, the interpreter, the
# extras and this checkout (the editable install points into it).
key=$( { cat "$pkg_dir/pyproject.toml"; echo "$base"; echo "$extras"; echo "$pkg_dir"; } \
    | sha256sum | cut -c1-16)
cache=${KRUNTIMES_CACHE:-$HOME/.cache/kruntimes}
venv="$cache/venv-$version-$key"
mkdir -p "$cache"

# Concurrent callers (parallel tests, runtimed local mode) wait for one another.
exec 9>"$venv.lock"
flock 9

if [ ! -f "$venv/.kruntimes-installed" ]; then
    rm -rf "$venv"
    "$base" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -e "$pkg_dir[$extras]" >&2
    touch "$venv/.kruntimes-installed"
fi

# Regenerate the stubs when missing or older than any .proto they come from.
out="$pkg_dir/src/kruntimes_runtime/_proto"
stamp="$out/.generated"
if [ ! -f "$stamp" ] || [ -n "$(find "$proto_root" -name '*.proto' -newer "$stamp" -print -quit)" ] \
    || [ "$pkg_dir/src/kruntimes_runtime/protogen.py" -nt "$stamp" ]; then
    "$venv/bin/python" -m kruntimes_runtime.protogen --proto-root "$proto_root" --out "$out" >&2
    touch "$stamp"
fi

echo "$venv/bin/python"
