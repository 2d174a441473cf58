"""Pytest plugin loaded for the whole suite (see pyproject addopts)."""

from opsconductor_testing.databases import database_url, postgres_databases
from opsconductor_testing.sshd import sshd, sshd_factory
from opsconductor_testing.winrm_peer import winrm_peer

__all__ = ["database_url", "postgres_databases", "sshd", "sshd_factory", "winrm_peer"]
