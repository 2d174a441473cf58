"""Topic names: one topic per fact. Consumers subscribe to these constants only."""

USER_CREATED = "user.created"
USER_UPDATED = "user.updated"
USER_DELETED = "user.deleted"
ROLE_CHANGED = "role.changed"
USER_ACTIVE = "user.active"
LOGIN_SUCCEEDED = "auth.login_succeeded"
LOGIN_FAILED = "auth.login_failed"
API_TOKEN_CREATED = "auth.api_token_created"
API_TOKEN_REVOKED = "auth.api_token_revoked"
SESSION_REVOKED = "auth.session_revoked"

# Where an event goes after its subscriber failed every retry.
DEAD_LETTER = "deadletter"
