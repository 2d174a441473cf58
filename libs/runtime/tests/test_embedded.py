"""The embedded adapter against real FastAPI apps that subscribe through dapr-ext-fastapi."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from dapr.ext.fastapi import DaprApp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from opsconductor_runtime.embedded import EmbeddedHost
from opsconductor_runtime.embedded.bindings import Schedule, load_cron_bindings, parse_go_duration
from opsconductor_runtime.embedded.secrets import ensure_secret_file
from opsconductor_runtime.embedded.store import HostStore
from opsconductor_runtime.interface import AppUnavailable, ETagMismatch


class Subscriber:
    """A real app: records events; fails the first `fail_times` deliveries of each event."""

    def __init__(self, fail_times: int = 0, dead_letter: str | None = "deadletter") -> None:
        self.received: list[dict[str, Any]] = []
        self.dead: list[dict[str, Any]] = []
        self.fail_times = fail_times
        self.attempts: dict[str, int] = {}
        self.ticks = 0
        self.app = FastAPI()
        dapr = DaprApp(self.app)

        @dapr.subscribe(pubsub="pubsub", topic="thing.happened", route="/events/thing",
                        dead_letter_topic=dead_letter)
        async def on_thing(request: Request) -> JSONResponse:
            event = await request.json()
            self.attempts[event["id"]] = self.attempts.get(event["id"], 0) + 1
            if self.attempts[event["id"]] <= self.fail_times:
                return JSONResponse({"status": "RETRY"}, status_code=500)
            self.received.append(event)
            return JSONResponse({"status": "SUCCESS"})

        @dapr.subscribe(pubsub="pubsub", topic="deadletter", route="/events/dead")
        async def on_dead(request: Request) -> dict[str, str]:
            self.dead.append(await request.json())
            return {"status": "SUCCESS"}

        @self.app.post("/tick")
        async def tick() -> dict[str, str]:
            self.ticks += 1
            return {}

        @self.app.get("/echo")
        async def echo(request: Request) -> dict[str, Any]:
            return {"caller": request.headers.get("dapr-caller-app-id"),
                    "correlation": request.headers.get("x-correlation-id")}


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def event(event_id: str = "e-1") -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "source": "test", "type": "thing.happened",
            "data": {"n": 1}}


async def started_host(tmp_path: Path, subscriber: Subscriber, **kwargs: Any) -> EmbeddedHost:
    host = EmbeddedHost(tmp_path, backoff_base_s=0.01, backoff_max_s=0.05, **kwargs)
    await host.open()
    host.register("sub", subscriber.app)
    await host.start_delivery()
    return host


class TestPubSub:
    async def test_delivers_the_cloud_event_to_the_subscribed_route(self, tmp_path: Path) -> None:
        sub = Subscriber()
        host = await started_host(tmp_path, sub)
        try:
            await host.runtime_for("pub").publish("pubsub", "thing.happened", event())
            await wait_for(lambda: len(sub.received) == 1)
            assert sub.received[0]["id"] == "e-1" and sub.received[0]["data"] == {"n": 1}
            assert await host.broker.pending() == 0
        finally:
            await host.close()

    async def test_retries_a_failing_subscriber_until_it_succeeds(self, tmp_path: Path) -> None:
        sub = Subscriber(fail_times=2)
        host = await started_host(tmp_path, sub)
        try:
            await host.runtime_for("pub").publish("pubsub", "thing.happened", event())
            await wait_for(lambda: len(sub.received) == 1)
            assert sub.attempts["e-1"] == 3
            assert sub.dead == []
        finally:
            await host.close()

    async def test_exhausted_retries_go_to_the_dead_letter_topic(self, tmp_path: Path) -> None:
        sub = Subscriber(fail_times=100)
        host = await started_host(tmp_path, sub, max_delivery_attempts=3)
        try:
            await host.runtime_for("pub").publish("pubsub", "thing.happened", event("doomed"))
            await wait_for(lambda: len(sub.dead) == 1)
            assert sub.attempts["doomed"] == 3
            assert sub.dead[0]["id"] == "doomed"
            assert sub.received == []
        finally:
            await host.close()

    async def test_unacknowledged_deliveries_survive_a_restart(self, tmp_path: Path) -> None:
        failing = Subscriber(fail_times=1000)
        host = await started_host(tmp_path, failing, max_delivery_attempts=1000)
        await host.runtime_for("pub").publish("pubsub", "thing.happened", event("kept"))
        await wait_for(lambda: failing.attempts.get("kept", 0) >= 1)
        await host.close()

        healthy = Subscriber()
        host = await started_host(tmp_path, healthy)
        try:
            await wait_for(lambda: len(healthy.received) == 1)
            assert healthy.received[0]["id"] == "kept"
        finally:
            await host.close()

    async def test_a_transient_event_is_delivered_once_and_never_kept(self,
                                                                      tmp_path: Path) -> None:
        """Live copies of stored data: a refused one is not retried, dead-lettered or stored."""
        healthy = Subscriber()
        host = await started_host(tmp_path, healthy)
        try:
            await host.runtime_for("pub").publish("pubsub", "thing.happened", event("live-1"),
                                                  transient=True)
            await wait_for(lambda: len(healthy.received) == 1)
            assert healthy.received[0]["id"] == "live-1"
        finally:
            await host.close()

        failing = Subscriber(fail_times=1000)
        host = await started_host(tmp_path, failing)
        try:
            await host.runtime_for("pub").publish("pubsub", "thing.happened", event("live-2"),
                                                  transient=True)
            await wait_for(lambda: failing.attempts.get("live-2", 0) == 1)
            assert await host.broker.pending() == 0
            await asyncio.sleep(0.3)  # many backoff periods of this host
            assert failing.attempts["live-2"] == 1 and failing.dead == []
        finally:
            await host.close()

    async def test_no_subscriber_means_nothing_is_queued(self, tmp_path: Path) -> None:
        host = await started_host(tmp_path, Subscriber())
        try:
            await host.runtime_for("pub").publish("pubsub", "nobody.listens", event())
            assert await host.broker.pending() == 0
        finally:
            await host.close()


class TestInvoke:
    async def test_reaches_the_apps_real_route_with_caller_and_correlation(self,
                                                                         tmp_path: Path) -> None:
        host = await started_host(tmp_path, Subscriber())
        try:
            response = await host.runtime_for("gateway").invoke(
                "sub", "GET", "/echo", headers={"X-Correlation-ID": "abc-123"})
            assert response.status == 200
            assert response.json() == {"caller": "gateway", "correlation": "abc-123"}
        finally:
            await host.close()

    async def test_unknown_app_is_unavailable(self, tmp_path: Path) -> None:
        host = await started_host(tmp_path, Subscriber())
        try:
            with pytest.raises(AppUnavailable):
                await host.runtime_for("gateway").invoke("nope", "GET", "/")
        finally:
            await host.close()


class TestState:
    async def test_etag_guards_concurrent_writers(self, tmp_path: Path) -> None:
        host = await started_host(tmp_path, Subscriber())
        runtime = host.runtime_for("a")
        try:
            await runtime.save_state("s", "k", b"1", etag="")
            first = await runtime.get_state("s", "k")
            assert first is not None and first.value == b"1"
            await runtime.save_state("s", "k", b"2", etag=first.etag)
            with pytest.raises(ETagMismatch):
                await runtime.save_state("s", "k", b"3", etag=first.etag)
            with pytest.raises(ETagMismatch):
                await runtime.save_state("s", "k", b"3", etag="")
            current = await runtime.get_state("s", "k")
            assert current is not None and current.value == b"2"
        finally:
            await host.close()

    async def test_ttl_expires_and_values_persist_across_restart(self, tmp_path: Path) -> None:
        host = await started_host(tmp_path, Subscriber())
        runtime = host.runtime_for("a")
        await runtime.save_state("s", "short", b"x", ttl_s=1)
        await runtime.save_state("s", "long", b"y")
        await host.close()

        host = await started_host(tmp_path, Subscriber())
        runtime = host.runtime_for("a")
        try:
            long = await runtime.get_state("s", "long")
            assert long is not None and long.value == b"y"
            await asyncio.sleep(1.1)
            assert await runtime.get_state("s", "short") is None
            await runtime.delete_state("s", "long")
            assert await runtime.get_state("s", "long") is None
        finally:
            await host.close()


class TestSecrets:
    async def test_key_file_is_created_0600_and_rotations_are_seen(self, tmp_path: Path) -> None:
        path = tmp_path / "secrets.json"
        created = ensure_secret_file(path, {"jwt": lambda: "one"})
        assert created == ["jwt"]
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert ensure_secret_file(path, {"jwt": lambda: "two"}) == []
        host = await started_host(tmp_path, Subscriber(), secrets_file=path)
        try:
            runtime = host.runtime_for("auth")
            assert await runtime.get_secret("secretstore", "jwt") == "one"
            from opsconductor_runtime.embedded.secrets import write_secret_file

            write_secret_file(path, {"jwt": "rotated"})
            assert await runtime.get_secret("secretstore", "jwt") == "rotated"
        finally:
            await host.close()


class TestCronBindings:
    def test_schedules_in_dapr_syntax(self) -> None:
        assert parse_go_duration("1m30s") == 90
        assert parse_go_duration("250ms") == 0.25
        assert Schedule("@every 15s").seconds_until_next(0) == 15
        # Six fields: seconds first, as Dapr writes them.
        assert Schedule("*/10 * * * * *").seconds_until_next(3.0) == pytest.approx(7.0)
        assert Schedule("@hourly").seconds_until_next(0) == 3600
        with pytest.raises(ValueError):
            Schedule("every tuesday")

    async def test_fires_only_the_scoped_apps(self, tmp_path: Path) -> None:
        components = tmp_path / "components"
        components.mkdir()
        (components / "tick.yaml").write_text(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: tick\n"
            "spec:\n  type: bindings.cron\n  version: v1\n  metadata:\n"
            "  - name: schedule\n    value: \"@every 100ms\"\nscopes:\n- sub\n")
        assert [b.name for b in load_cron_bindings(components)] == ["tick"]
        scoped, other = Subscriber(), Subscriber()
        host = EmbeddedHost(tmp_path, components_dir=components)
        await host.open()
        host.register("sub", scoped.app)
        host.register("other", other.app)
        await host.start_delivery()
        try:
            await wait_for(lambda: scoped.ticks >= 2, timeout=15.0)
            assert other.ticks == 0
        finally:
            await host.close()


class TestHostStore:
    """The host's own file: queued deliveries and state rows."""

    async def test_rows_inserted_together_are_stored_together_or_not_at_all(
        self, tmp_path: Path
    ) -> None:
        store = HostStore(tmp_path / "runtime.db")
        await store.open()
        sql = ("INSERT INTO deliveries (app_id, route, pubsub, topic, payload, next_attempt_at)"
               " VALUES (?, ?, ?, ?, ?, ?)")
        good = ("jobs", "/events", "pubsub", "t", "{}", 0.0)
        with pytest.raises(sqlite3.IntegrityError):
            await store.insert(sql, [good, ("audit", "/events", "pubsub", "t", None, 0.0)])
        assert await store.fetch("SELECT COUNT(*) FROM deliveries") == [(0,)]
        assert len(await store.insert(sql, [good, good])) == 2
        await store.close()
        reopened = HostStore(tmp_path / "runtime.db")
        await reopened.open()
        assert await reopened.fetch("SELECT COUNT(*) FROM deliveries") == [(2,)]
        await reopened.close()
