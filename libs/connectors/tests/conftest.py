"""Connector tests: the servers come from opsconductor_testing (sshd, winrm_peer fixtures)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """A test appends the secrets it used; none may appear in any log record, at any level."""
    caplog.set_level(logging.DEBUG)
    used: list[str] = []
    yield used
    text = caplog.text
    for secret in used:
        for line in secret.splitlines():
            if len(line.strip()) > 8 and "-----" not in line:
                assert line.strip() not in text
