"""Alembic environment of the executor service."""

from opsconductor_db.migrations import run_env
from opsconductor_executor.models import Base

run_env(Base.metadata)
