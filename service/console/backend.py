"""The console's backend over the domain services (wired when auth, policy and audit land)."""

from __future__ import annotations

from service.errors import ServiceUnavailable


class DomainBackend:
    """Placeholder until the domain services are merged: every call is refused."""

    def __getattr__(self, name: str) -> object:
        raise ServiceUnavailable("The console's domain services are not available yet.")
