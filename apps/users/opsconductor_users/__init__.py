"""OpsConductor users service."""
