#!/usr/bin/env bash
# Build the constant-rate HTTP load generator vegeta (tests/benchmarks/bench_dapr_latency.py)
# from its Go module at a pinned tag, and cache it; a second run does nothing.
#
#   scripts/build-vegeta.sh        build if needed; prints the binary path on stdout
#
# Output: .cache/vegeta/<version>/vegeta. Needs only the Go toolchain and the Go module proxy.
# Builds on one core (-p 1, GOMAXPROCS=1): other work shares the machine.
set -euo pipefail

VERSION="${OPSC_VEGETA_VERSION:-v12.13.0}"
MODULE="github.com/tsenart/vegeta/v12"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="$REPO_ROOT/.cache/vegeta/$VERSION"
BIN="$OUT_DIR/vegeta"
log() { echo "build-vegeta: $*" >&2; }

if [ -x "$BIN" ]; then
    log "vegeta $VERSION is cached: $BIN"
    echo "$BIN"
    exit 0
fi
command -v go >/dev/null 2>&1 || { log "the Go toolchain (go) is not on PATH"; exit 1; }
mkdir -p "$OUT_DIR"
start=$(date +%s)
log "building $MODULE@$VERSION (one core)"
GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" GOBIN="$OUT_DIR" \
    GOMAXPROCS=1 go install -p 1 -trimpath -ldflags "-s -w" "$MODULE@$VERSION"
[ -x "$BIN" ] || { log "go install produced no $BIN"; exit 1; }
log "built $BIN in $(( $(date +%s) - start )) s"
echo "$BIN"
