"""Every end-to-end scenario runs against each way of running OpsConductor: embedded (one
process), and through real daprd sidecars with pub/sub on RabbitMQ and on Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from opsconductor_testing.dapr import dapr_brokers, database_prefix, require_dapr
from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform, free_port

RUNTIMES = ["embedded", "dapr-rabbitmq", "dapr-redis"]
__all__ = ["dapr_brokers"]


def make_platform(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> RunningPlatform:
    env = {"OPSC_ADMIN_PASSWORD": ADMIN_PASSWORD, "OPSC_LOG_LEVEL": "INFO"}
    common = {"data_dir": tmp_path / "data", "port": free_port(),
              "log_path": tmp_path / "platform.log"}
    if kind == "embedded":
        return RunningPlatform(env=env, **common)
    pubsub = kind.removeprefix("dapr-")
    env |= require_dapr(pubsub, request.getfixturevalue("dapr_brokers"))
    return RunningPlatform(env=env, runtime="dapr", pubsub=pubsub,
                           database_prefix=database_prefix(), **common)


@pytest.fixture(params=RUNTIMES)
def platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningPlatform]:
    running = make_platform(request.param, tmp_path, request)
    try:
        running.start()
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            running.stop()
        running.drop_databases()
