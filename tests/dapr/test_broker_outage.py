"""RabbitMQ goes away under a running Dapr-mode platform and comes back: the events of what
happened meanwhile wait in the services' outboxes and are delivered afterwards, once each. And a
sidecar's subscriptions losing their connection leave the connection its app publishes through
alone."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
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


def rabbitmqctl(*args: str) -> str:
    command = ["env", "ERL_EPMD_ADDRESS=127.0.0.1", "rabbitmqctl", "-q", *args]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return result.stdout or result.stderr


def vhost_of(url: str) -> str:
    return unquote(urlsplit(url).path[1:]) or "/"


def broker_queues(url: str) -> str:
    """Each queue's ready and unacknowledged messages and its consumers: tells an event the
    broker never got from one parked with a consumer that nobody reads."""
    return rabbitmqctl("list_queues", "-p", vhost_of(url), "name", "messages_ready",
                       "messages_unacknowledged", "consumers")


def connections(url: str, name: str) -> set[str]:
    """The broker's connections of that name (the components' clientName: "<app-id> <component>")."""
    listed = rabbitmqctl("-s", "list_connections", "-p", vhost_of(url), "pid", "client_properties")
    wanted = f'{{"connection_name","{name}"}}'
    return {line.split("\t")[0] for line in listed.splitlines() if wanted in line}


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


@contextlib.contextmanager
def counting_logins(platform: RunningPlatform) -> Iterator[Callable[[], int]]:
    """The platform started, admin logged in once and that login counted by `users`; yields how
    many logins `users` has counted so far."""
    platform.start()
    try:
        token = platform.login("admin", ADMIN_PASSWORD)["access_token"]
        with platform.client(token) as admin:
            admin_id = admin.get("/api/v1/users/me").json()["id"]

            def logins() -> int:
                return int(admin.get(f"/api/v1/users/{admin_id}").json()["login_count"])

            eventually(lambda: logins() == 1, 60, "the first login to be counted")
            yield logins
    finally:
        platform.stop()
        platform.drop_databases()


class TestBrokerOutage:
    def test_events_wait_in_the_outbox_and_arrive_once_when_rabbitmq_is_back(
            self, platform: RunningPlatform, dapr_brokers: dict[str, str]) -> None:
        with counting_logins(platform) as logins:
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

    def test_subscriptions_losing_their_connection_leave_publishing_alone(
            self, platform: RunningPlatform, dapr_brokers: dict[str, str]) -> None:
        """A sidecar's subscriptions reconnecting (here: their connection closed under them) never
        close the connection its app publishes through, and what is published meanwhile arrives
        once each."""
        url = dapr_brokers["rabbitmq"]
        with counting_logins(platform) as logins:
            publishing = connections(url, "auth pubsub-publisher")
            assert len(publishing) == 1, rabbitmqctl("list_connections", "-p", vhost_of(url),
                                                     "client_properties")
            for _ in range(3):
                eventually(lambda: len(connections(url, "auth pubsub")) == 1, 60,
                           "auth's subscriptions to be connected")
                for pid in connections(url, "auth pubsub"):
                    rabbitmqctl("close_connection", pid, "test: subscriptions reconnect")
                for _ in range(3):
                    platform.login("admin", ADMIN_PASSWORD)
            assert connections(url, "auth pubsub-publisher") == publishing

            eventually(lambda: logins() == 10, 120, "the logins to arrive",
                       lambda: f"{logins() - 1} arrived; broker queues:\n{broker_queues(url)}")
            assert platform.outbox_rows("auth") == []
            time.sleep(5)
            assert logins() == 10  # delivered once each, never twice
