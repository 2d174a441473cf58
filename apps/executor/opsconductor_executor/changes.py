"""Rows a running execution writes, as data, so many of them go to the database together.

Hundreds of targets report at once; one UPDATE or INSERT per report costs a round trip each.
`apply_changes` turns any number of `Changes` into one executemany per kind: target updates
(grouped by the columns they set), stream records, and outbox events.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, bindparam, insert, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from opsconductor_executor.models import ExecutionRecord, ExecutionTarget, outbox
from opsconductor_runtime.outbox import enqueue_many

_TARGETS: Table = ExecutionTarget.__table__  # type: ignore[assignment]
_RECORDS: Table = ExecutionRecord.__table__  # type: ignore[assignment]


@dataclass
class Changes:
    """What one report writes: one target's columns, stream records, events (all optional)."""

    execution_id: uuid.UUID
    target_id: str | None = None
    target: dict[str, Any] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def merge(self, other: Changes) -> Changes:
        """This target's columns plus `other`'s records and events (other has no target part)."""
        assert not other.target
        self.records += other.records
        self.events += other.events
        return self


class Bulk:
    """Collects Changes; `flush` writes them with a few statements. A second change to a target
    already collected is written after the first (flush in between), so order holds."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        self._touched: set[tuple[uuid.UUID, str]] = set()
        self._records: list[dict[str, Any]] = []
        self._events: list[tuple[str, dict[str, Any]]] = []

    def conflicts(self, changes: Changes) -> bool:
        return bool(changes.target) and (changes.execution_id, changes.target_id or "") in self._touched

    def add(self, changes: Changes) -> None:
        if changes.target:
            assert changes.target_id is not None
            columns = tuple(sorted(changes.target))
            self._updates.setdefault(columns, []).append(
                {"w_execution_id": changes.execution_id, "w_target_id": changes.target_id,
                 **changes.target})
            self._touched.add((changes.execution_id, changes.target_id))
        self._records += changes.records
        self._events += changes.events

    async def flush(self, session: AsyncSession) -> None:
        postgres = session.bind is not None and session.bind.dialect.name == "postgresql"
        for columns, params in self._updates.items():
            if postgres:
                await _update_postgres(session, columns, params)
                continue
            stmt = (update(_TARGETS)
                    .where(_TARGETS.c.execution_id == bindparam("w_execution_id"),
                           _TARGETS.c.target_id == bindparam("w_target_id"))
                    .values({c: bindparam(c) for c in columns}))
            await session.execute(stmt, params)
        if self._records:
            await session.execute(insert(_RECORDS), self._records)
        await enqueue_many(session, outbox, self._events)
        self._reset()


async def apply_changes(session: AsyncSession, changes: Iterable[Changes]) -> None:
    bulk = Bulk()
    for change in changes:
        if bulk.conflicts(change):
            await bulk.flush(session)
        bulk.add(change)
    await bulk.flush(session)


async def _update_postgres(session: AsyncSession, columns: tuple[str, ...],
                           params: list[dict[str, Any]]) -> None:
    """One UPDATE ... FROM unnest(arrays) per execution: an executemany of a few hundred UPDATEs
    costs a statement each on PostgreSQL, this costs one."""
    dialect = postgresql.dialect()
    by_execution: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in params:
        by_execution.setdefault(row["w_execution_id"], []).append(row)
    # Only the model's own column names and types reach the SQL text (values are bound).
    if not set(columns) <= set(_TARGETS.c.keys()):
        raise ValueError("not a column of execution_targets")
    arrays = ", ".join(f"CAST(:{c} AS {_TARGETS.c[c].type.compile(dialect)}[])" for c in columns)
    sql = text(f"UPDATE execution_targets AS t SET {', '.join(f'{c} = v.{c}' for c in columns)} "  # noqa: S608
               f"FROM unnest(CAST(:w_target_ids AS VARCHAR[]), {arrays}) "
               f"AS v(target_id, {', '.join(columns)}) "
               "WHERE t.execution_id = :w_execution_id AND t.target_id = v.target_id")
    for execution_id, rows in by_execution.items():
        await session.execute(sql, {"w_execution_id": execution_id,
                                    "w_target_ids": [r["w_target_id"] for r in rows],
                                    **{c: [r[c] for r in rows] for c in columns}})
