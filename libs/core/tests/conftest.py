"""Apps built with the shared factory, called in-process through httpx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from opsconductor_core.settings import PlatformSettings

MAX_BODY = 1024

ClientFactory = Callable[[FastAPI], AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def settings() -> PlatformSettings:
    return PlatformSettings(max_body_bytes=MAX_BODY)


@pytest.fixture
def client_for() -> ClientFactory:
    @asynccontextmanager
    async def open_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
        # raise_app_exceptions=False: a 500 must reach the test as the response a caller gets.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            yield client

    return open_client
