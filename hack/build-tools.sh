#!/usr/bin/env bash
# Builds the sandbox's binaries from pinned Go modules into a cache outside the clone.
#
# Why a wrapper module: k8s.io/kubernetes requires its staging modules at v0.0.0 with local
# replaces, so `go install` cannot build it; a wrapper that replaces each with its published
# v0.X.Y can. etcd's release tags carry relative replaces too, hence a wrapper for it as well.
#
# Also builds Rewind's own Go test tools from the module in hack/tools (argocd-lua: Argo CD's
# Lua runtime for the chart's health check and actions; kstatus: cli-utils' kstatus), which the
# unit tests run. They have their own cache key, from the contents of hack/tools, so changing
# them never rebuilds Kubernetes, and a new hack/versions.env never rebuilds them.
#
# And istioctl, from the istio.io/istio module at the pseudo-version in hack/istioctl.env, for
# the tests that run `istioctl validate` and `istioctl analyze` on what Rewind writes. It is the
# largest build here, so it too has its own cache key (the contents of hack/istioctl.env and
# ISTIOCTL_RECIPE), in ~/.cache/rewind/istioctl/<hash>/.
#
#   hack/build-tools.sh                  build what is missing of all three; print the sandbox's
#                                        bin directory on stdout (only that line)
#   hack/build-tools.sh --test-tools     build only the test tools; print their bin directory
#   hack/build-tools.sh --test-tools-dir print where the test tools are (or would be); build nothing
#   hack/build-tools.sh --istioctl       build only istioctl; print its bin directory
#   hack/build-tools.sh --istioctl-dir   print where istioctl is (or would be); build nothing
#   hack/build-tools.sh --crds           take the Gateway API and InferencePool CRDs from their
#                                        Go modules (hack/crd-versions.env); print their directory
#   hack/build-tools.sh --crds-dir       print where those CRDs are (or would be); fetch nothing
#   hack/build-tools.sh --apiserver VERSION
#                                        build only kube-apiserver at another Kubernetes version
#                                        (one of hack/kube-versions.env: the chart's oldest
#                                        supported minor and one in between, for the version
#                                        tests); print its bin directory. Each version has its
#                                        own cache key, so it never rebuilds the sandbox's.
#
# The CRDs of hack/crd-versions.env have their own cache key too (that file and CRDS_RECIPE),
# in ~/.cache/rewind/crds/<hash>/, so pinning a new Gateway API never rebuilds Kubernetes.
#
# Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${REWIND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rewind}"
# Bump RECIPE when a change to this script changes what it produces.
RECIPE=1
key="$( (cat "$here/versions.env"; echo "recipe=$RECIPE") | sha256sum | cut -c1-16)"
dest="$cache_root/$key"
bin="$dest/bin"
logs="$dest/logs"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="-buildvcs=false -mod=mod"

log() { printf '[build-tools] %s\n' "$*" >&2; }

# The test tools: key = their sources (go.mod, go.sum, *.go) and TEST_TOOLS_RECIPE.
# Bump TEST_TOOLS_RECIPE when a change to build_test_tools changes what it produces.
TEST_TOOLS_RECIPE=1
test_tools_src="$here/tools"
test_tools_key="$( (cd "$test_tools_src" &&
  find . -type f \( -name go.mod -o -name go.sum -o -name '*.go' \) -print0 | LC_ALL=C sort -z |
  xargs -0 sha256sum; echo "recipe=$TEST_TOOLS_RECIPE") | sha256sum | cut -c1-16)"
test_tools_dest="$cache_root/test-tools/$test_tools_key"
test_tools_bin="$test_tools_dest/bin"
TEST_TOOLS=(argocd-lua kstatus)

# istioctl: key = hack/istioctl.env and ISTIOCTL_RECIPE (bump it when build_istioctl changes
# what it produces).
ISTIOCTL_RECIPE=1
# shellcheck source=istioctl.env
source "$here/istioctl.env"
istioctl_key="$( (cat "$here/istioctl.env"; echo "recipe=$ISTIOCTL_RECIPE") | sha256sum | cut -c1-16)"
istioctl_dest="$cache_root/istioctl/$istioctl_key"
istioctl_bin="$istioctl_dest/bin"

# The Gateway API (standard channel) and InferencePool (v1) CRDs: key = crd-versions.env
# and CRDS_RECIPE. Bump CRDS_RECIPE when a change to build_crds changes what it produces.
CRDS_RECIPE=1
crds_key="$( (cat "$here/crd-versions.env"; echo "recipe=$CRDS_RECIPE") | sha256sum | cut -c1-16)"
crds_dest="$cache_root/crds/$crds_key"
CRD_FILES=(gateway-api-crds.yaml inference-pool-crds.yaml)

# Other API servers (--apiserver VERSION): key = that version and APISERVER_RECIPE.
# Bump APISERVER_RECIPE when a change to build_kubernetes changes what they are.
APISERVER_RECIPE=1
usage() { log "usage: $0 [--test-tools | --test-tools-dir | --istioctl | --istioctl-dir | --crds | --crds-dir | --apiserver VERSION]"; exit 2; }

mode="${1:-all}"
case "$mode" in
  all | --test-tools | --istioctl | --crds) ;;
  --test-tools-dir) echo "$test_tools_bin"; exit 0 ;;
  --istioctl-dir) echo "$istioctl_bin"; exit 0 ;;
  --crds-dir) echo "$crds_dest"; exit 0 ;;
  --apiserver)
    apiserver_version="${2:-}"
    [[ $apiserver_version =~ ^v1\.[0-9]+\.[0-9]+$ ]] || usage
    apiserver_key="$( (echo "kube-apiserver=$apiserver_version"; echo "recipe=$APISERVER_RECIPE") |
      sha256sum | cut -c1-16)"
    apiserver_dest="$cache_root/apiserver/$apiserver_key"
    ;;
  *) usage ;;
esac

command -v go >/dev/null || { log "go is not installed: install Go >= 1.26 (https://go.dev/dl) and re-run"; exit 1; }

# Run a build step with a heartbeat so a multi-minute compile shows it is alive.
run_step() {
  local name="$1" module="$2" logfile="$logs/$1.log"; shift 2
  local started=$SECONDS
  log "building $name from $module (log: $logfile)"
  ("$@") >"$logfile" 2>&1 &
  local pid=$! last=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if ((SECONDS - last >= 20)); then
      last=$SECONDS
      log "  ... $name still building, $((SECONDS - started))s"
    fi
  done
  if ! wait "$pid"; then
    log "FAILED: $name (module $module). Last lines of $logfile:"
    tail -n 25 "$logfile" >&2
    exit 1
  fi
  log "built $name in $((SECONDS - started))s"
}

# Each binary goes to a temporary name first; only a finished build is moved into bin/.
install_bin() { mv -f "$1" "$bin/$2"; }

# build_kubernetes VERSION DEST CMD...: the commands of k8s.io/kubernetes at VERSION into
# DEST/bin, built in DEST/src and DEST/tmp-k8s.
build_kubernetes() {
  local version="$1" out="$2"; shift 2
  local cmds=("$@") work="$out/src/kubernetes" tmp="$out/tmp-k8s"
  rm -rf "$work" "$tmp"; mkdir -p "$work" "$tmp"
  local kmod minor staging_version c
  kmod="$(go mod download -json "k8s.io/kubernetes@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  minor="${version#v1.}"; minor="${minor%%.*}"
  staging_version="v0.${version#v1.}"
  {
    echo "module rewind.dev/sandbox/kubernetes"
    echo
    grep -E '^go ' "$kmod"
    echo
    echo "require k8s.io/kubernetes $version"
    echo
    echo "replace ("
    # Every staging module kubernetes requires at v0.0.0 is replaced with its published release.
    awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r&&$2=="v0.0.0"{print $1}' "$kmod" |
      while read -r m; do echo "	$m => $m $staging_version"; done
    echo ")"
  } >"$work/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in "${cmds[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
    printf ')\n'
  } >"$work/tools.go"
  local pkg="k8s.io/component-base/version" commit="0000000000000000000000000000000000000000"
  local ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.gitCommit=$commit -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  (cd "$work" && go mod tidy -e && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
    "${cmds[@]/#/k8s.io/kubernetes/cmd/}")
  for c in "${cmds[@]}"; do mv -f "$tmp/$c" "$out/bin/$c"; done
  rm -rf "$tmp"
}

build_etcd() {
  local work="$dest/src/etcd" tmp="$dest/tmp-etcd"
  rm -rf "$work" "$tmp"; mkdir -p "$work" "$tmp"
  cat >"$work/go.mod" <<MOD
module rewind.dev/sandbox/etcd

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  cat >"$work/main.go" <<GO
// Command etcd is etcd's own entry point, built through a wrapper module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$work" && go get "go.etcd.io/etcd/api/v3@$ETCD_VERSION" "go.etcd.io/etcd/client/pkg/v3@$ETCD_VERSION" \
      "go.etcd.io/etcd/client/v3@$ETCD_VERSION" "go.etcd.io/etcd/pkg/v3@$ETCD_VERSION" \
      "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" .)
  install_bin "$tmp/etcd" etcd
  rm -rf "$tmp"
}

build_go_install() {
  local name="$1" pkg="$2" version="$3" tmp="$dest/tmp-$1"
  rm -rf "$tmp"; mkdir -p "$tmp"
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "$pkg@$version"
  install_bin "$tmp/$name" "$name"
  rm -rf "$tmp"
}

# kwok ships its "fast" lifecycle stages as YAML in its module, not in the binary.
build_kwok_stages() {
  local dir
  dir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  local stage="$dir/kustomize/stage"
  for f in "$stage/node/fast/node-initialize.yaml" "$stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$stage/pod/fast/pod-ready.yaml" "$stage/pod/fast/pod-complete.yaml" "$stage/pod/fast/pod-delete.yaml"; do
    echo "---"; cat "$f"
  done >"$dest/kwok-stages.yaml.tmp"
  mv -f "$dest/kwok-stages.yaml.tmp" "$dest/kwok-stages.yaml"
}

build_istio_crds() {
  local dir
  dir="$(go mod download -json "istio.io/api@$ISTIO_API_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  install -m 0644 "$dir/kubernetes/customresourcedefinitions.gen.yaml" "$dest/istio-crds.yaml.tmp"
  mv -f "$dest/istio-crds.yaml.tmp" "$dest/istio-crds.yaml"
}

# The module's own list of standard-channel CRDs (config/crd/kustomization.yaml), in its
# order, and the v1 InferencePool CRD alone; each file moved into place only when whole.
build_crds() {
  # shellcheck source=crd-versions.env
  source "$here/crd-versions.env"
  local gw gie f
  gw="$(go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  gie="$(go mod download -json "sigs.k8s.io/gateway-api-inference-extension@$INFERENCE_EXTENSION_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  for f in $(awk '/^resources:/{r=1;next} r&&/^ *- /{print $2} r&&!/^ *- /{r=0}' "$gw/config/crd/kustomization.yaml"); do
    case "$f" in standard/*) echo "---"; cat "$gw/config/crd/$f" ;; esac
  done >"$crds_dest/gateway-api-crds.yaml.tmp"
  grep -q 'name: httproutes.gateway.networking.k8s.io' "$crds_dest/gateway-api-crds.yaml.tmp"
  install -m 0644 "$gie/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" \
    "$crds_dest/inference-pool-crds.yaml.tmp"
  for f in "${CRD_FILES[@]}"; do mv -f "$crds_dest/$f.tmp" "$crds_dest/$f"; done
}

crds_ready() {
  local f
  for f in "${CRD_FILES[@]}"; do [[ -f "$crds_dest/$f" ]] || return 1; done
}

ensure_crds() {
  crds_ready && return 0
  local logs="$crds_dest/logs"  # run_step's log directory, for this step only
  mkdir -p "$logs"
  log "cache: $crds_dest (key from hack/crd-versions.env)"
  run_step crds "sigs.k8s.io/gateway-api, sigs.k8s.io/gateway-api-inference-extension" build_crds
  crds_ready || { log "internal error: the CRDs were taken but are missing in $crds_dest"; exit 1; }
}

# Every artifact is moved into place only when whole, so "exists" means "built": each step
# below is skipped when its artifact is there, and a pinned-version change picks a new $dest.
ready() {
  for f in etcd kwok kube-apiserver kube-controller-manager kube-scheduler kubectl helm; do
    [[ -x "$bin/$f" ]] || return 1
  done
  [[ -f "$dest/istio-crds.yaml" && -f "$dest/kwok-stages.yaml" ]]
}
test_tools_ready() {
  local t
  for t in "${TEST_TOOLS[@]}"; do [[ -x "$test_tools_bin/$t" ]] || return 1; done
}

# go.sum is committed, and -mod=readonly builds exactly the versions pinned there.
build_test_tools() {
  local tmp t
  tmp="$(mktemp -d "$test_tools_dest/tmp.XXXXXX")"
  (cd "$test_tools_src" && go build -mod=readonly -trimpath -ldflags "-s -w" -o "$tmp/" \
    "${TEST_TOOLS[@]/#/./}")
  for t in "${TEST_TOOLS[@]}"; do mv -f "$tmp/$t" "$test_tools_bin/$t"; done
  rm -rf "$tmp"
}

ensure_test_tools() {
  test_tools_ready && return 0
  local logs="$test_tools_dest/logs"  # run_step's log directory, for this step only
  mkdir -p "$test_tools_bin" "$logs"
  log "cache: $test_tools_dest (key from the contents of hack/tools)"
  run_step test-tools "hack/tools (${TEST_TOOLS[*]})" build_test_tools
  test_tools_ready || { log "internal error: the test tools built but are missing in $test_tools_bin"; exit 1; }
}

# istioctl, built as Istio builds it (its own go.mod, so exactly the dependencies Istio pins),
# with the version stamped the way Istio's release build stamps it. Beside the binary: the
# CRDs of that Istio (crd-all.gen.yaml), which a test compares with the sandbox's.
istioctl_ready() { [[ -x "$istioctl_bin/istioctl" && -f "$istioctl_dest/istio-crds.yaml" ]]; }
build_istioctl() {
  local tmp dir v=istio.io/istio/pkg/version
  tmp="$(mktemp -d "$istioctl_dest/tmp.XXXXXX")"
  GOBIN="$tmp" go install -trimpath \
    -ldflags "-s -w -X $v.buildVersion=$ISTIO_BUILD_VERSION -X $v.buildGitRevision=${ISTIO_MODULE_VERSION##*-} -X $v.buildStatus=Clean -X $v.buildTag=$ISTIO_BUILD_VERSION" \
    "istio.io/istio/istioctl/cmd/istioctl@$ISTIO_MODULE_VERSION"
  dir="$(go mod download -json "istio.io/istio@$ISTIO_MODULE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  install -m 0644 "$dir/manifests/charts/base/files/crd-all.gen.yaml" "$istioctl_dest/istio-crds.yaml"
  mv -f "$tmp/istioctl" "$istioctl_bin/istioctl"
  rm -rf "$tmp"
}
ensure_istioctl() {
  istioctl_ready && return 0
  local logs="$istioctl_dest/logs"
  mkdir -p "$istioctl_bin" "$logs"
  # One build at a time (it is the longest here): a second caller waits for the first.
  exec 9>"$istioctl_dest/.lock"
  flock 9
  istioctl_ready && return 0
  log "cache: $istioctl_dest (key from hack/istioctl.env)"
  run_step istioctl "istio.io/istio/istioctl/cmd/istioctl@$ISTIO_MODULE_VERSION" build_istioctl
  istioctl_ready || { log "internal error: istioctl built but is missing in $istioctl_bin"; exit 1; }
}

if [[ $mode == --apiserver ]]; then
  if [[ ! -x "$apiserver_dest/bin/kube-apiserver" ]]; then
    bin="$apiserver_dest/bin" logs="$apiserver_dest/logs"  # run_step's directories, for this build
    mkdir -p "$bin" "$logs"
    log "cache: $apiserver_dest (key from $apiserver_version and APISERVER_RECIPE)"
    run_step "kube-apiserver-$apiserver_version" "k8s.io/kubernetes@$apiserver_version" \
      build_kubernetes "$apiserver_version" "$apiserver_dest" kube-apiserver
    rm -rf "$apiserver_dest/src"
  fi
  echo "$apiserver_dest/bin"
  exit 0
fi
if [[ $mode == --test-tools ]]; then
  ensure_test_tools
  echo "$test_tools_bin"
  exit 0
fi
if [[ $mode == --istioctl ]]; then
  ensure_istioctl
  echo "$istioctl_bin"
  exit 0
fi
if [[ $mode == --crds ]]; then
  ensure_crds
  echo "$crds_dest"
  exit 0
fi
if ready; then
  ensure_test_tools
  ensure_istioctl
  ensure_crds
  echo "$bin"
  exit 0
fi

mkdir -p "$bin" "$logs"
log "cache: $dest (key from hack/versions.env and RECIPE)"
[[ -x "$bin/etcd" ]] || run_step etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" build_etcd
[[ -x "$bin/kwok" ]] || run_step kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" build_go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
[[ -x "$bin/kube-apiserver" && -x "$bin/kubectl" && -x "$bin/kube-scheduler" && -x "$bin/kube-controller-manager" ]] ||
  run_step kubernetes "k8s.io/kubernetes@$KUBERNETES_VERSION" build_kubernetes "$KUBERNETES_VERSION" "$dest" \
    kube-apiserver kube-controller-manager kube-scheduler kubectl
[[ -x "$bin/helm" ]] || run_step helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" build_go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
[[ -f "$dest/istio-crds.yaml" ]] || run_step istio-crds "istio.io/api@$ISTIO_API_VERSION" build_istio_crds
[[ -f "$dest/kwok-stages.yaml" ]] || run_step kwok-stages "sigs.k8s.io/kwok@$KWOK_VERSION" build_kwok_stages
rm -rf "$dest/src" "$dest/.complete"
ready || { log "internal error: a step finished but an artifact is missing in $dest"; exit 1; }
log "all binaries ready in $bin"
ensure_test_tools
ensure_istioctl
ensure_crds
echo "$bin"
