"""Shared ground for every OpsConductor service."""

__version__ = "0.1.0"
