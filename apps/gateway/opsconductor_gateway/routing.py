"""Which service answers a public path, and which raw paths are refused outright."""

from __future__ import annotations

from urllib.parse import quote

from starlette.types import Scope

API_PREFIX = "/api/v1"

# First segment after /api/v1 -> app-id (API.md). Nothing else is routed.
SEGMENT_TO_APP: dict[str, str] = {
    "auth": "auth",
    "users": "users",
    "roles": "users",
    "targets": "targets",
    "jobs": "jobs",
    "executions": "executor",
    "schedules": "scheduler",
    "audit": "audit",
}

# Reachable without a bearer token: (method, path after /api/v1/).
PUBLIC_ROUTES = frozenset({
    ("POST", "auth/login"),
    ("POST", "auth/refresh"),
    ("GET", "auth/jwks"),
})

# Tricks that could turn a public path into another one (dot segments, encoded separators,
# double encoding). Matched against the raw path, lower-cased, before any decoding.
_FORBIDDEN_RAW = ("..", "//", "\\", "%2f", "%5c", "%2e", "%25", "%00")


def raw_path_of(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if raw is None:
        return quote(scope["path"], safe="/:@!$&'()*+,;=-._~")
    return raw.decode("latin-1")


def is_suspicious(raw_path: str) -> bool:
    lowered = raw_path.lower()
    return any(marker in lowered for marker in _FORBIDDEN_RAW)


def first_segment(path: str) -> str:
    return path.split("/", 1)[0]


def upstream_path(raw_path: str) -> str:
    """The path the service serves: the raw (still percent-encoded) path minus /api/v1."""
    return raw_path[len(API_PREFIX):] if raw_path.startswith(API_PREFIX + "/") else "/"
