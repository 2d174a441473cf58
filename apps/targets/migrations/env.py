"""Alembic environment of the targets service."""

from opsconductor_db.migrations import run_env
from opsconductor_targets.models import Base

run_env(Base.metadata)
