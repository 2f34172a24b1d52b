"""Typed audit errors."""

from __future__ import annotations

from service.errors import BadRequest, NotFound, ServiceUnavailable


class AuditUnavailable(ServiceUnavailable):
    """The audit entry could not be made durable, so no data may be released."""

    title, slug = "Audit log unavailable", "audit-unavailable"


class AuditQueryInvalid(BadRequest):
    title, slug = "Invalid audit query", "audit-query-invalid"


class LeafNotFound(NotFound):
    title, slug = "No such leaf", "audit-leaf-not-found"


class TileNotFound(NotFound):
    title, slug = "No such tile", "audit-tile-not-found"


class NoCheckpoint(NotFound):
    title, slug = "No checkpoint yet", "audit-no-checkpoint"


class SigningKeyMissing(RuntimeError):
    """Production refuses to generate the checkpoint signing key."""
