#!/usr/bin/env bash
# Build the Dapr sidecar (daprd) from the pinned github.com/dapr/dapr release
# and cache it; a second run with the same inputs does nothing.
#
#   scripts/build-daprd.sh            build if needed; prints the binary path on stdout
#   scripts/build-daprd.sh --force    rebuild even when the cached binary is current
#   scripts/build-daprd.sh --check    exit 0 if the cached binary is current, 1 if not (no build)
#
# Source: dapr/sidecar/ (a small Go module: go.mod pins the dapr release,
# main.go starts the runtime, components.go registers the components we use).
# Output: .cache/daprd/<version>/daprd, plus the symlink .cache/daprd/current
# pointing at it, plus .cache/daprd/<version>/build-inputs (what it was built
# from). The binary is rebuilt when any of these change: the dapr version,
# go.mod, go.sum, the module's .go files, the Go toolchain version, the build
# flags.
#
# Needs only the Go toolchain and the Go module proxy. The Go module and build
# caches stay in their default places (go env GOMODCACHE / GOCACHE), so later
# runs on the same machine reuse them even after the binary is removed.
# The build runs on ONE core (-p 1, GOMAXPROCS=1): other work shares the
# machine. DAPRD_BUILD_PROCS=N allows more. Cold build: tens of minutes.
#
# Logs go to stderr; stdout carries only the binary path, so callers can do
#   DAPRD="$(scripts/build-daprd.sh)"
set -euo pipefail
export LC_COLLATE=C

FORCE=0
CHECK_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --check) CHECK_ONLY=1 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-daprd: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

START_NS=$(date +%s%N)
log() { echo "build-daprd: $*" >&2; }
elapsed() { echo "$(( ($(date +%s%N) - START_NS) / 1000000 ))" | awk '{printf "%.1f s", $1/1000}'; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC_DIR="$REPO_ROOT/dapr/sidecar"
CACHE_ROOT="$REPO_ROOT/.cache/daprd"
DAPR_MODULE="github.com/dapr/dapr"

if ! command -v go >/dev/null 2>&1; then
    log "the Go toolchain (go) is not on PATH; install it (Debian: apt-get install golang-go, or a newer Go) and retry"
    exit 1
fi
[ -f "$SRC_DIR/go.mod" ] || { log "missing $SRC_DIR/go.mod"; exit 1; }

# The pinned version is the one go.mod requires: a single source of truth.
VERSION="$(awk -v m="$DAPR_MODULE" '
    $1 == "require" && $2 == m { print $3; exit }
    $1 == m && $2 ~ /^v/        { print $2; exit }' "$SRC_DIR/go.mod")"
[ -n "$VERSION" ] || { log "cannot find the $DAPR_MODULE requirement in $SRC_DIR/go.mod"; exit 1; }

OUT_DIR="$CACHE_ROOT/$VERSION"
BIN="$OUT_DIR/daprd"
INPUTS_FILE="$OUT_DIR/build-inputs"
PROCS="${DAPRD_BUILD_PROCS:-1}"

# Everything that decides what the binary is. Build parallelism is left out on
# purpose: it changes how long the build takes, not what it produces.
GO_VERSION="$(GOTOOLCHAIN=local go env GOVERSION)"
BUILD_FLAGS="-trimpath -ldflags=-s -w -X buildinfo(version,gitversion,gitcommit) CGO_ENABLED=0"
sha() { if [ -f "$1" ]; then sha256sum "$1" | cut -d' ' -f1; else echo absent; fi; }
compute_inputs() {
    echo "dapr_version=$VERSION"
    echo "go_version=$GO_VERSION"
    echo "goos_goarch=$(GOTOOLCHAIN=local go env GOOS)/$(GOTOOLCHAIN=local go env GOARCH)"
    echo "build_flags=$BUILD_FLAGS"
    echo "go.mod=$(sha "$SRC_DIR/go.mod")"
    echo "go.sum=$(sha "$SRC_DIR/go.sum")"
    local f
    for f in "$SRC_DIR"/*.go; do    # glob order is sorted (LC_COLLATE=C below)
        echo "${f##*/}=$(sha "$f")"
    done
}

is_current() {
    [ -x "$BIN" ] && [ -f "$INPUTS_FILE" ] && [ "$(compute_inputs)" = "$(cat "$INPUTS_FILE")" ]
}

link_current() {
    ln -sfn "$VERSION/daprd" "$CACHE_ROOT/current"
}

mkdir -p "$CACHE_ROOT"
# One build at a time per checkout (two concurrent runs would both compile).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_ROOT/.lock"
    flock 9
fi

if [ "$CHECK_ONLY" = 1 ]; then
    if is_current; then log "daprd $VERSION is current: $BIN"; exit 0; fi
    log "daprd $VERSION needs a build"; exit 1
fi

if [ "$FORCE" = 0 ] && is_current; then
    link_current
    log "daprd $VERSION is up to date ($BIN); nothing to build; elapsed $(elapsed)"
    echo "$BIN"
    exit 0
fi

mkdir -p "$OUT_DIR"
cd "$SRC_DIR"

# With a committed go.sum the build must not touch go.mod/go.sum
# (-mod=readonly fails loudly on drift). Without one (bootstrapping a new
# pin), let the build record what it downloads.
MOD_MODE="readonly"
if [ ! -f go.sum ]; then
    MOD_MODE=mod
    log "no go.sum yet: building with -mod=mod to create it (commit dapr/sidecar/go.mod and go.sum afterwards)"
fi

export GOTOOLCHAIN=local   # never fetch another toolchain
export CGO_ENABLED=0       # static binary, as upstream daprd releases are
export GOFLAGS="-mod=$MOD_MODE -buildvcs=false"

# The release commit, for `daprd --build-info`; informational only.
COMMIT="$(go mod download -json "$DAPR_MODULE@$VERSION" 2>/dev/null \
    | awk -F'"' '$2 == "Hash" { print $4; exit }')" || true

BI="$DAPR_MODULE/pkg/buildinfo"
LDFLAGS="-s -w -X $BI.version=${VERSION#v} -X $BI.gitversion=$VERSION -X $BI.gitcommit=${COMMIT:-unknown}"
TMP_BIN="$OUT_DIR/.daprd.tmp.$$"
trap 'rm -f "$TMP_BIN"' EXIT

log "building daprd $VERSION with $GO_VERSION on $PROCS core(s) (module cache $(go env GOMODCACHE), build cache $(go env GOCACHE))"
GOMAXPROCS="$PROCS" go build -p "$PROCS" -trimpath -ldflags "$LDFLAGS" -o "$TMP_BIN" .

# Refuse to cache a binary that does not run or reports another version.
GOT="$("$TMP_BIN" --version 2>&1 || true)"
if [ "$GOT" != "${VERSION#v}" ]; then
    log "built binary reports version '$GOT', expected '${VERSION#v}'"
    exit 1
fi

mv -f "$TMP_BIN" "$BIN"
trap - EXIT
compute_inputs >"$INPUTS_FILE"   # after the build: a bootstrap build writes go.sum
link_current
log "built $BIN ($(du -h "$BIN" | cut -f1)); elapsed $(elapsed)"
echo "$BIN"
