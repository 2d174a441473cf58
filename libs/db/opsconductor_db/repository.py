"""Repository base: SQL only; flushes, never commits. Keyset pagination shared by every list."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_core.problems import InvalidInput

ModelT = TypeVar("ModelT")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclass
class Page(Generic[ModelT]):
    items: Sequence[ModelT]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, row_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created), uuid.UUID(row_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("Invalid cursor", errors={"cursor": "not a cursor from this API"}) from exc


class Repository(Generic[ModelT]):
    """Subclasses set `model`; the model has `id` (UUID) and `created_at` columns."""

    model: type[ModelT]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, row_id: uuid.UUID) -> ModelT | None:
        return await self.session.get(self.model, row_id)

    async def add(self, row: ModelT) -> ModelT:
        self.session.add(row)
        await self.session.flush()
        return row

    async def delete(self, row: ModelT) -> None:
        await self.session.delete(row)
        await self.session.flush()

    async def page(self, stmt: Select[Any] | None = None, *, limit: int = DEFAULT_LIMIT,
                   cursor: str | None = None) -> Page[ModelT]:
        model: Any = self.model
        stmt = stmt if stmt is not None else select(model)
        limit = max(1, min(limit, MAX_LIMIT))
        if cursor:
            created, row_id = decode_cursor(cursor)
            stmt = stmt.where(or_(model.created_at > created,
                                  and_(model.created_at == created, model.id > row_id)))
        stmt = stmt.order_by(model.created_at, model.id).limit(limit + 1)
        rows = list((await self.session.scalars(stmt)).all())
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            last: Any = rows[-1]
            next_cursor = encode_cursor(last.created_at, last.id)
        return Page(items=rows, next_cursor=next_cursor)
