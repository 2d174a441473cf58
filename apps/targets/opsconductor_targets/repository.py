"""SQL of the targets service. Flushes, never commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.orm import raiseload

from opsconductor_db.repository import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Page,
    Repository,
    decode_cursor,
    encode_cursor,
)
from opsconductor_targets.models import Credential, HealthCheck, Target, TargetTag


class TargetRepository(Repository[Target]):
    model = Target

    async def by_name(self, name: str) -> Target | None:
        return await self.session.scalar(select(Target).where(Target.name_key == name.lower()))

    async def by_names(self, names: Sequence[str]) -> dict[str, Target]:
        keys = sorted({n.lower() for n in names})
        found: dict[str, Target] = {}
        for start in range(0, len(keys), 500):  # stay under every driver's bind limit
            stmt = select(Target).where(Target.name_key.in_(keys[start:start + 500]))
            for target in (await self.session.scalars(stmt)).all():
                found[target.name_key] = target
        return found

    async def search(self, *, tags: Sequence[str] = (), protocol: str | None = None,
                     status: str | None = None, q: str | None = None,
                     limit: int = DEFAULT_LIMIT, cursor: str | None = None) -> Page[Target]:
        stmt = select(Target)
        for tag in tags:
            stmt = stmt.where(Target.tag_rows.any(TargetTag.tag == tag))
        if protocol:
            stmt = stmt.where(Target.protocol == protocol)
        if status:
            stmt = stmt.where(Target.status == status)
        if q:
            needle = q.strip()
            stmt = stmt.where(Target.name.icontains(needle, autoescape=True)
                              | Target.host.icontains(needle, autoescape=True)
                              | Target.description.icontains(needle, autoescape=True)
                              | Target.username.icontains(needle, autoescape=True)
                              | Target.os.icontains(needle, autoescape=True))
        return await self.page(stmt, limit=limit, cursor=cursor)

    async def resolve(self, ids: Sequence[uuid.UUID], tags: Sequence[str]) -> list[
            tuple[uuid.UUID, str, str]]:
        """(id, name, protocol) of the targets with one of `ids` or carrying every one of `tags`,
        each once, ordered by name."""
        columns = (Target.id, Target.name, Target.protocol)
        found: dict[uuid.UUID, tuple[uuid.UUID, str, str]] = {}
        unique = sorted(set(ids))
        for start in range(0, len(unique), 500):  # stay under every driver's bind limit
            stmt = select(*columns).where(Target.id.in_(unique[start:start + 500]))
            for row in (await self.session.execute(stmt)).all():
                found[row[0]] = (row[0], row[1], row[2])
        if tags:
            stmt = select(*columns)
            for tag in sorted(set(tags)):
                stmt = stmt.where(Target.tag_rows.any(TargetTag.tag == tag))
            for row in (await self.session.execute(stmt)).all():
                found[row[0]] = (row[0], row[1], row[2])
        return sorted(found.values(), key=lambda row: (row[1].lower(), row[0]))

    async def all_ids(self, *, after: uuid.UUID | None = None, batch: int = 500) -> list[uuid.UUID]:
        stmt = select(Target.id).order_by(Target.id).limit(batch)
        if after is not None:
            stmt = stmt.where(Target.id > after)
        return list((await self.session.scalars(stmt)).all())

    def set_tags(self, target: Target, tags: Sequence[str]) -> None:
        current = {row.tag: row for row in target.tag_rows}
        target.tag_rows = [current.get(tag) or TargetTag(tag=tag) for tag in sorted(set(tags))]


class CredentialRepository(Repository[Credential]):
    model = Credential

    async def for_target(self, target_id: uuid.UUID) -> Credential | None:
        return await self.session.get(Credential, target_id)

    async def with_target(self, target_id: uuid.UUID) -> tuple[Target, Credential | None] | None:
        """A target and its sealed credential in one query (a run asks this for each target;
        the target's tags are not loaded, and touching them raises)."""
        row = (await self.session.execute(
            select(Target, Credential)
            .outerjoin(Credential, Credential.target_id == Target.id)
            .where(Target.id == target_id)
            .options(raiseload(Target.tag_rows)))).first()
        return None if row is None else (row[0], row[1])

    async def wrapped_under_other_keys(self, active: str, *, limit: int,
                                       skip: Sequence[uuid.UUID] = ()) -> list[Credential]:
        """A batch to re-wrap; on PostgreSQL rows another replica is re-wrapping are skipped."""
        stmt = select(Credential).where(Credential.key_id != active)
        if skip:
            stmt = stmt.where(Credential.target_id.not_in(list(skip)))
        stmt = stmt.order_by(Credential.target_id).limit(limit)
        if self.session.bind is not None and self.session.bind.dialect.name != "sqlite":
            stmt = stmt.with_for_update(skip_locked=True)
        return list((await self.session.scalars(stmt)).all())

    async def count_by_key(self) -> dict[str, int]:
        rows = await self.session.execute(
            select(Credential.key_id, func.count()).group_by(Credential.key_id))
        return {key_id: int(count) for key_id, count in rows.all()}


class HealthRepository(Repository[HealthCheck]):
    model = HealthCheck

    async def history(self, target_id: uuid.UUID, *, limit: int = DEFAULT_LIMIT,
                      cursor: str | None = None) -> Page[HealthCheck]:
        """Newest first (keyset on checked_at, id)."""
        limit = max(1, min(limit, MAX_LIMIT))
        stmt = select(HealthCheck).where(HealthCheck.target_id == target_id)
        if cursor:
            checked, row_id = decode_cursor(cursor)
            stmt = stmt.where(or_(HealthCheck.checked_at < checked,
                                  and_(HealthCheck.checked_at == checked,
                                       HealthCheck.id < row_id)))
        stmt = stmt.order_by(HealthCheck.checked_at.desc(), HealthCheck.id.desc()).limit(limit + 1)
        rows = list((await self.session.scalars(stmt)).all())
        next_cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor(rows[-1].checked_at, rows[-1].id)
        return Page(items=rows, next_cursor=next_cursor)

    async def prune(self, target_id: uuid.UUID, keep: int) -> None:
        """Keep the newest `keep` checks of a target."""
        cutoff: datetime | None = await self.session.scalar(
            select(HealthCheck.checked_at).where(HealthCheck.target_id == target_id)
            .order_by(HealthCheck.checked_at.desc()).offset(keep).limit(1))
        if cutoff is not None:
            await self.session.execute(
                delete(HealthCheck).where(HealthCheck.target_id == target_id,
                                          HealthCheck.checked_at <= cutoff)
                .execution_options(synchronize_session=False))
