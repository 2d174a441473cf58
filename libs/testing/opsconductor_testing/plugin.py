"""Pytest plugin loaded for the whole suite (see pyproject addopts)."""

from collections.abc import Generator

import pytest

from opsconductor_testing.databases import database_url, postgres_databases
from opsconductor_testing.platform import RunningPlatform
from opsconductor_testing.sshd import sshd, sshd_factory
from opsconductor_testing.winrm_peer import winrm_peer

__all__ = ["database_url", "postgres_databases", "sshd", "sshd_factory", "winrm_peer"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                       pytest.TestReport]:
    """A failed test that used a running platform shows that platform's warnings and errors:
    a 503 or a missing event is explained there, and CI keeps no temporary directories."""
    report = yield
    if report.failed and report.when == "call":
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, RunningPlatform):
                report.sections.append((f"platform log ({value.label}): warnings and errors",
                                        value.warnings_logged() or "(none)"))
    return report
