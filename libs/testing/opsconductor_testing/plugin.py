"""Pytest plugin loaded for the whole suite (see pyproject addopts)."""
