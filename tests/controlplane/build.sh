#!/usr/bin/env bash
# Builds the real control-plane binaries the test harness runs (etcd,
# kube-apiserver, kube-controller-manager, kubectl, helm, versitygw) from the
# Go modules pinned in go.mod/go.sum next to this script.
#
# Binaries land in a cache directory outside the repository, keyed by the
# Kubernetes version:  ${KRUNTIMES_CACHE:-$HOME/.cache/kruntimes}/k8s-<version>/bin
# Each binary has a stamp file recording the module version and flags it was
# built from; only missing or stale binaries are rebuilt, so re-running is cheap.
#
# Progress goes to stderr and stdout; the LAST line on stdout is the bin dir.
#
# Environment:
#   KRUNTIMES_CACHE   cache root (default $HOME/.cache/kruntimes)
#   GO                go binary (default: go on PATH, else /usr/local/go/bin/go)
#   BUILD_JOBS        go build -p value (default 2)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [[ ! -x "$GO" ]]; then
  echo "build.sh: no Go toolchain found (set GO=/path/to/go)" >&2
  exit 1
fi
jobs="${BUILD_JOBS:-2}"

# go.sum is committed: no checksum database is needed, and -mod=readonly makes a
# missing go.sum entry an error instead of a silent network lookup.
export GOSUMDB=off
export GOFLAGS="-mod=readonly -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

modver() { "$GO" list -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' "$1"; }

log() { echo "[build.sh $(date +%H:%M:%S)] $*"; }

log "resolving module versions (downloads sources on first run)"
k8s_version="$(modver k8s.io/kubernetes)"
etcd_version="$(modver go.etcd.io/etcd/server/v3)"
helm_version="$(modver helm.sh/helm/v3)"
vgw_version="$(modver github.com/versity/versitygw)"
staging_version="$(modver k8s.io/client-go)"

# Replaced staging modules must match the Kubernetes tag (v1.34.N <-> v0.34.N).
if [[ "${k8s_version#v1.}" != "${staging_version#v0.}" ]]; then
  echo "build.sh: k8s.io/kubernetes $k8s_version but staging modules at $staging_version; fix go.mod replaces" >&2
  exit 1
fi

cache_root="${KRUNTIMES_CACHE:-$HOME/.cache/kruntimes}"
bin="$cache_root/k8s-$k8s_version/bin"
mkdir -p "$bin"

k8s_minor="$(echo "$k8s_version" | cut -d. -f2)"
build_date="1970-01-01T00:00:00Z" # fixed, so a rebuild is byte-for-byte comparable

k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version"
  k8s_ldflags+=" -X $pkg.gitMajor=1"
  k8s_ldflags+=" -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
  k8s_ldflags+=" -X $pkg.buildDate=$build_date"
  # The module proxy does not record the commit; say so rather than invent one.
  k8s_ldflags+=" -X $pkg.gitCommit=unknown"
done

helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done

vgw_ldflags="-s -w -X main.Version=$vgw_version -X main.Build=$vgw_version -X main.BuildTime=$build_date"

# name | package | module version | ldflags
targets=(
  "etcd|go.etcd.io/etcd/server/v3|$etcd_version|-s -w"
  "kube-apiserver|k8s.io/kubernetes/cmd/kube-apiserver|$k8s_version|$k8s_ldflags"
  "kube-controller-manager|k8s.io/kubernetes/cmd/kube-controller-manager|$k8s_version|$k8s_ldflags"
  "kubectl|k8s.io/kubernetes/cmd/kubectl|$k8s_version|$k8s_ldflags"
  "helm|helm.sh/helm/v3/cmd/helm|$helm_version|$helm_ldflags"
  "versitygw|github.com/versity/versitygw/cmd/versitygw|$vgw_version|$vgw_ldflags"
)

go_version="$("$GO" env GOVERSION)"
built=0
start_all=$SECONDS
for t in "${targets[@]}"; do
  IFS='|' read -r name pkg version ldflags <<<"$t"
  stamp="$bin/.$name.stamp"
  want="$pkg@$version $go_version $ldflags"
  if [[ -x "$bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "$name $version: up to date"
    continue
  fi
  log "$name $version: building $pkg"
  start=$SECONDS
  # Build to a temporary name and rename, so an interrupted build never leaves
  # a truncated binary that looks current.
  "$GO" build -p "$jobs" -trimpath -ldflags "$ldflags" -o "$bin/.$name.tmp" "$pkg"
  mv -f "$bin/.$name.tmp" "$bin/$name"
  echo "$want" >"$stamp"
  built=$((built + 1))
  log "$name $version: built in $((SECONDS - start))s"
done
log "done: $built binaries built in $((SECONDS - start_all))s (etcd $etcd_version, kubernetes $k8s_version, helm $helm_version, versitygw $vgw_version)"
echo "$bin"
