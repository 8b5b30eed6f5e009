#!/usr/bin/env bash
# Build etcd, kube-apiserver, kube-controller-manager and kube-scheduler (the control plane), kubelet,
# kube-proxy and the pause binary (the real node) from Debian 12's packages into a cache outside the
# repository, once per machine. Only what the cache lacks is compiled.
#
# Usage: tests/cluster/build.sh            build (or reuse) and print the bin directory
# Exit status: 0 built or cached; 3 impossible on this machine (the reason is printed and
# kept in $CACHE/IMPOSSIBLE for the tests to skip with); anything else is a real failure.
set -euo pipefail

K8S_SOURCE_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
K8S_GIT_VERSION="v1.20.2"
RECIPE=1   # bump when the build steps change, so old caches are rebuilt
CACHE="${JMK_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jupyter_mlflow_k8s/kubernetes-${K8S_SOURCE_VERSION}-r${RECIPE}}"
BIN="$CACHE/bin"
WANT=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause)

log() { printf '[k8s build] %s\n' "$*" >&2; }
impossible() {
    mkdir -p "$CACHE"
    printf '%s\n' "$*" >"$CACHE/IMPOSSIBLE"
    log "impossible here: $*"
    exit 3
}
built() { for b in "${WANT[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
# One build per machine at a time; a second caller waits, then reuses. (No flock, e.g. macOS: the
# Debian checks below report it impossible with exit 3 rather than failing here with 127.)
if command -v flock >/dev/null; then flock 9; fi
if built; then echo "$BIN"; exit 0; fi
rm -f "$CACHE/IMPOSSIBLE"

# --- Can this machine build it at all? ------------------------------------------------------
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || impossible "not a Debian system (no apt-get/dpkg-deb)"
[[ "$(cut -d. -f1 /etc/debian_version 2>/dev/null)" == 12 ]] || impossible "needs Debian 12 (bookworm); this is $(cat /etc/debian_version 2>/dev/null || echo unknown)"
[[ "$(dpkg --print-architecture)" == amd64 || "$(dpkg --print-architecture)" == arm64 ]] || impossible "unsupported architecture $(dpkg --print-architecture)"
command -v dpkg-source >/dev/null || impossible "dpkg-source missing (apt-get install dpkg-dev)"
avail_kb=$(df -Pk "$CACHE" | awk 'NR==2 {print $4}')
(( avail_kb > 3500000 )) || impossible "needs ~3.5 GB free under $CACHE, has $((avail_kb / 1024)) MB"

WORK="$CACHE/work"
rm -rf "$WORK"
mkdir -p "$WORK"/{apt/state/lists/partial,apt/cache/archives/partial,apt/parts,apt/prefs,debs,root,src,gopath,gocache}

# --- A private apt configuration with deb-src lines for the machine's own bookworm mirror. ---
# The system's apt configuration is never touched.
srclist="$WORK/apt/sources.list"
: >"$srclist"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    grep -E '^deb ' "$f" | grep -E ' bookworm(-updates|-security)? ' | sed -E 's/^deb /deb-src /' >>"$srclist" || true
    grep -E '^deb ' "$f" | grep -E ' bookworm(-updates|-security)? ' >>"$srclist" || true
done
for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    grep -q 'bookworm' "$f" || continue
    sed -E 's/^Types:.*/Types: deb deb-src/' "$f" >"$WORK/apt/parts/$(basename "$f")"
done
[[ -s "$srclist" ]] || ls "$WORK/apt/parts"/*.sources >/dev/null 2>&1 || impossible "no bookworm apt source configured on this machine"
APT=(apt-get -q -o "Dir::State=$WORK/apt/state" -o "Dir::Cache=$WORK/apt/cache"
     -o "Dir::Etc::SourceList=$srclist" -o "Dir::Etc::SourceParts=$WORK/apt/parts"
     -o "Dir::Etc::Preferences=$WORK/apt/prefs/none" -o "Dir::Etc::PreferencesParts=$WORK/apt/prefs"
     -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
log "updating a private apt index"
"${APT[@]}" update >"$WORK/apt-update.log" 2>&1 || impossible "the Debian archive is not reachable (apt-get update failed; see $WORK/apt-update.log)"

log "downloading the kubernetes $K8S_SOURCE_VERSION source package"
(cd "$WORK/src" && "${APT[@]}" source --download-only "kubernetes=$K8S_SOURCE_VERSION") >"$WORK/apt-source.log" 2>&1 \
    || impossible "cannot download the kubernetes=$K8S_SOURCE_VERSION source package (see $WORK/apt-source.log)"
log "downloading golang-1.19, etcd-server and reflect2"
(cd "$WORK/debs" && "${APT[@]}" download golang-1.19-go golang-1.19-src etcd-server golang-github-modern-go-reflect2-dev) \
    >"$WORK/apt-download.log" 2>&1 || impossible "cannot download the Go 1.19 toolchain or etcd-server (see $WORK/apt-download.log)"
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$WORK/root"; done

log "unpacking the source"
(cd "$WORK/src" && dpkg-source --no-check -x kubernetes_*.dsc tree) >"$WORK/dpkg-source.log" 2>&1
TREE="$WORK/src/tree"

# Fix 1: the vendored reflect2 1.0.1 crashes under Go >= 1.18; use Debian's 1.0.2.
R2_NEW="$WORK/root/usr/share/gocode/src/github.com/modern-go/reflect2"
R2_OLD="$TREE/vendor/github.com/modern-go/reflect2"
rm -f "$R2_OLD"/*.go "$R2_OLD"/*.s
for f in "$R2_NEW"/*.go "$R2_NEW"/*.s; do
    [[ -e "$f" && "$f" != *_test.go ]] && cp "$f" "$R2_OLD/"
done

export GOROOT="$WORK/root/usr/lib/go-1.19"
export PATH="$GOROOT/bin:$PATH"
export GOPATH="$WORK/gopath" GOCACHE="$WORK/gocache" GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$TREE" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

missing() { [[ ! -x "$BIN/$1" ]]; }

# Fix 2: pkg/generated/openapi is generated at build time upstream and is not in the tarball; only
# kube-apiserver needs it.
if missing kube-apiserver; then
log "generating pkg/generated/openapi"
go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
# The selection of build/root/Makefile.generated_files (KUBE_OPENAPI_TAG_FILES); vendor/k8s.io/* are
# symlinks into staging/, hence -R.
mapfile -t openapi_dirs < <(grep -Rl --include='*.go' -e '+k8s:openapi-gen=' pkg vendor/k8s.io 2>/dev/null \
    | grep -v -e '/testdata/' -e '_test.go$' -e '^vendor/k8s.io/code-generator/' \
              -e '^vendor/k8s.io/sample-apiserver/' -e '^vendor/k8s.io/kube-openapi/' \
    | xargs -n1 dirname | sort -u)
(( ${#openapi_dirs[@]} > 50 )) || { log "found only ${#openapi_dirs[@]} packages tagged for openapi-gen"; exit 1; }
inputs=$(printf 'k8s.io/kubernetes/%s,' "${openapi_dirs[@]}")
"$WORK/openapi-gen" --logtostderr \
    --go-header-file hack/boilerplate/boilerplate.generatego.txt \
    --input-dirs "${inputs%,}" \
    --output-base "$GOPATH/src" \
    --output-package k8s.io/kubernetes/pkg/generated/openapi \
    -O zz_generated.openapi \
    --report-filename "$WORK/openapi-violations.txt" >"$WORK/openapi-gen.log" 2>&1 \
    || { tail -20 "$WORK/openapi-gen.log" >&2; exit 1; }
fi

ldflags=""
for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$K8S_GIT_VERSION -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitTreeState=clean"
done
rm -rf "$CACHE/bin.tmp"
mkdir -p "$CACHE/bin.tmp"
for have in "${WANT[@]}"; do missing "$have" || cp -p "$BIN/$have" "$CACHE/bin.tmp/"; done
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    missing "$cmd" || continue
    log "compiling $cmd (kube-apiserver and kubelet take ~5 minutes each on 2 cores)"
    go build -ldflags "-s -w $ldflags" -o "$CACHE/bin.tmp/$cmd" "./cmd/$cmd"
done
# The pod sandbox's pause process, static so that an image from scratch can hold it alone.
if missing pause; then
    log "compiling pause"
    command -v gcc >/dev/null || { log "gcc missing (apt-get install gcc libc6-dev)"; exit 1; }
    gcc -Os -static -DVERSION="v3.4.1-jmk" -o "$CACHE/bin.tmp/pause" build/pause/linux/pause.c
    strip "$CACHE/bin.tmp/pause" 2>/dev/null || true
fi
missing etcd && cp "$WORK/root/usr/bin/etcd" "$CACHE/bin.tmp/etcd"
rm -rf "$BIN" && mv "$CACHE/bin.tmp" "$BIN"
"$BIN/kube-apiserver" --version >&2
cd /
rm -rf "$WORK"   # ~2.4 GB of sources and Go cache; the four binaries stay
log "built into $BIN"
echo "$BIN"
