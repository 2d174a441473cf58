"""OpsConductor gateway service."""
