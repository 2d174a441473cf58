"""Cross-service contract: names, envelopes, payloads and typed clients."""
