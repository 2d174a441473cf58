"""Tiers that need a real server skip loudly when it is missing, and fail instead under CI.

`OPSC_REQUIRE_ALL_TIERS=1` (set by .ci/run) turns every such skip into a failure, so a green CI
always means every tier ran.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ALL_TIERS_ENV = "OPSC_REQUIRE_ALL_TIERS"
MISSING_DEPENDENCY = "MISSING DEPENDENCY"


def all_tiers_required() -> bool:
    # Read on every call (not at import) so a test can flip it with monkeypatch.
    return os.environ.get(REQUIRE_ALL_TIERS_ENV, "").strip().lower() in ("1", "true", "yes")


def missing_dependency(reason: str) -> NoReturn:
    """Skip (locally) or fail (in CI) because `reason` names a missing real component."""
    message = f"{MISSING_DEPENDENCY}: {reason}"
    if all_tiers_required():
        pytest.fail(f"{message} ({REQUIRE_ALL_TIERS_ENV} is set)", pytrace=False)
    pytest.skip(message)
