"""Typed clients over `runtime.invoke`; one per service."""

from opsconductor_contracts.clients.auth import AuthClient
from opsconductor_contracts.clients.targets import TargetCredential, TargetsClient
from opsconductor_contracts.clients.users import UsersClient, VerifiedUser

__all__ = ["AuthClient", "TargetCredential", "TargetsClient", "UsersClient", "VerifiedUser"]
