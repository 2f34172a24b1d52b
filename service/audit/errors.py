"""Typed audit errors."""

from __future__ import annotations

from service.errors import BadRequest, NotFound, ServiceError, ServiceUnavailable


class AuditUnavailable(ServiceUnavailable):
    """The audit entry could not be made durable, so no data may be released."""

    title, slug = "Audit log unavailable", "audit-unavailable"


class AuditQueryInvalid(BadRequest):
    title, slug = "Invalid audit query", "audit-query-invalid"


class LeafNotFound(NotFound):
    title, slug = "No such leaf", "audit-leaf-not-found"


class TileNotFound(NotFound):
    """A tile or entry bundle the tree is too small for. It will be there once the tree
    grows, so no cache may keep the 404 (``Cache-Control: no-store``)."""

    title, slug = "No such tile", "audit-tile-not-found"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Cache-Control": "no-store"})


class EntryBundleUnrepresentable(ServiceError):
    """An entry bundle holding an entry longer than its uint16 length prefix can say.

    501, not 404: the bundle's leaves are in the tree, and a mirror that reads 404 as "not
    yet" would wait for it forever; and not a 4xx, since the request was right. The server
    cannot produce the one format this resource has, and never will for these immutable
    leaves: the entries stay readable, with their proofs, from ``/v1/audit/entries/{index}/proof``."""

    status, title, slug = 501, "Entry bundle cannot be served", "audit-entry-bundle-unrepresentable"


class NoCheckpoint(NotFound):
    """No checkpoint signed (or at the witness quorum) yet. One is moments away, so no
    cache may keep the 404 (``Cache-Control: no-store``)."""

    title, slug = "No checkpoint yet", "audit-no-checkpoint"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Cache-Control": "no-store"})


class SigningKeyMissing(RuntimeError):
    """Production refuses to generate the checkpoint signing key."""
