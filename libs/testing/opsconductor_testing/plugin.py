"""Pytest plugin loaded for the whole suite (see pyproject addopts)."""

from opsconductor_testing.databases import database_url, postgres_databases

__all__ = ["database_url", "postgres_databases"]
