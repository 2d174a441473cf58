"""The jobs service: job definitions, their versions, the dangerous-command policy, and runs."""
