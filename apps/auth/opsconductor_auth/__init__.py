"""OpsConductor auth service."""
