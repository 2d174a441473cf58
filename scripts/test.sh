#!/usr/bin/env bash
# The whole check, as CI runs it: environment, PostgreSQL, lint, import contracts, types, tests.
#
#   ./scripts/test.sh                      everything
#   ./scripts/test.sh libs/db -k paging    extra arguments go to pytest
#
# A preset OPSC_TEST_POSTGRES_URL is used as is (no local server is started).
# OPSC_REQUIRE_ALL_TIERS=1 (set by .ci/run) turns "missing dependency" skips into failures.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

started=$SECONDS
banner() { printf '\n[opsc] ===== %s =====\n' "$*"; }

banner "bootstrap"
bootstrap

# What the suite's tiers need today: PostgreSQL, and OpenSSH's sshd (the fixtures run their own).
banner "services: postgres, sshd"
services=("$REPO_ROOT/scripts/services.sh")
if [ -n "${OPSC_TEST_POSTGRES_URL:-}" ]; then
    say "using the preset OPSC_TEST_POSTGRES_URL (no local PostgreSQL started)"
    "${services[@]}" install sshd
    "${services[@]}" start sshd
else
    "${services[@]}" install postgres sshd
    "${services[@]}" start postgres sshd
    eval "$("${services[@]}" env postgres)"
fi
export OPSC_TEST_POSTGRES_URL

# The Dapr tier: daprd and sentry built from their Go module (cached), Redis and RabbitMQ.
banner "dapr tier: daprd, sentry, redis, rabbitmq"
eval "$("$REPO_ROOT/scripts/dapr-tier.sh")"
# The deployment tier: kustomize renders tilt/ for the manifest tests, Tilt runs `tilt ci`
# (both built from their Go modules and cached; tests/deploy finds them in .cache/).
banner "deploy tier: kustomize, tilt"
TILT_BUILD_PROCS="${TILT_BUILD_PROCS:-2}" "$REPO_ROOT/scripts/build-tilt.sh" >/dev/null
# Shown without its password.
say "OPSC_TEST_POSTGRES_URL=$(printf '%s' "$OPSC_TEST_POSTGRES_URL" | sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#')"

failed=()
step() {  # step <name> <command...>: runs every step, remembers which failed
    local name=$1 t0=$SECONDS rc=0
    shift
    banner "$name"
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        say "$name: ok ($((SECONDS - t0))s)"
    else
        say "$name: FAILED (exit $rc, $((SECONDS - t0))s)"
        failed+=("$name")
    fi
}

step "ruff" uv run --frozen ruff check .
step "import contracts" uv run --frozen lint-imports
# Its own cache: mypy runs over a few folders (while editing) leave entries in .mypy_cache that a
# later whole-tree run has misread ("module has no attribute topics").
step "mypy" uv run --frozen mypy --cache-dir .cache/mypy-suite libs apps
# Each member must declare what it imports (a workspace hides missing declarations otherwise).
declared_dependencies() {
    local member rc=0
    for member in libs/*/ apps/*/; do
        [ -f "$member/pyproject.toml" ] || continue
        (cd "$member" && uv run --frozen deptry . >/dev/null 2>&1) || {
            say "undeclared or unused dependencies in $member:"
            (cd "$member" && uv run --frozen deptry . 2>&1 | grep -E "DEP[0-9]+" || true)
            rc=1
        }
    done
    return "$rc"
}
step "declared dependencies" declared_dependencies
step "pytest" uv run --frozen pytest --ignore=tests/benchmarks -p no:cacheprovider "$@"

banner "summary"
if [ "${#failed[@]}" -gt 0 ]; then
    say "FAILED: ${failed[*]} (total $((SECONDS - started))s)"
    exit 1
fi
say "all checks passed (total $((SECONDS - started))s)"
