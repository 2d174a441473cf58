"""The targets service: inventory, encrypted credentials, host keys, connection tests, health."""
