"""Errors the gateway itself answers with (rendered as problem+json by core's handlers)."""

from opsconductor_core.problems import DomainError


class PathRejected(DomainError):
    status, title, slug = 400, "Bad request", "bad-path"


class UpstreamTimeout(DomainError):
    status, title, slug = 504, "Gateway timeout", "upstream-timeout"


class UpstreamFailed(DomainError):
    status, title, slug = 502, "Bad gateway", "upstream-failed"
