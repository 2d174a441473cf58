"""The health sweep driven by the cron binding's tick: statuses, history, events, limits."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from opsconductor_contracts.components import STATE_STORE, TARGETS_HEALTH_LEASE_KEY
from opsconductor_targets import health
from opsconductor_testing.sshd import SshServer, free_port

if TYPE_CHECKING:
    from conftest import World, WorldFactory


async def pinned(world: World, sshd: SshServer, name: str, **extra: Any) -> dict[str, Any]:
    return await world.create(name=name, host=sshd.host, port=sshd.port, username=sshd.user,
                              host_key=sshd.host_public_key,
                              credential={"type": "private_key",
                                          "private_key": sshd.client_private_key}, **extra)


async def status_of(world: World, target: dict[str, Any]) -> str:
    response = await world.client.get(f"/targets/{target['id']}", headers=world.auth())
    return str(response.json()["status"])


class TestTick:
    async def test_statuses_history_and_events(self, world: World, sshd: SshServer) -> None:
        up = await pinned(world, sshd, "up")
        down = await world.create(name="down", host="127.0.0.1", port=free_port(),
                                  host_key=sshd.host_key_fingerprint)
        unpinned = await world.create(name="new", host=sshd.host, port=sshd.port,
                                      username=sshd.user)
        await world.drain()

        summary = await world.tick()
        assert (summary["checked"], summary["changed"]) == (3, 3)
        assert await status_of(world, up) == "healthy"
        assert await status_of(world, down) == "unreachable"
        assert await status_of(world, unpinned) == "degraded"
        shown = (await world.client.get(f"/targets/{unpinned['id']}", headers=world.auth())).json()
        assert shown["presented_host_key_fingerprint"] == sshd.host_key_fingerprint
        events = await world.events()
        changes = {e["data"]["name"]: (e["data"]["previous"], e["data"]["status"], e["actor"])
                   for e in events if e["type"] == "target.status_changed"}
        assert changes == {"up": ("unknown", "healthy", "system"),
                           "down": ("unknown", "unreachable", "system"),
                           "new": ("unknown", "degraded", "system")}
        await world.drain()

        assert (await world.tick())["changed"] == 0
        assert await world.topics() == []

        sshd.stop()
        assert (await world.tick())["changed"] == 2
        assert await status_of(world, up) == "unreachable"
        events = await world.events()
        assert sorted((e["data"]["name"], e["data"]["stage"]) for e in events) == [
            ("new", "connect"), ("up", "connect")]

        history = (await world.client.get(f"/targets/{up['id']}/health",
                                          headers=world.auth(world.viewer))).json()
        assert history["status"] == "unreachable"
        assert [h["status"] for h in history["items"]] == ["unreachable", "healthy", "healthy"]
        assert all(h["source"] == "health" for h in history["items"])
        assert history["items"][0]["checked_at"] > history["items"][-1]["checked_at"]

    async def test_history_pages_and_is_pruned(self, make_world: WorldFactory,
                                               sshd: SshServer) -> None:
        async with make_world(health_history_keep=3) as world:
            target = await pinned(world, sshd, "web")
            for _ in range(5):
                await world.tick()
            first = (await world.client.get(f"/targets/{target['id']}/health",
                                            headers=world.auth(), params={"limit": 2})).json()
            assert len(first["items"]) == 2 and first["next_cursor"]
            rest = (await world.client.get(f"/targets/{target['id']}/health",
                                           headers=world.auth(),
                                           params={"cursor": first["next_cursor"]})).json()
            assert len(rest["items"]) == 1 and rest["next_cursor"] is None

    async def test_unknown_target_history_is_404(self, world: World) -> None:
        response = await world.client.get("/targets/00000000-0000-0000-0000-000000000000/health",
                                          headers=world.auth())
        assert response.status_code == 404

    async def test_concurrency_is_bounded(self, make_world: WorldFactory, sshd: SshServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        running = peak = 0
        real = health.run_check

        async def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await asyncio.sleep(0.05)
                return await real(*args, **kwargs)
            finally:
                running -= 1

        monkeypatch.setattr(health, "run_check", counted)
        async with make_world(health_concurrency=2) as world:
            for n in range(6):
                await pinned(world, sshd, f"web{n}")
            summary = await world.tick()
        assert summary["checked"] == 6
        assert peak == 2

    async def test_one_replica_at_a_time(self, world: World, sshd: SshServer) -> None:
        await pinned(world, sshd, "web")
        await world.runtime.save_state(STATE_STORE, TARGETS_HEALTH_LEASE_KEY, b"other", ttl_s=60)
        assert (await world.tick()).get("skipped") is True
        await world.runtime.delete_state(STATE_STORE, TARGETS_HEALTH_LEASE_KEY)
        assert (await world.tick())["checked"] == 1
        # Our own lease is released after the sweep.
        assert await world.runtime.get_state(STATE_STORE, TARGETS_HEALTH_LEASE_KEY) is None

    async def test_a_slow_sweep_answers_the_tick_and_goes_on(
            self, make_world: WorldFactory, sshd: SshServer,
            monkeypatch: pytest.MonkeyPatch) -> None:
        real = health.run_check

        async def slow(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.5)
            return await real(*args, **kwargs)

        monkeypatch.setattr(health, "run_check", slow)
        async with make_world(tick_wait_s=0.05) as world:
            target = await pinned(world, sshd, "web")
            assert (await world.tick()) == {"status": "SUCCESS", "running": True}
            assert (await world.tick()) == {"status": "SUCCESS", "running": True}  # no 2nd sweep
            for _ in range(100):
                if await status_of(world, target) != "unknown":
                    break
                await asyncio.sleep(0.05)
            assert await status_of(world, target) == "healthy"

    async def test_the_sidecar_probe(self, world: World) -> None:
        assert (await world.client.options("/targets-health")).status_code == 200
