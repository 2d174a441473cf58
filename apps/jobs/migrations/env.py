"""Alembic environment of the jobs service."""

from opsconductor_db.migrations import run_env
from opsconductor_jobs.models import Base

run_env(Base.metadata)
