"""The audit entry, and the shapes the audit API returns."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Accesses to a citizen's record: what the citizen's own access log shows.
RecordAction = Literal[
    "read",
    "lookup",
    "verify",
    "history",
    "write",
    "register",
    "erase",
    "batch-get",
    "subscribe",
    "deliver",
]
Action = Literal[
    RecordAction,
    "feed",
    "policy-change",
    "catalog-change",
    "key-operation",
    "client-create",
    "client-disable",
    "signing-key-rotate",
    "audit-query",
    "access-log",
]
Decision = Literal["permit", "deny", "partial", "error"]
ACTIONS: tuple[str, ...] = Action.__args__  # type: ignore[attr-defined]
RECORD_ACTIONS: tuple[str, ...] = RecordAction.__args__  # type: ignore[attr-defined]
# Audit actions that release fields (or, for a delegated ``write``, let another department
# change them), and the policy action each was decided as. Other actions decide nothing
# per field: a registration or an erasure is the owner's (or the register's) own act.
DECIDED_AS: Mapping[str, str] = {
    "read": "read",
    "batch-get": "read",
    "lookup": "lookup",
    "verify": "verify",
    "history": "history",
    "write": "write",
    "subscribe": "subscribe",
    "deliver": "subscribe",
    "feed": "subscribe",
}
DECISIONS: tuple[str, ...] = Decision.__args__  # type: ignore[attr-defined]


class Reason(BaseModel):
    """Why one field was permitted or withheld: the agreement and version that decided."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    effect: str
    agreement: str | None = None
    version: int | None = None
    # SHA-256 (hex) of the cited agreement version's canonical JSON, signature included.
    digest: str | None = None
    reason: str = ""


class AuditEntry(BaseModel):
    """One accounted-for access. Never a field value or a national id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: str
    request_id: str
    client_id: str
    department: str
    on_behalf_of: str | None = None
    action: Action
    citizen_id: str | None = None
    # Departments whose fields were touched: a data owner sees the entries naming it.
    owners: list[str] = Field(default_factory=list)
    fields_requested: list[str] = Field(default_factory=list)
    fields_released: list[str] = Field(default_factory=list)
    decision: Decision
    reasons: list[Reason] = Field(default_factory=list)
    purpose: str | None = None
    case_ref: str | None = None
    # The citizen's status when decided: with the time, purpose, case reference, consumer,
    # action and fields, every input a decision used, so an owner can re-decide it offline.
    citizen_status: str | None = None
    legal_basis: list[str] = Field(default_factory=list)
    status: int
    source: str | None = None
    # A policy-change entry: the new version's canonical JSON (owner and signature
    # included); a catalog-change entry: the new catalog's. So the log alone holds every
    # agreement that ever decided.
    document: str | None = None

    @field_validator("time")
    @classmethod
    def _time_is_iso_8601(cls, value: str) -> str:
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("time must be an ISO 8601 timestamp") from None
        return value

    def to_record(self) -> dict[str, Any]:
        """Only str, int, bool, None, lists and dicts, so the canonical bytes are defined."""
        # Python mode is enough (every field is already a JSON type) and much faster.
        return self.model_dump()

    def canonical(self) -> str:
        return canonical_json(self.to_record())


# One encoder, built once: ``json.dumps`` with these options builds a new one per call.
# Same output as json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(record: dict[str, Any]) -> str:
    """The bytes a leaf hashes (as UTF-8), fixed by the audit-proof contract."""
    return _CANONICAL.encode(record)
