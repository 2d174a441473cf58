"""Administration straight against a service's database, for when the API is not running."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from opsconductor_contracts.publisher import EventPublisher
from opsconductor_db import ServiceDatabase
from opsconductor_db.migrations import upgrade_async
from opsconductor_platform.hosting import HOSTED_APPS, prepare_data_dir


async def create_user_offline(data_dir: Path, username: str, password: str, roles: Sequence[str],
                              email: str | None) -> str:
    """The user.created event waits in the users outbox until the platform next runs."""
    prepare_data_dir(data_dir)
    users = next(a for a in HOSTED_APPS if a.app_id == "users")
    service = users.module("service")
    models = users.module("models")
    url = users.database_url()
    await upgrade_async(url, users.migrations_dir)
    db = ServiceDatabase(url)
    try:
        user = await service.create_user_direct(
            db, EventPublisher(users.app_id, models.outbox), username=username, password=password,
            roles=list(roles), email=email)
    finally:
        await db.dispose()
    return str(user.id)
