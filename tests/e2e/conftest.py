from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform, free_port


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[RunningPlatform]:
    running = RunningPlatform(
        data_dir=tmp_path / "data", port=free_port(), log_path=tmp_path / "platform.log",
        env={"OPSC_ADMIN_PASSWORD": ADMIN_PASSWORD, "OPSC_LOG_LEVEL": "INFO"})
    running.start()
    yield running
    if running.process is not None and running.process.poll() is None:
        running.stop()
