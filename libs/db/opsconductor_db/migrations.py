"""Alembic per service: each service's `migrations/env.py` calls `run_env(metadata)`;
the platform calls `upgrade(url, migrations_dir)` before serving."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from opsconductor_db.database import create_engine, is_sqlite


def alembic_config(url: str, migrations_dir: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, migrations_dir: Path, revision: str = "head") -> None:
    """Blocking; call from a thread when inside an event loop."""
    command.upgrade(alembic_config(url, migrations_dir), revision)


async def upgrade_async(url: str, migrations_dir: Path) -> None:
    await asyncio.to_thread(upgrade, url, migrations_dir)


def _configure_and_run(connection: Connection, metadata: MetaData, url: str) -> None:
    # Batch mode lets ALTERs work on SQLite, which cannot alter most columns in place.
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=is_sqlite(url), compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def _migration_engine(url: str) -> AsyncEngine:
    engine = create_engine(url)
    if is_sqlite(url):
        # The sqlite driver opens a transaction only before DML, so a failing revision would
        # leave its DDL behind; issuing BEGIN ourselves makes each upgrade all-or-nothing.
        @event.listens_for(engine.sync_engine, "connect")
        def _no_driver_transactions(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

    return engine


async def _run_online(url: str, metadata: MetaData) -> None:
    engine = _migration_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure_and_run, metadata, url)
            await connection.commit()
    finally:
        await engine.dispose()


def run_env(metadata: MetaData) -> None:
    """Body of every service's `migrations/env.py`."""
    url: Any = context.config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(str(url), metadata))
