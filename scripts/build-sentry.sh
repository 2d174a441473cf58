#!/usr/bin/env bash
# Build Dapr's certificate authority (sentry) at the same pinned release as daprd, and cache it.
#
#   scripts/build-sentry.sh            build if needed; prints the binary path on stdout
#   scripts/build-sentry.sh --force    rebuild even when the cached binary is current
#
# Why: access control between sidecars (dapr/config.yaml) trusts a caller's app-id only when
# its mTLS certificate proves it, and on one machine those certificates come from sentry.
# `opsconductor up --runtime dapr` runs it on loopback with a CA kept in the data dir.
#
# Built from upstream's github.com/dapr/dapr/cmd/sentry through the dapr/sidecar module (its
# go.mod pins the release and carries the replace lines; its go.sum covers sentry too), so no
# extra Go source is kept here. Output: .cache/daprd/<version>/sentry and the symlink
# .cache/daprd/sentry. Reuses the Go module and build caches daprd filled: seconds when
# daprd was built first. One core unless DAPRD_BUILD_PROCS says otherwise.
set -euo pipefail
export LC_COLLATE=C

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-sentry: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

log() { echo "build-sentry: $*" >&2; }
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC_DIR="$REPO_ROOT/dapr/sidecar"
CACHE_ROOT="$REPO_ROOT/.cache/daprd"
DAPR_MODULE="github.com/dapr/dapr"

command -v go >/dev/null 2>&1 || { log "the Go toolchain (go) is not on PATH"; exit 1; }
VERSION="$(awk -v m="$DAPR_MODULE" '
    $1 == "require" && $2 == m { print $3; exit }
    $1 == m && $2 ~ /^v/        { print $2; exit }' "$SRC_DIR/go.mod")"
[ -n "$VERSION" ] || { log "cannot find the $DAPR_MODULE requirement in $SRC_DIR/go.mod"; exit 1; }
[ -f "$SRC_DIR/go.sum" ] || { log "missing $SRC_DIR/go.sum: build daprd first (scripts/build-daprd.sh)"; exit 1; }

OUT_DIR="$CACHE_ROOT/$VERSION"
BIN="$OUT_DIR/sentry"
INPUTS_FILE="$OUT_DIR/sentry-build-inputs"
PROCS="${DAPRD_BUILD_PROCS:-1}"
sha() { sha256sum "$1" | cut -d' ' -f1; }
compute_inputs() {
    echo "dapr_version=$VERSION"
    echo "go_version=$(GOTOOLCHAIN=local go env GOVERSION)"
    echo "goos_goarch=$(GOTOOLCHAIN=local go env GOOS)/$(GOTOOLCHAIN=local go env GOARCH)"
    echo "go.mod=$(sha "$SRC_DIR/go.mod")"
    echo "go.sum=$(sha "$SRC_DIR/go.sum")"
}

mkdir -p "$OUT_DIR"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_ROOT/.lock"    # shared with build-daprd.sh: one Go build at a time
    flock 9
fi

if [ "$FORCE" = 0 ] && [ -x "$BIN" ] && [ -f "$INPUTS_FILE" ] \
        && [ "$(compute_inputs)" = "$(cat "$INPUTS_FILE")" ]; then
    ln -sfn "$VERSION/sentry" "$CACHE_ROOT/sentry"
    log "sentry $VERSION is up to date ($BIN)"
    echo "$BIN"
    exit 0
fi

cd "$SRC_DIR"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false"
BI="$DAPR_MODULE/pkg/buildinfo"
LDFLAGS="-s -w -X $BI.version=${VERSION#v} -X $BI.gitversion=$VERSION"
TMP_BIN="$OUT_DIR/.sentry.tmp.$$"
trap 'rm -f "$TMP_BIN"' EXIT
started=$(date +%s)
log "building sentry $VERSION on $PROCS core(s)"
GOMAXPROCS="$PROCS" go build -p "$PROCS" -trimpath -ldflags "$LDFLAGS" -o "$TMP_BIN" "$DAPR_MODULE/cmd/sentry"
"$TMP_BIN" --help >/dev/null 2>&1 || [ $? -le 2 ] || { log "built binary does not start"; exit 1; }
mv -f "$TMP_BIN" "$BIN"
trap - EXIT
compute_inputs >"$INPUTS_FILE"
ln -sfn "$VERSION/sentry" "$CACHE_ROOT/sentry"
log "built $BIN ($(du -h "$BIN" | cut -f1)) in $(( $(date +%s) - started ))s"
echo "$BIN"
