"""Alembic environment of the users service."""

from opsconductor_db.migrations import run_env
from opsconductor_users.models import Base

run_env(Base.metadata)
