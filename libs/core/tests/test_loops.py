"""PerLoop: one object per running event loop, remade in the next loop or when unusable."""

from __future__ import annotations

import asyncio

import pytest

from opsconductor_core.loops import PerLoop


def test_one_lock_per_loop_shared_within_it() -> None:
    locks = PerLoop(asyncio.Lock)

    async def twice() -> tuple[asyncio.Lock, asyncio.Lock]:
        return locks.get(), locks.get()

    first_a, first_b = asyncio.run(twice())
    second_a, _ = asyncio.run(twice())
    assert first_a is first_b
    assert second_a is not first_a
    # The new loop's lock works in that loop (a lock bound to a closed loop would not).
    async def use() -> None:
        async with locks.get():
            await asyncio.sleep(0)
    asyncio.run(use())


async def test_an_unusable_object_is_made_again_and_take_forgets() -> None:
    made: list[dict[str, bool]] = []

    def make() -> dict[str, bool]:
        made.append({"closed": False})
        return made[-1]

    sessions = PerLoop(make, usable=lambda s: not s["closed"])
    first = sessions.get()
    assert sessions.get() is first
    first["closed"] = True
    assert sessions.get() is not first and len(made) == 2
    assert sessions.take() is made[1]
    assert sessions.take() is None
    assert sessions.get() is made[2]


def test_outside_a_loop_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        PerLoop(asyncio.Lock).get()
