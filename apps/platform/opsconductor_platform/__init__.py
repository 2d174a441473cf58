"""Composition root: every app in one process, and the opsconductor CLI."""
