"""The audit entry, and the shapes the audit API returns."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

import orjson
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
    "feed",
]
Action = Literal[
    RecordAction,
    "policy-change",
    "catalog-change",
    "key-operation",
    "client-create",
    "client-disable",
    "signing-key-rotate",
    "audit-query",
    "access-log",
    "case-close",
    "consent-change",
    "objection-change",
    "consent-list",
    "objection-list",
    "explain",
    "subscription-change",
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

_Model = TypeVar("_Model", bound=BaseModel)
_set = object.__setattr__


def _unvalidated(model: type[_Model], values: dict[str, Any]) -> _Model:
    """``model.model_construct(**values)`` for ``values`` naming every field of ``model``:
    the same instance, without pydantic's per-field alias and default lookups (which cost
    more than the entry's own values). For values the code has just built from typed
    arguments; anything from outside goes through validation."""
    instance = model.__new__(model)
    _set(instance, "__dict__", values)
    _set(instance, "__pydantic_fields_set__", set(values))
    _set(instance, "__pydantic_extra__", None)
    _set(instance, "__pydantic_private__", None)
    return instance


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
    # A refusal under a case held from the citizen without citing a delayed-disclosure
    # agreement (the field's owner gave the consumer none, and another owner's must not be
    # named): the longest it is held, as an ISO 8601 duration (``P30D``), as a cited
    # agreement's ``max_delay`` would hold it (``service.cases.rules``).
    held_for: str | None = None

    @classmethod
    def built(
        cls,
        *,
        field: str,
        effect: str,
        agreement: str | None = None,
        version: int | None = None,
        digest: str | None = None,
        reason: str = "",
        held_for: str | None = None,
    ) -> Reason:
        """A reason from typed values, not validated again (see ``AuditEntry.built``)."""
        return _unvalidated(
            cls,
            {
                "field": field,
                "effect": effect,
                "agreement": agreement,
                "version": version,
                "digest": digest,
                "reason": reason,
                "held_for": held_for,
            },
        )


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

    @classmethod
    def built(
        cls,
        *,
        time: datetime,
        request_id: str,
        client_id: str,
        department: str,
        action: Action,
        decision: Decision,
        status: int,
        on_behalf_of: str | None = None,
        citizen_id: str | None = None,
        owners: Iterable[str] = (),
        fields_requested: Iterable[str] = (),
        fields_released: Iterable[str] = (),
        reasons: Iterable[Reason] = (),
        purpose: str | None = None,
        case_ref: str | None = None,
        citizen_status: str | None = None,
        legal_basis: Iterable[str] = (),
        source: str | None = None,
        document: str | None = None,
    ) -> AuditEntry:
        """An entry the service builds itself (``service.audit.entries``), not validated
        again: the arguments are typed, ``time`` is a datetime (so its ISO text is valid)
        and every list is copied. Equal to ``AuditEntry.model_validate`` of the same values,
        at a fraction of the cost (tests/audit/test_entries.py holds the two alike)."""
        return _unvalidated(
            cls,
            {
                "time": time.isoformat(),
                "request_id": request_id,
                "client_id": client_id,
                "department": department,
                "on_behalf_of": on_behalf_of,
                "action": action,
                "citizen_id": citizen_id,
                "owners": list(owners),
                "fields_requested": list(fields_requested),
                "fields_released": list(fields_released),
                "decision": decision,
                "reasons": list(reasons),
                "purpose": purpose,
                "case_ref": case_ref,
                "citizen_status": citizen_status,
                "legal_basis": list(legal_basis),
                "status": status,
                "source": source,
                "document": document,
            },
        )

    def to_record(self) -> dict[str, Any]:
        """``model_dump()``: only str, int, None, lists and dicts, so the canonical bytes are
        defined. Read from the fields themselves (each already a JSON type, and extra fields
        are forbidden), which is several times faster than pydantic's serializer; the lists
        are copies, so the record may be changed without changing the entry.
        tests/audit/test_entries.py holds it to ``model_dump()``."""
        record = dict(self.__dict__)
        for name in _LIST_FIELDS:
            record[name] = list(record[name])
        record["reasons"] = [dict(reason.__dict__) for reason in self.reasons]
        return record

    def stored_record(self) -> dict[str, Any]:
        """``to_record()`` without its copies, for reading only: a new top-level dict, but
        its lists and the reasons' dicts are the entry's own. What the writer encodes
        (``entry_values``), which changes nothing in it."""
        record = dict(self.__dict__)
        record["reasons"] = [reason.__dict__ for reason in self.reasons]
        return record

    def canonical(self) -> str:
        """The contract's bytes (``canonical_json``), which the writer's faster
        ``entry_canonical`` must equal."""
        return canonical_json(self.to_record())


_LIST_FIELDS = ("owners", "fields_requested", "fields_released", "legal_basis")

# One encoder, built once: ``json.dumps`` with these options builds a new one per call.
# Same output as json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(record: dict[str, Any]) -> str:
    """The bytes a leaf hashes (as UTF-8), fixed by the audit-proof contract."""
    return _CANONICAL.encode(record)


def entry_canonical(record: dict[str, Any]) -> str:
    """``canonical_json`` of an entry's record, several times faster.

    An entry's record holds no float (no field of ``AuditEntry`` is one, and validation
    turns a whole float into an int), and for such a value orjson with sorted keys writes
    what ``canonical_json`` does: no whitespace, UTF-8 unescaped, the same escapes
    (``tests/audit/test_entries.py`` holds the two alike over generated entries). What
    orjson refuses (an integer beyond 64 bits, a lone surrogate) is left to the contract's
    encoder, so a value either gets the contract's bytes or the contract's error.
    """
    try:
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONEncodeError:
        return canonical_json(record)
