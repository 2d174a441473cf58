"""FastAPI dependency for the request's transaction: `session: Session`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_db.database import ServiceDatabase


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: ServiceDatabase = request.app.state.db
    async with db.transaction() as session:
        yield session


# scope="function": the transaction commits before the answer is sent. FastAPI's default
# ("request") runs a dependency's exit after the response went out, so a client could hold a
# 201 for a write whose commit then failed, or read back before it landed.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
