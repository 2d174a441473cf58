#!/usr/bin/env bash
# Build the Tilt CLI and kustomize from their Go modules at pinned releases and cache them; a
# second run with the same inputs does nothing.
#
#   scripts/build-tilt.sh [tool...]          build what is missing or stale; prints the paths
#   scripts/build-tilt.sh --force [tool...]  rebuild even when current
#   scripts/build-tilt.sh --check [tool...]  exit 0 if every named tool is current (no build)
#
# tools: tilt, kustomize (default: both, kustomize first: it is quick and the manifest tests
# need it; the Tiltfile's cluster path uses it too).
#   tilt       tilt/cli/go.mod pins github.com/tilt-dev/tilt and repeats its replace lines (a
#              module with replacements cannot be built with `go install pkg@version`); go.sum
#              pins every hash. Needs a C compiler (cgo: the Tiltfile language server).
#   kustomize  sigs.k8s.io/kustomize/kustomize/v5 at KUSTOMIZE_VERSION below (no replacements:
#              `go install` with checksum-database verification).
# Output: .cache/<tool>/<version>/<tool>, the symlink .cache/<tool>/current, and build-inputs
# beside the binary (what it was built from; a change of any input rebuilds).
# Go's module and build caches stay in their default places, so later builds reuse them.
# Builds run on ONE core (-p 1, GOMAXPROCS=1): other work shares the machine; TILT_BUILD_PROCS=N
# allows more. Logs go to stderr; stdout carries only the binary paths, one per line.
set -euo pipefail
export LC_COLLATE=C

KUSTOMIZE_VERSION=v5.8.1

FORCE=0
CHECK_ONLY=0
TOOLS=()
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --check) CHECK_ONLY=1 ;;
        tilt|kustomize) TOOLS+=("$arg") ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-tilt: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
[ "${#TOOLS[@]}" -gt 0 ] || TOOLS=(kustomize tilt)

START_NS=$(date +%s%N)
log() { echo "build-tilt: $*" >&2; }
elapsed() { echo "$(( ($(date +%s%N) - START_NS) / 1000000 ))" | awk '{printf "%.1f s", $1/1000}'; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TILT_SRC="$REPO_ROOT/tilt/cli"
TILT_MODULE="github.com/tilt-dev/tilt"
KUSTOMIZE_MODULE="sigs.k8s.io/kustomize/kustomize/v5"
PROCS="${TILT_BUILD_PROCS:-1}"

command -v go >/dev/null 2>&1 || { log "the Go toolchain (go) is not on PATH"; exit 1; }
export GOTOOLCHAIN=local   # never fetch another toolchain
GO_VERSION="$(go env GOVERSION)"
GOOS_GOARCH="$(go env GOOS)/$(go env GOARCH)"

sha() { if [ -f "$1" ]; then sha256sum "$1" | cut -d' ' -f1; else echo absent; fi; }

# Per tool: VERSION, BUILD_FLAGS, and inputs() listing everything that decides the binary.
tool_settings() {
    case "$1" in
        tilt)
            [ -f "$TILT_SRC/go.mod" ] || { log "missing $TILT_SRC/go.mod"; exit 1; }
            # The pinned version is the one go.mod requires: a single source of truth.
            VERSION="$(awk -v m="$TILT_MODULE" '
                $1 == "require" && $2 == m { print $3; exit }
                $1 == m && $2 ~ /^v/        { print $2; exit }' "$TILT_SRC/go.mod")"
            [ -n "$VERSION" ] || { log "no $TILT_MODULE requirement in $TILT_SRC/go.mod"; exit 1; }
            BUILD_FLAGS="-trimpath -ldflags=-s -w -X main.version -X main.date CGO_ENABLED=1"
            ;;
        kustomize)
            VERSION="$KUSTOMIZE_VERSION"
            BUILD_FLAGS="-trimpath -ldflags=-s -w CGO_ENABLED=0"
            ;;
    esac
}

inputs() {
    echo "tool=$1"
    echo "version=$VERSION"
    echo "go_version=$GO_VERSION"
    echo "goos_goarch=$GOOS_GOARCH"
    echo "build_flags=$BUILD_FLAGS"
    if [ "$1" = tilt ]; then
        echo "go.mod=$(sha "$TILT_SRC/go.mod")"
        echo "go.sum=$(sha "$TILT_SRC/go.sum")"
        echo "web/index.html=$(sha "$TILT_SRC/web/index.html")"
    fi
}

is_current() {  # is_current <tool> <bin>
    [ -x "$2" ] && [ -f "$2.build-inputs" ] && [ "$(inputs "$1")" = "$(cat "$2.build-inputs")" ]
}

# Refuse to cache a binary that does not run or reports another version.
check_version() {  # check_version <tool> <bin>
    local got
    case "$1" in
        tilt) got="$("$2" version 2>&1 || true)" ;;
        kustomize) got="$("$2" version 2>&1 || true)" ;;
    esac
    case "$got" in
        "v${VERSION#v}"*|"${VERSION#v},"*) return 0 ;;
    esac
    log "built $1 reports '$got', expected version ${VERSION#v}"
    return 1
}

compile() {  # compile <tool> <output>
    local tool=$1 out=$2
    case "$tool" in
        tilt)
            # With a committed go.sum nothing may change go.mod/go.sum (-mod=readonly fails
            # loudly on drift); without one (a new pin) the build records what it downloads.
            local mod_mode=readonly
            if [ ! -f "$TILT_SRC/go.sum" ]; then
                mod_mode=mod
                log "no go.sum yet: building with -mod=mod to create it (commit tilt/cli/go.mod and go.sum)"
            fi
            # Two of tilt's dependencies are served by the module proxy but missing from the
            # checksum database it mirrors (lookups answer 404): their hashes come from the
            # proxy on the first build and tilt/cli/go.sum pins them from then on. Every other
            # module is checked against the checksum database as usual.
            local GONOSUMDB="${GONOSUMDB:+$GONOSUMDB,}github.com/tilt-dev/starlark-lsp,github.com/tilt-dev/go-get"
            local GOFLAGS="-mod=$mod_mode -buildvcs=false"
            export GONOSUMDB GOFLAGS
            local info date module work
            info="$(cd "$TILT_SRC" && go mod download -json "$TILT_MODULE@$VERSION")"
            module="$(printf '%s\n' "$info" | awk -F'"' '$2 == "Dir" { print $4; exit }')"
            [ -d "$module" ] || { log "cannot download $TILT_MODULE@$VERSION: $info"; return 1; }
            date="$(grep -o '"Time":"[0-9-]*' "$(printf '%s\n' "$info" \
                | awk -F'"' '$2 == "Info" { print $4; exit }')" | cut -d'"' -f4)" || true
            # Tilt refuses to start without its web UI's compiled assets, which its release
            # archives carry but its Go module does not: the build uses a copy of the module
            # with tilt/cli/web/index.html as the page (it points to the terminal commands).
            work="$(dirname "$out")/.work"
            rm -rf "$work"
            mkdir -p "$work"
            cp -R "$module" "$work/tilt"
            chmod -R u+w "$work/tilt"
            cp "$TILT_SRC/web/index.html" "$work/tilt/pkg/assets/build/index.html"
            cp "$TILT_SRC/go.mod" "$work/"
            if [ -f "$TILT_SRC/go.sum" ]; then cp "$TILT_SRC/go.sum" "$work/"; fi
            (cd "$work" && GOFLAGS="-mod=mod -buildvcs=false" \
                go mod edit -replace "$TILT_MODULE=./tilt")
            (cd "$work" && CGO_ENABLED=1 GOMAXPROCS="$PROCS" \
                go build -p "$PROCS" -trimpath \
                    -ldflags "-s -w -X main.version=${VERSION#v} -X main.date=${date:-unknown}" \
                    -o "$out" "$TILT_MODULE/cmd/tilt")
            if [ "$mod_mode" = mod ]; then
                (cd "$work" && GOFLAGS=-mod=mod go mod edit -dropreplace "$TILT_MODULE")
                cp "$work/go.mod" "$work/go.sum" "$TILT_SRC/"
            fi
            rm -rf "$work"
            ;;
        kustomize)
            local gobin
            gobin="$(mktemp -d)"
            (cd "$gobin" && GOBIN="$gobin" GOFLAGS="-buildvcs=false" CGO_ENABLED=0 \
                GOMAXPROCS="$PROCS" go install -p "$PROCS" -trimpath -ldflags "-s -w" \
                "$KUSTOMIZE_MODULE@$VERSION")
            mv -f "$gobin/kustomize" "$out"
            rmdir "$gobin"
            ;;
    esac
}

build() {  # build <tool>: prints the binary's path
    local tool=$1 cache out_dir bin tmp t0
    tool_settings "$tool"
    cache="$REPO_ROOT/.cache/$tool"
    out_dir="$cache/$VERSION"
    bin="$out_dir/$tool"
    mkdir -p "$out_dir"
    if [ "$CHECK_ONLY" = 1 ]; then
        if is_current "$tool" "$bin"; then log "$tool $VERSION is current: $bin"; return 0; fi
        log "$tool $VERSION needs a build"
        return 1
    fi
    if [ "$FORCE" = 0 ] && is_current "$tool" "$bin"; then
        ln -sfn "$VERSION/$tool" "$cache/current"
        log "$tool $VERSION is up to date ($bin)"
        echo "$bin"
        return 0
    fi
    t0=$(date +%s)
    tmp="$out_dir/.$tool.tmp.$$"
    trap "rm -f '$tmp'" EXIT
    log "building $tool $VERSION with $GO_VERSION on $PROCS core(s)"
    compile "$tool" "$tmp"
    check_version "$tool" "$tmp"
    mv -f "$tmp" "$bin"
    trap - EXIT
    inputs "$tool" >"$bin.build-inputs"   # after the build: a first tilt build writes go.sum
    ln -sfn "$VERSION/$tool" "$cache/current"
    log "built $bin ($(du -h "$bin" | cut -f1)) in $(( $(date +%s) - t0 )) s"
    echo "$bin"
}

mkdir -p "$REPO_ROOT/.cache"
# One build at a time per checkout.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$REPO_ROOT/.cache/.build-tilt.lock"
    flock 9
fi

rc=0
for tool in "${TOOLS[@]}"; do
    build "$tool" || rc=1
done
log "done; elapsed $(elapsed)"
exit "$rc"
