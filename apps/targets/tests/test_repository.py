"""The tables on both databases: migrations, uniqueness, cascades, keyset pages, pruning."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from opsconductor_db.database import ServiceDatabase
from opsconductor_db.types import utcnow
from opsconductor_targets.models import Credential, HealthCheck, Target, TargetTag
from opsconductor_targets.repository import HealthRepository, TargetRepository


def target(name: str, **extra: object) -> Target:
    now = utcnow()
    row = Target(id=uuid.uuid4(), name=name, name_key=name.lower(), host="10.0.0.1", port=22,
                 protocol="ssh", username="u", description="", status="unknown",
                 credential_version=0, created_at=now, updated_at=now)
    for key, value in extra.items():
        setattr(row, key, value)
    return row


class TestTargets:
    async def test_names_are_unique_in_the_database_too(self, db: ServiceDatabase) -> None:
        async with db.transaction() as session:
            await TargetRepository(session).add(target("Web1"))
        with pytest.raises(IntegrityError):
            async with db.transaction() as session:
                await TargetRepository(session).add(target("WEB1"))

    async def test_delete_cascades(self, db: ServiceDatabase) -> None:
        async with db.transaction() as session:
            repo = TargetRepository(session)
            row = target("web1")
            repo.set_tags(row, ["a", "b"])
            await repo.add(row)
            session.add(Credential(target_id=row.id, key_id="k", wrapped_key=b"w",
                                   ciphertext=b"c", updated_at=utcnow()))
            session.add(HealthCheck(target_id=row.id, checked_at=utcnow(), status="healthy",
                                    ok=True, stage="command", latency_ms=1.0, message="",
                                    source="health"))
        async with db.transaction() as session:
            loaded = await TargetRepository(session).get(row.id)
            assert loaded is not None and loaded.tags == ["a", "b"]
            await TargetRepository(session).delete(loaded)
        async with db.transaction() as session:
            for model in (TargetTag, Credential, HealthCheck):
                assert await session.scalar(select(func.count()).select_from(model)) == 0

    async def test_tag_filter_needs_every_tag(self, db: ServiceDatabase) -> None:
        async with db.transaction() as session:
            repo = TargetRepository(session)
            for name, tags in (("a1", ["web", "prod"]), ("b1", ["web"]), ("c1", [])):
                row = target(name)
                repo.set_tags(row, tags)
                await repo.add(row)
        async with db.transaction() as session:
            repo = TargetRepository(session)
            assert [t.name for t in (await repo.search(tags=["web"])).items] == ["a1", "b1"]
            assert [t.name for t in (await repo.search(tags=["web", "prod"])).items] == ["a1"]
            assert len(await repo.by_names(["A1", "c1", "zz"])) == 2


class TestHealthHistory:
    async def test_newest_first_and_pruned(self, db: ServiceDatabase) -> None:
        start = utcnow()
        async with db.transaction() as session:
            row = target("web1")
            await TargetRepository(session).add(row)
            for n in range(6):
                session.add(HealthCheck(target_id=row.id, checked_at=start + timedelta(seconds=n),
                                        status="healthy", ok=True, stage="command",
                                        latency_ms=float(n), message=str(n), source="health"))
        async with db.transaction() as session:
            repo = HealthRepository(session)
            page = await repo.history(row.id, limit=4)
            assert [h.message for h in page.items] == ["5", "4", "3", "2"]
            rest = await repo.history(row.id, limit=4, cursor=page.next_cursor)
            assert [h.message for h in rest.items] == ["1", "0"] and rest.next_cursor is None
            await repo.prune(row.id, keep=2)
        async with db.transaction() as session:
            page = await HealthRepository(session).history(row.id)
            assert [h.message for h in page.items] == ["5", "4"]
