"""UTCDateTime gives back aware UTC datetimes on both engines; GUID round-trips UUIDs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import String, select
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from opsconductor_db import GUID, ServiceDatabase, UTCDateTime, utcnow


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "events"

    id: Mapped[uuid.UUID] = mapped_column(GUID, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(50))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[ServiceDatabase]:
    database = ServiceDatabase(database_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield database
    await database.dispose()


async def _store_and_reload(db: ServiceDatabase, value: datetime) -> Event:
    async with db.transaction() as session:
        row = Event(name="e", at=value)
        session.add(row)
    # A fresh session, so the value comes from the database and not from the identity map.
    async with db.transaction() as session:
        return (await session.scalars(select(Event).where(Event.id == row.id))).one()


class TestUTCDateTime:
    async def test_utc_value_comes_back_aware_and_equal(self, db: ServiceDatabase) -> None:
        stored = datetime(2024, 3, 31, 1, 30, 15, 123456, tzinfo=UTC)

        loaded = await _store_and_reload(db, stored)

        assert loaded.at == stored
        assert loaded.at.utcoffset() == timedelta(0)
        assert loaded.at.microsecond == 123456

    async def test_other_offset_is_stored_as_the_same_instant_in_utc(
        self, db: ServiceDatabase
    ) -> None:
        kolkata = timezone(timedelta(hours=5, minutes=30))
        stored = datetime(2024, 1, 1, 5, 30, tzinfo=kolkata)

        loaded = await _store_and_reload(db, stored)

        assert loaded.at == stored
        assert loaded.at.tzinfo is not None and loaded.at.utcoffset() == timedelta(0)
        assert (loaded.at.hour, loaded.at.minute) == (0, 0)

    async def test_null_stays_null(self, db: ServiceDatabase) -> None:
        loaded = await _store_and_reload(db, utcnow())

        assert loaded.ended_at is None

    async def test_naive_datetime_is_refused(self, db: ServiceDatabase) -> None:
        with pytest.raises(StatementError, match="naive datetime"):
            async with db.transaction() as session:
                session.add(Event(name="naive", at=datetime(2024, 1, 1, 12, 0)))
        async with db.transaction() as session:
            assert (await session.scalars(select(Event))).all() == []

    async def test_comparisons_in_sql_use_the_instant(self, db: ServiceDatabase) -> None:
        base = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
        async with db.transaction() as session:
            session.add_all([Event(name=f"e{i}", at=base + timedelta(minutes=i)) for i in range(5)])
        cutoff = (base + timedelta(minutes=2)).astimezone(timezone(timedelta(hours=-7)))

        async with db.transaction() as session:
            names = (await session.scalars(
                select(Event.name).where(Event.at > cutoff).order_by(Event.at))).all()

        assert names == ["e3", "e4"]


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()

    assert now.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - now).total_seconds()) < 5
