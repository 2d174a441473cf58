"""RabbitMQ goes away under a running Dapr-mode platform and comes back: the events of what
happened meanwhile wait in the services' outboxes and are delivered afterwards, once each."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from opsconductor_testing.dapr import REPO_ROOT, dapr_brokers, database_prefix, require_dapr
from opsconductor_testing.platform import ADMIN_PASSWORD, RunningPlatform, free_port
from opsconductor_testing.tiers import missing_dependency

pytestmark = pytest.mark.timeout(600)
__all__ = ["dapr_brokers"]
SERVICES = REPO_ROOT / "scripts" / "services.sh"
LOGIN_SUCCEEDED = "auth.login_succeeded"
# Logins made while the broker is down: their events are published together once it is back,
# while every sidecar's subscriptions are reconnecting.
WAITING = 10


def rabbitmq(action: str) -> None:
    subprocess.run([str(SERVICES), action, "rabbitmq"], check=True, capture_output=True,
                   timeout=300)


def broker_queues(url: str) -> str:
    """Each queue's ready and unacknowledged messages and its consumers: tells an event the
    broker never got from one parked with a consumer that nobody reads."""
    vhost = unquote(urlsplit(url).path[1:]) or "/"
    command = ["env", "ERL_EPMD_ADDRESS=127.0.0.1", "rabbitmqctl", "-q", "list_queues", "-p",
               vhost, "name", "messages_ready", "messages_unacknowledged", "consumers"]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return result.stdout or result.stderr


def eventually(condition: Callable[[], bool], timeout_s: float, what: str,
               explain: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{explain()}")
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
            self, platform: RunningPlatform, dapr_brokers: dict[str, str]) -> None:
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
                    for _ in range(WAITING):
                        platform.login("admin", ADMIN_PASSWORD)
                    waiting = [t for t, _ in platform.outbox_rows("auth")]
                    assert waiting == [LOGIN_SUCCEEDED] * WAITING
                    time.sleep(5)  # the relay keeps trying; nothing leaves, nothing is lost
                    assert [t for t, _ in platform.outbox_rows("auth")] == waiting
                    assert logins() == 1
                finally:
                    rabbitmq("start")

                eventually(lambda: logins() == 1 + WAITING, 180, "the waiting logins to arrive",
                           lambda: f"{logins() - 1} arrived; broker queues:\n"
                           f"{broker_queues(dapr_brokers['rabbitmq'])}")
                assert platform.outbox_rows("auth") == []
                time.sleep(5)
                assert logins() == 1 + WAITING  # delivered once each, never twice
        finally:
            platform.stop()
            platform.drop_databases()
