"""Dapr component names; each matches one file under components/ (or its Redis/RabbitMQ twin)."""

# components/pubsub-*/pubsub.yaml — the one pub/sub component, RabbitMQ or Redis Streams.
PUBSUB = "pubsub"
# components/pubsub-*/pubsub-publisher.yaml — where the Dapr runtime sends what apps publish on
# PUBSUB (opsconductor_runtime.dapr.runtime.PUBLISHING_COMPONENT_SUFFIX); apps name only PUBSUB.
PUBSUB_PUBLISHER = "pubsub-publisher"
# components/statestore.yaml — token deny-list, rate-limit counters, leases.
STATE_STORE = "statestore"
# components/secretstore.yaml — JWT signing key, credential master key.
SECRET_STORE = "secretstore"
# components/housekeeping.yaml — cron input binding: purge expired tokens and counters.
HOUSEKEEPING_BINDING = "housekeeping"
# components/targets-health.yaml — cron input binding: the targets service's health sweep and
# credential master-key re-wrap (POST /targets-health).
TARGETS_HEALTH_BINDING = "targets-health"

# Secret names inside SECRET_STORE.
JWT_SIGNING_KEY_SECRET = "jwt-signing-key"
# A keyring (JSON: {"active": id, "keys": {id: base64 of 32 bytes}}); a bare base64 key is
# read as a keyring of one key. See apps/targets/opsconductor_targets/keyring.py.
CREDENTIAL_MASTER_KEY_SECRET = "credential-master-key"

# State key prefixes inside STATE_STORE (the store is shared: keyPrefix none).
REVOKED_JTI_PREFIX = "revoked-jti:"
RATE_LIMIT_PREFIX = "ratelimit:"
# One replica at a time runs the targets health sweep (a lease with a TTL).
TARGETS_HEALTH_LEASE_KEY = "lease:targets-health"

# Key that encrypts secret parameter values while an execution needs them (executor only).
EXECUTION_SECRETS_KEY_SECRET = "execution-secrets-key"
