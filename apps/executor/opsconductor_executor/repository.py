"""SQL of the executor service. Flushes, never commits."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.engine import CursorResult

from opsconductor_core.problems import InvalidInput
from opsconductor_db.repository import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Page,
    Repository,
    decode_cursor,
    encode_cursor,
)
from opsconductor_executor.models import (
    ACTIVE,
    OUTPUT,
    Execution,
    ExecutionRecord,
    ExecutionSecret,
    ExecutionTarget,
)


def _rowcount(result: Any) -> int:
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


class ExecutionRepository(Repository[Execution]):
    model = Execution

    async def by_idempotency_key(self, key: str) -> Execution | None:
        return await self.session.scalar(select(Execution).where(Execution.idempotency_key == key))

    async def search(self, *, job_id: str | None = None, status: str | None = None,
                     limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Execution]:
        """Newest first (keyset on created_at, id)."""
        limit = max(1, min(limit, MAX_LIMIT))
        stmt = select(Execution)
        if job_id:
            stmt = stmt.where(Execution.job_id == job_id)
        if status:
            stmt = stmt.where(Execution.status == status)
        if cursor:
            created, row_id = decode_cursor(cursor)
            stmt = stmt.where(or_(Execution.created_at < created,
                                  and_(Execution.created_at == created, Execution.id < row_id)))
        stmt = stmt.order_by(Execution.created_at.desc(), Execution.id.desc()).limit(limit + 1)
        rows = list((await self.session.scalars(stmt)).all())
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
        return Page(items=rows, next_cursor=next_cursor)

    async def counts(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict[str, int]]:
        """Targets per status of each execution."""
        found: dict[uuid.UUID, dict[str, int]] = {i: {} for i in ids}
        if not ids:
            return found
        stmt = (select(ExecutionTarget.execution_id, ExecutionTarget.status, func.count())
                .where(ExecutionTarget.execution_id.in_(list(ids)))
                .group_by(ExecutionTarget.execution_id, ExecutionTarget.status))
        for execution_id, status, count in (await self.session.execute(stmt)).all():
            found[execution_id][status] = int(count)
        return found

    # --- leases ----------------------------------------------------------------------------------

    async def claim(self, execution_id: uuid.UUID, owner: str, *, now: datetime,
                    lease_until: datetime, take_own: bool = False) -> bool:
        """One conditional UPDATE: of replicas racing for the same row exactly one wins.

        `take_own`: this replica's own earlier claim counts as free (after a restart that kept
        its replica id, the lease's holder is known to be gone)."""
        free = [Execution.owner.is_(None), Execution.lease_until < now]
        if take_own:
            free.append(Execution.owner == owner)
        result = await self.session.execute(
            update(Execution)
            .where(Execution.id == execution_id, Execution.status.in_(ACTIVE), or_(*free))
            .values(owner=owner, lease_until=lease_until)
            .execution_options(synchronize_session=False))
        return _rowcount(result) == 1

    async def renew(self, ids: Sequence[uuid.UUID], owner: str,
                    lease_until: datetime) -> set[uuid.UUID]:
        """Extend this replica's leases; returns the ids it still holds."""
        if not ids:
            return set()
        await self.session.execute(
            update(Execution).where(Execution.id.in_(list(ids)), Execution.owner == owner)
            .values(lease_until=lease_until).execution_options(synchronize_session=False))
        held = await self.session.scalars(
            select(Execution.id).where(Execution.id.in_(list(ids)), Execution.owner == owner))
        return set(held.all())

    async def release(self, execution_id: uuid.UUID, owner: str, now: datetime) -> None:
        """Let another replica take over at once (a clean shutdown mid-run)."""
        await self.session.execute(
            update(Execution).where(Execution.id == execution_id, Execution.owner == owner,
                                    Execution.status.in_(ACTIVE))
            .values(lease_until=now).execution_options(synchronize_session=False))

    async def still_owned(self, execution_id: uuid.UUID, owner: str) -> bool:
        found = await self.session.scalar(
            select(Execution.id).where(Execution.id == execution_id, Execution.owner == owner))
        return found is not None

    async def request_cancel(self, execution_id: uuid.UUID, by: str, now: datetime) -> bool:
        """Flag it for cancel unless it is final or flagged already; True when this flagged it."""
        result = await self.session.execute(
            update(Execution)
            .where(Execution.id == execution_id, Execution.status.in_(ACTIVE),
                   Execution.cancel_requested.is_(False))
            .values(cancel_requested=True, cancel_requested_by=by, cancel_requested_at=now)
            .execution_options(synchronize_session=False))
        return _rowcount(result) == 1

    async def cancel_requested(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        if not ids:
            return set()
        found = await self.session.scalars(
            select(Execution.id).where(Execution.id.in_(list(ids)),
                                       Execution.cancel_requested.is_(True)))
        return set(found.all())

    async def claimable(self, owner: str, now: datetime, *, limit: int,
                        exclude: Iterable[uuid.UUID] = ()) -> list[uuid.UUID]:
        """Unfinished executions nobody holds: never claimed, lease expired, or this replica's
        own from an earlier life (`exclude` are the ones it runs right now). Oldest first."""
        stmt = (select(Execution.id)
                .where(Execution.status.in_(ACTIVE),
                       or_(Execution.owner.is_(None), Execution.lease_until < now,
                           Execution.owner == owner))
                .order_by(Execution.created_at, Execution.id).limit(limit))
        skip = list(exclude)
        if skip:
            stmt = stmt.where(Execution.id.not_in(skip))
        return list((await self.session.scalars(stmt)).all())

    # --- targets ---------------------------------------------------------------------------------

    async def targets(self, execution_id: uuid.UUID) -> list[ExecutionTarget]:
        # populate_existing: rows this session changed with bulk UPDATEs are read as they are now.
        stmt = (select(ExecutionTarget).where(ExecutionTarget.execution_id == execution_id)
                .order_by(ExecutionTarget.position).execution_options(populate_existing=True))
        return list((await self.session.scalars(stmt)).all())

    async def targets_page(self, execution_id: uuid.UUID, *, status: str | None = None,
                           limit: int = DEFAULT_LIMIT,
                           cursor: str | None = None) -> Page[ExecutionTarget]:
        limit = max(1, min(limit, MAX_LIMIT))
        stmt = select(ExecutionTarget).where(ExecutionTarget.execution_id == execution_id)
        if status:
            stmt = stmt.where(ExecutionTarget.status == status)
        if cursor:
            stmt = stmt.where(ExecutionTarget.position > _decode_position(cursor))
        stmt = stmt.order_by(ExecutionTarget.position).limit(limit + 1)
        rows = list((await self.session.scalars(stmt)).all())
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = _encode_position(rows[-1].position)
        return Page(items=rows, next_cursor=next_cursor)

    async def update_target(self, execution_id: uuid.UUID, target_id: str,
                            values: dict[str, Any]) -> None:
        await self.session.execute(
            update(ExecutionTarget)
            .where(ExecutionTarget.execution_id == execution_id,
                   ExecutionTarget.target_id == target_id)
            .values(**values).execution_options(synchronize_session=False))

    async def update_execution(self, execution_id: uuid.UUID, values: dict[str, Any], *,
                               owner: str | None = None) -> bool:
        stmt = update(Execution).where(Execution.id == execution_id)
        if owner is not None:
            stmt = stmt.where(Execution.owner == owner)
        result = await self.session.execute(
            stmt.values(**values).execution_options(synchronize_session=False))
        return _rowcount(result) == 1

    # --- the stream ------------------------------------------------------------------------------

    async def max_seq(self, execution_id: uuid.UUID) -> int:
        found = await self.session.scalar(
            select(func.max(ExecutionRecord.seq)).where(ExecutionRecord.execution_id == execution_id))
        return int(found or 0)

    async def add_records(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self.session.execute(insert(ExecutionRecord), rows)

    async def records(self, execution_id: uuid.UUID, *, after_seq: int = 0, limit: int = 500,
                      output_only: bool = False,
                      target_id: str | None = None) -> list[ExecutionRecord]:
        stmt = select(ExecutionRecord).where(ExecutionRecord.execution_id == execution_id,
                                             ExecutionRecord.seq > after_seq)
        if output_only:
            stmt = stmt.where(ExecutionRecord.event == OUTPUT)
        if target_id is not None:
            stmt = stmt.where(ExecutionRecord.target_id == target_id)
        stmt = stmt.order_by(ExecutionRecord.seq).limit(limit)
        return list((await self.session.scalars(stmt)).all())

    # --- sealed secret values --------------------------------------------------------------------

    async def sealed_secrets(self, execution_id: uuid.UUID) -> bytes | None:
        found: bytes | None = await self.session.scalar(
            select(ExecutionSecret.sealed).where(ExecutionSecret.execution_id == execution_id))
        return found

    async def drop_secrets(self, execution_id: uuid.UUID) -> None:
        await self.session.execute(
            delete(ExecutionSecret).where(ExecutionSecret.execution_id == execution_id)
            .execution_options(synchronize_session=False))


def _encode_position(position: int) -> str:
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def _decode_position(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("p"):
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("Invalid cursor", errors={"cursor": "not a cursor from this API"}) \
            from None
