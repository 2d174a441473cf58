"""RabbitMQ goes away under a running Dapr-mode platform and comes back: the events of what
happened meanwhile wait in the services' outboxes and are delivered afterwards, once each."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from opsconductor_testing.dapr import REPO_ROOT, dapr_brokers, database_prefix, require_dapr
from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform, free_port
from opsconductor_testing.tiers import missing_dependency

pytestmark = pytest.mark.timeout(600)
__all__ = ["dapr_brokers"]
SERVICES = REPO_ROOT / "scripts" / "services.sh"
LOGIN_SUCCEEDED = "auth.login_succeeded"


def rabbitmq(action: str) -> None:
    subprocess.run([str(SERVICES), action, "rabbitmq"], check=True, capture_output=True,
                   timeout=300)


def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def platform(tmp_path: Path, dapr_brokers: dict[str, str]) -> RunningPlatform:
    env = require_dapr("rabbitmq", dapr_brokers)
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        missing_dependency("stopping RabbitMQ needs root or sudo (scripts/services.sh)")
    return RunningPlatform(
        data_dir=tmp_path / "data", port=free_port(), log_path=tmp_path / "platform.log",
        env={"OPSC_ADMIN_PASSWORD": ADMIN_PASSWORD, **env}, runtime="dapr", pubsub="rabbitmq",
        database_prefix=database_prefix("outage"))


class TestBrokerOutage:
    def test_events_wait_in_the_outbox_and_arrive_once_when_rabbitmq_is_back(
            self, platform: RunningPlatform) -> None:
        platform.start()
        try:
            token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
            with platform.client(token) as admin:
                admin_id = admin.get("/api/v1/users/me").json()["id"]

                def logins() -> int:
                    return int(admin.get(f"/api/v1/users/{admin_id}").json()["login_count"])

                eventually(lambda: logins() == 1, 60, "the first login to be counted")

                rabbitmq("stop")
                try:
                    # Logging in still works: only the announcement of it has to wait.
                    platform.login("admin", ADMIN_PASSWORD)
                    platform.login("admin", ADMIN_PASSWORD)
                    waiting = [t for t, _ in platform.outbox_rows("auth")]
                    assert waiting == [LOGIN_SUCCEEDED, LOGIN_SUCCEEDED]
                    time.sleep(5)  # the relay keeps trying; nothing leaves, nothing is lost
                    assert [t for t, _ in platform.outbox_rows("auth")] == waiting
                    assert logins() == 1
                finally:
                    rabbitmq("start")

                eventually(lambda: logins() == 3, 180, "the two waiting logins to arrive")
                assert platform.outbox_rows("auth") == []
                time.sleep(5)
                assert logins() == 3  # delivered once each, never twice
        finally:
            platform.stop()
            platform.drop_databases()
