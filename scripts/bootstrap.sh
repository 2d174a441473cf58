#!/usr/bin/env bash
# Installs uv when missing and syncs the workspace virtualenv from uv.lock. Safe to re-run.
set -euo pipefail
# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

bootstrap
