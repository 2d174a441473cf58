"""The SSH pool against the real sshd; reuse and limits are checked on the SERVER side."""

from __future__ import annotations

import asyncio
import signal

import pytest

from opsconductor_connectors import (
    ConnectorError,
    HostKeyPin,
    SshCredential,
    SshPool,
    SshTarget,
    Stage,
)
from opsconductor_testing.sshd import SshServer, eventually


def pinned_target(server: SshServer) -> SshTarget:
    return SshTarget(server.host, server.port, HostKeyPin.parse(server.host_public_key))


def key_credential(server: SshServer, version: int = 0) -> SshCredential:
    return SshCredential(server.user, private_key=server.client_private_key, version=version)


class TestReuse:
    async def test_many_commands_share_one_tcp_connection(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool() as pool:
            outputs = []
            for n in range(10):
                async with pool.session(target, credential) as session:
                    outputs.append((await session.run(f"echo {n}")).stdout)
            established_while_pooled = sshd.established_connections()
            stats = pool.stats()

        assert outputs == [f"{n}\n" for n in range(10)]
        assert sshd.connections() == 1  # "Connection from ..." lines in sshd's log
        assert sshd.accepted_logins() == 1
        assert sshd.count(r"Starting session: command") == 1  # one kept shell ran all ten
        assert established_while_pooled == 1
        assert (stats.created, stats.reused) == (1, 9)
        assert await eventually(lambda: sshd.established_connections() == 0)

    async def test_concurrent_commands_are_channels_of_one_connection(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)

        async def one(pool: SshPool) -> tuple[float, float]:
            async with pool.session(target, credential) as session:
                # 3 s: each start pays the login shell's start-up (slow for root's bash here).
                out = (await session.run("date +%s.%N; sleep 3; date +%s.%N")).stdout.split()
                return float(out[0]), float(out[1])

        async with SshPool(max_channels_per_connection=8) as pool:
            spans = await asyncio.gather(*(one(pool) for _ in range(6)))

        assert sshd.accepted_logins() == 1
        assert sshd.count(r"Starting session: command") == 6
        # Every command started before any finished: they ran side by side.
        assert max(start for start, _ in spans) < min(end for _, end in spans)

    async def test_another_credential_version_gets_its_own_login(self, sshd: SshServer) -> None:
        target = pinned_target(sshd)
        async with SshPool(max_per_host=1) as pool:
            async with pool.session(target, key_credential(sshd, version=1)) as session:
                await session.run("true")
            async with pool.session(target, key_credential(sshd, version=2)) as session:
                await session.run("true")
            stats = pool.stats()

        assert sshd.accepted_logins() == 2
        assert stats.evicted == 1  # the idle version-1 connection made room under the cap


class TestLimits:
    async def test_per_host_cap_queues_checkouts(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        peak = 0

        async def one(pool: SshPool) -> None:
            nonlocal peak
            async with pool.session(target, credential) as session:
                peak = max(peak, sshd.established_connections())
                await session.run("sleep 0.2")

        async with SshPool(max_per_host=2, max_channels_per_connection=1) as pool:
            await asyncio.gather(*(one(pool) for _ in range(6)))
            stats = pool.stats()

        assert sshd.accepted_logins() == 2
        assert peak <= 2
        assert stats.created == 2
        assert stats.waited >= 1

    async def test_checkout_gives_up_after_its_timeout(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool(max_per_host=1, max_channels_per_connection=1, checkout_timeout_s=0.3) as pool:
            async with pool.session(target, credential):
                with pytest.raises(ConnectorError) as caught:
                    async with pool.session(target, credential):
                        pass

        assert caught.value.stage is Stage.TIMEOUT
        assert caught.value.during is Stage.CONNECT


class TestLifecycle:
    async def test_idle_connections_expire(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool(idle_timeout_s=0.3) as pool:
            async with pool.session(target, credential) as session:
                await session.run("true")
            assert sshd.established_connections() == 1
            assert await eventually(lambda: pool.stats().expired == 1, timeout_s=3)
            assert await eventually(lambda: sshd.established_connections() == 0)
            async with pool.session(target, credential) as session:
                await session.run("true")

        assert sshd.accepted_logins() == 2

    async def test_dead_connection_is_replaced_on_checkout(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool(ping_after_idle_s=0) as pool:
            async with pool.session(target, credential) as session:
                await session.run("true")
            assert sshd.drop_connections() >= 1
            await asyncio.sleep(0.2)
            async with pool.session(target, credential) as session:
                result = await session.run("echo alive")
            stats = pool.stats()

        assert result.stdout == "alive\n"
        assert stats.dead == 1
        assert sshd.accepted_logins() == 2

    async def test_hung_connection_fails_the_liveness_check(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        async with SshPool(ping_after_idle_s=0, ping_timeout_s=0.5) as pool:
            async with pool.session(target, credential) as session:
                await session.run("true")
            # Freeze the server side: the TCP connection stays open but nothing answers.
            assert sshd.signal_connections(signal.SIGSTOP) >= 1
            try:
                async with pool.session(target, credential) as session:
                    result = await session.run("echo fresh")
                stats = pool.stats()
            finally:
                sshd.drop_connections()

        assert result.stdout == "fresh\n"
        assert stats.dead == 1
        assert sshd.accepted_logins() == 2

    async def test_close_all_closes_every_connection(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)
        pool = SshPool(max_channels_per_connection=1)

        async def one() -> None:
            async with pool.session(target, credential) as session:
                await session.run("sleep 0.1")

        await asyncio.gather(one(), one(), one())
        assert sshd.established_connections() == 3
        await pool.close()

        assert await eventually(lambda: sshd.established_connections() == 0)
        with pytest.raises(RuntimeError):
            async with pool.session(target, credential):
                pass


class TestCanceledLogin:
    async def test_the_others_waiting_for_a_canceled_login_log_in_themselves(self, sshd: SshServer) -> None:
        target, credential = pinned_target(sshd), key_credential(sshd)

        async with SshPool() as pool:

            async def use() -> str:
                async with pool.session(target, credential) as session:
                    return (await session.run("echo ok")).stdout

            first = asyncio.ensure_future(use())  # starts the login
            await asyncio.sleep(0)
            others = [asyncio.ensure_future(use()) for _ in range(3)]  # wait for that login
            await asyncio.sleep(0.01)
            first.cancel()
            results = await asyncio.gather(*others)

        assert results == ["ok\n"] * 3
        assert first.cancelled()
