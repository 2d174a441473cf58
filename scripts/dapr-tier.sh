#!/usr/bin/env bash
# Everything the Dapr tier of the test suite needs, ready on this machine:
#   daprd and sentry (built from the pinned dapr release, cached: instant when current),
#   PostgreSQL, Redis and RabbitMQ from Debian's packages, started on loopback.
#
#   eval "$(scripts/dapr-tier.sh)"      then: uv run pytest tests/e2e tests/dapr
#
# stdout carries only `export ...` lines (OPSC_DAPRD, OPSC_DAPR_SENTRY, OPSC_TEST_POSTGRES_URL,
# OPSC_TEST_REDIS_URL, OPSC_TEST_RABBITMQ_URL); progress goes to stderr.
# A preset OPSC_TEST_POSTGRES_URL is kept (no local PostgreSQL is installed or started).
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

servers=(redis rabbitmq)
if [ -z "${OPSC_TEST_POSTGRES_URL:-}" ]; then
    servers=(postgres "${servers[@]}")
fi

{
    daprd="$("$REPO_ROOT/scripts/build-daprd.sh")"
    sentry="$("$REPO_ROOT/scripts/build-sentry.sh")"
    "$REPO_ROOT/scripts/services.sh" install "${servers[@]}"
    "$REPO_ROOT/scripts/services.sh" start "${servers[@]}"
} >&2

printf 'export OPSC_DAPRD=%q\n' "$daprd"
printf 'export OPSC_DAPR_SENTRY=%q\n' "$sentry"
"$REPO_ROOT/scripts/services.sh" env "${servers[@]}"
