"""migrations.upgrade runs a service's Alembic scripts on SQLite and PostgreSQL, idempotently."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from opsconductor_db import ServiceDatabase
from opsconductor_db.migrations import upgrade, upgrade_async

ENV_PY = '''
from sqlalchemy import MetaData

from opsconductor_db.migrations import run_env

run_env(MetaData())
'''

FIRST = '''
import sqlalchemy as sa
from alembic import op

from opsconductor_db.types import GUID, UTCDateTime

revision = "0001"
down_revision = None


def upgrade():
    op.create_table(
        "gadgets",
        sa.Column("id", GUID, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )


def downgrade():
    op.drop_table("gadgets")
'''

SECOND = '''
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade():
    # An ALTER that SQLite can only do in batch mode (run_env turns it on for SQLite).
    with op.batch_alter_table("gadgets") as batch:
        batch.add_column(sa.Column("colour", sa.String(20), nullable=False, server_default="red"))
        batch.alter_column("name", type_=sa.String(80), existing_nullable=False)


def downgrade():
    with op.batch_alter_table("gadgets") as batch:
        batch.drop_column("colour")
'''

BROKEN = '''
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("gadgets", sa.Column("id", sa.Integer, primary_key=True))
    # Fails after the CREATE TABLE, which must be rolled back together with it.
    op.execute("SELECT no_such_function()")


def downgrade():
    op.drop_table("gadgets")
'''


def _migrations(tmp_path: Path, *revisions: tuple[str, str]) -> Path:
    root = tmp_path / "migrations"
    (root / "versions").mkdir(parents=True, exist_ok=True)
    (root / "env.py").write_text(ENV_PY)
    for name, body in revisions:
        (root / "versions" / f"{name}.py").write_text(body)
    return root


async def _state(url: str) -> tuple[str | None, dict[str, str]]:
    db = ServiceDatabase(url)
    try:
        async with db.engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            columns = await conn.run_sync(lambda sync: {
                c["name"]: str(c["type"]) for c in inspect(sync).get_columns("gadgets")})
        return version, columns
    finally:
        await db.dispose()


class TestUpgrade:
    async def test_first_revision_creates_the_tables(
        self, database_url: str, tmp_path: Path
    ) -> None:
        migrations = _migrations(tmp_path, ("0001_initial", FIRST))

        await upgrade_async(database_url, migrations)

        version, columns = await _state(database_url)
        assert version == "0001"
        assert set(columns) == {"id", "name", "created_at"}

    async def test_later_revision_alters_in_place_and_reruns_are_noops(
        self, database_url: str, tmp_path: Path
    ) -> None:
        migrations = _migrations(tmp_path, ("0001_initial", FIRST))
        await upgrade_async(database_url, migrations)
        db = ServiceDatabase(database_url)
        async with db.transaction() as session:
            await session.execute(text(
                "INSERT INTO gadgets (id, name, created_at) "
                "VALUES ('7d444840-9dc0-11d1-b245-5ffdce74fad2', 'kept', CURRENT_TIMESTAMP)"))
        await db.dispose()

        _migrations(tmp_path, ("0002_colour", SECOND))
        await upgrade_async(database_url, migrations)
        await upgrade_async(database_url, migrations)

        version, columns = await _state(database_url)
        assert version == "0002"
        assert "colour" in columns
        db = ServiceDatabase(database_url)
        async with db.transaction() as session:
            rows = (await session.execute(text("SELECT name, colour FROM gadgets"))).all()
        await db.dispose()
        assert [tuple(r) for r in rows] == [("kept", "red")]

    def test_blocking_upgrade_works_outside_an_event_loop(
        self, database_url: str, tmp_path: Path
    ) -> None:
        migrations = _migrations(tmp_path, ("0001_initial", FIRST))

        upgrade(database_url, migrations)

        import asyncio

        version, _ = asyncio.run(_state(database_url))
        assert version == "0001"

    async def test_broken_revision_fails_loudly_and_leaves_nothing_half_done(
        self, database_url: str, tmp_path: Path
    ) -> None:
        migrations = _migrations(tmp_path, ("0001_initial", BROKEN))

        with pytest.raises(Exception, match="no_such_function"):
            await upgrade_async(database_url, migrations)

        db = ServiceDatabase(database_url)
        async with db.engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        await db.dispose()
        assert "gadgets" not in tables
