"""Repository base: add/get/delete and keyset pages that neither skip nor repeat rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Select, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from opsconductor_core.problems import InvalidInput
from opsconductor_db import GUID, Repository, ServiceDatabase, UTCDateTime, utcnow
from opsconductor_db.repository import MAX_LIMIT, encode_cursor


class Base(DeclarativeBase):
    pass


class Widget(Base):
    __tablename__ = "widgets"

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(50))
    colour: Mapped[str] = mapped_column(String(20), default="red")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WidgetRepository(Repository[Widget]):
    model = Widget


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[ServiceDatabase]:
    database = ServiceDatabase(database_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield database
    await database.dispose()


async def _seed(db: ServiceDatabase, count: int) -> list[Widget]:
    """Rows in groups of three sharing one created_at, so ties are broken by id."""
    base = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [Widget(name=f"w{i:03}", colour="blue" if i % 2 else "red",
                   created_at=base + timedelta(seconds=i // 3)) for i in range(count)]
    async with db.transaction() as session:
        session.add_all(rows)
    return sorted(rows, key=lambda w: (w.created_at, w.id))


async def _walk(db: ServiceDatabase, limit: int,
                stmt: Select[Any] | None = None) -> tuple[list[uuid.UUID], int]:
    seen: list[uuid.UUID] = []
    cursor: str | None = None
    pages = 0
    while True:
        async with db.transaction() as session:
            page = await WidgetRepository(session).page(stmt, limit=limit, cursor=cursor)
        pages += 1
        assert len(page.items) <= limit
        seen.extend(w.id for w in page.items)
        if page.next_cursor is None:
            return seen, pages
        cursor = page.next_cursor
        assert pages < 1000, "pagination does not terminate"


class TestPage:
    async def test_walks_every_row_once_in_order(self, db: ServiceDatabase) -> None:
        expected = [w.id for w in await _seed(db, 23)]

        seen, pages = await _walk(db, limit=5)

        assert seen == expected
        assert len(set(seen)) == 23
        assert pages == 5

    async def test_exact_multiple_of_limit_ends_without_an_empty_page(
        self, db: ServiceDatabase
    ) -> None:
        await _seed(db, 10)

        seen, pages = await _walk(db, limit=5)

        assert len(seen) == 10
        assert pages == 2

    async def test_rows_added_between_pages_do_not_shift_the_walk(
        self, db: ServiceDatabase
    ) -> None:
        expected = [w.id for w in await _seed(db, 6)]
        async with db.transaction() as session:
            first = await WidgetRepository(session).page(limit=3)
        async with db.transaction() as session:
            # Older than everything already listed: keyset paging must neither repeat nor skip.
            session.add(Widget(name="late", created_at=datetime(2023, 1, 1, tzinfo=UTC)))
        async with db.transaction() as session:
            second = await WidgetRepository(session).page(limit=3, cursor=first.next_cursor)

        assert [w.id for w in first.items] + [w.id for w in second.items] == expected
        assert second.next_cursor is None

    async def test_filtered_statement_is_paged_too(self, db: ServiceDatabase) -> None:
        rows = await _seed(db, 20)
        blue = [w.id for w in rows if w.colour == "blue"]

        seen, _ = await _walk(db, limit=3, stmt=select(Widget).where(Widget.colour == "blue"))

        assert seen == blue

    async def test_empty_table_gives_an_empty_last_page(self, db: ServiceDatabase) -> None:
        async with db.transaction() as session:
            page = await WidgetRepository(session).page()

        assert list(page.items) == []
        assert page.next_cursor is None

    async def test_limit_is_clamped(self, db: ServiceDatabase) -> None:
        await _seed(db, 3)
        async with db.transaction() as session:
            at_least_one = await WidgetRepository(session).page(limit=0)
            huge = await WidgetRepository(session).page(limit=MAX_LIMIT * 10)

        assert len(at_least_one.items) == 1
        assert len(huge.items) == 3

    @pytest.mark.parametrize(
        "cursor", ["not-a-cursor", "e30", encode_cursor(utcnow(), uuid.uuid4())[:-3]])
    async def test_garbage_cursor_is_a_validation_error(
        self, db: ServiceDatabase, cursor: str
    ) -> None:
        async with db.transaction() as session:
            with pytest.raises(InvalidInput) as caught:
                await WidgetRepository(session).page(cursor=cursor)

        assert caught.value.errors == {"cursor": "not a cursor from this API"}


class TestCrud:
    async def test_add_get_delete(self, db: ServiceDatabase) -> None:
        async with db.transaction() as session:
            added = await WidgetRepository(session).add(Widget(name="one"))
        async with db.transaction() as session:
            repo = WidgetRepository(session)
            loaded = await repo.get(added.id)
            assert loaded is not None and loaded.name == "one"
            await repo.delete(loaded)
        async with db.transaction() as session:
            assert await WidgetRepository(session).get(added.id) is None
