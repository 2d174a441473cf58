#!/usr/bin/env bash
# Runs the whole platform in one process (embedded mode): ./scripts/up.sh [--port 8080 ...]
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$REPO_ROOT"

bootstrap
exec uv run --frozen opsconductor up "$@"
