"""Objects that belong to one asyncio event loop (locks, client sessions), made on first use in
the loop that runs: a process may run several loops in turn (tests do), and an object made in
an earlier one must not be used in the next."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    def __init__(self, make: Callable[[], T], usable: Callable[[T], bool] | None = None) -> None:
        self._make = make
        self._usable = usable
        self._value: T | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> T:
        """The running loop's object, made now if there is none yet (or it is no longer
        `usable`)."""
        loop = asyncio.get_running_loop()
        value = self._value
        if value is None or self._loop is not loop or (self._usable and not self._usable(value)):
            value, self._loop = self._make(), loop
            self._value = value
        return value

    def take(self) -> T | None:
        """The object made last, forgotten here (its owner closes it)."""
        value, self._value, self._loop = self._value, None, None
        return value
