"""Services announce facts through this: the event joins the caller's transaction (outbox)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_contracts.envelope import new_event
from opsconductor_runtime.outbox import enqueue


class EventPublisher:
    def __init__(self, source: str, outbox: Table) -> None:
        self._source = source
        self._outbox = outbox

    async def emit(
        self,
        session: AsyncSession,
        topic: str,
        data: BaseModel | dict[str, Any],
        *,
        actor: str | None,
        resource_type: str,
        resource_id: str,
    ) -> dict[str, Any]:
        event = new_event(topic, data, source=self._source, actor=actor,
                          resource_type=resource_type, resource_id=resource_id)
        await enqueue(session, self._outbox, topic, event)
        return event
