"""What the pages show, in the console's own words, made from what the services return.

No rule lives here: the pages call ``service.policy.agreements`` and
``service.audit.search``, the functions the API endpoints call, and turn their answers
into these shapes for the templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from service.policy.models import AgreementVersion
from service.policy.simulate import SimulationResult

# The roles a person may sign in to the console with; every other role is refused.
CONSOLE_ROLES = ("data-owner", "auditor", "citizen-portal")


@dataclass(frozen=True)
class AgreementRecord:
    """One stored agreement version, as the pages show it."""

    id: str
    owner: str
    content: dict[str, Any]
    version: int
    status: str
    author: str
    reason: str
    created_at: datetime

    @property
    def consumer(self) -> str:
        return str(self.content.get("consumer", ""))

    @property
    def fields(self) -> list[str]:
        return list(self.content.get("fields", []))

    @property
    def actions(self) -> list[str]:
        return list(self.content.get("actions", []))

    @property
    def purposes(self) -> list[str]:
        return list(self.content.get("purposes", []))

    @property
    def effect(self) -> str:
        return str(self.content.get("effect", "permit"))

    @property
    def valid_from(self) -> date | None:
        value = self.content.get("valid_from")
        return date.fromisoformat(value) if value else None

    @property
    def valid_until(self) -> date | None:
        value = self.content.get("valid_until")
        return date.fromisoformat(value) if value else None

    def expired(self, today: date) -> bool:
        return self.valid_until is not None and self.valid_until < today

    def not_yet(self, today: date) -> bool:
        return self.valid_from is not None and self.valid_from > today

    @classmethod
    def of(cls, row: AgreementVersion) -> AgreementRecord:
        return cls(
            id=row.agreement_id,
            owner=row.owner,
            content=dict(row.content),
            version=row.version,
            status=row.status,
            author=row.author,
            reason=row.reason,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class DraftCheck:
    """A checked draft: the stored form of the agreement, or the problems by form field.

    ``signing_text`` is, for an owner with a signing key, the exact text its signature
    must cover, once the draft has no problem but its signature (``None`` otherwise).
    """

    content: dict[str, Any] | None
    errors: list[tuple[str, str]] = field(default_factory=list)
    signing_text: str | None = None


@dataclass(frozen=True)
class SimulatedChange:
    consumer: str
    field: str
    action: str
    purpose: str
    before: str
    after: str
    count: int


@dataclass(frozen=True)
class Simulation:
    evaluated: int
    changed: int
    changes: list[SimulatedChange]
    # Set when only the requests since then were replayed: the whole log held more than
    # ``limit``, the most one simulation replays.
    since: datetime | None = None
    limit: int | None = None

    @classmethod
    def of(
        cls, result: SimulationResult, *, since: datetime | None = None, limit: int | None = None
    ) -> Simulation:
        changes = [
            SimulatedChange(consumer, field, action, purpose, before, after, count)
            for (consumer, field, action, purpose, before, after), count in sorted(result.changes.items())
        ]
        return cls(result.evaluated, result.changed, changes, since, limit)


@dataclass(frozen=True)
class AuditRow:
    id: int
    leaf_index: int | None
    time: datetime
    client_id: str
    department: str
    action: str
    citizen_id: str | None
    fields_requested: list[str]
    fields_released: list[str]
    decision: str
    purpose: str | None
    status: int
    # The registered client's name, when it has one (operators and the service have none).
    client_name: str | None = None

    @classmethod
    def of(cls, item: dict[str, Any], client_names: dict[str, str] | None = None) -> AuditRow:
        """From a search item, ``{id, leaf_index, entry}`` (for a data owner already
        narrowed to its own fields by ``service.audit.search``)."""
        entry: dict[str, Any] = item["entry"]

        return cls(
            id=item["id"],
            leaf_index=item["leaf_index"],
            time=datetime.fromisoformat(entry["time"]),
            client_id=entry["client_id"],
            department=entry["department"],
            action=entry["action"],
            citizen_id=entry.get("citizen_id"),
            fields_requested=list(entry.get("fields_requested") or []),
            fields_released=list(entry.get("fields_released") or []),
            decision=entry["decision"],
            purpose=entry.get("purpose"),
            status=int(entry.get("status", 0)),
            client_name=(client_names or {}).get(entry["client_id"]),
        )


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditRow]
    next_cursor: int | None


@dataclass(frozen=True)
class CheckpointView:
    size: int
    root: str
    time: datetime


@dataclass(frozen=True)
class VerifyOutcome:
    ok: bool
    size: int
    message: str
    # Which key verified which checkpoints, as `tellonce audit verify` prints it after its verdict.
    key_lines: tuple[str, ...] = ()
    # Switches of checkpoint key the log does not record (the CLI's warnings).
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class UsageRow:
    consumer: str
    owner: str | None
    field: str
    purpose: str | None
    period: str
    count: int

    @classmethod
    def of(cls, count: dict[str, Any]) -> UsageRow:
        return cls(
            count["consumer"],
            count["owner"],
            count["field"],
            count["purpose"],
            count["period"],
            int(count["count"]),
        )


@dataclass(frozen=True)
class AccessRow:
    time: datetime
    department: str
    action: str
    fields: list[str]
    purpose: str | None
    decision: str
    # An access kept from the citizen under delayed disclosure: when and why it was shown.
    disclosed_at: datetime | None = None
    disclosed_by: str | None = None

    @classmethod
    def of(cls, item: dict[str, Any]) -> AccessRow:
        """From an access-log item."""
        disclosed_at = item.get("disclosed_at")
        return cls(
            time=datetime.fromisoformat(item["time"]),
            department=item["department"],
            action=item["action"],
            fields=list(item["fields"] or []),
            purpose=item["purpose"],
            decision=item["decision"],
            disclosed_at=datetime.fromisoformat(disclosed_at) if disclosed_at else None,
            disclosed_by=item.get("disclosed_by"),
        )


@dataclass(frozen=True)
class AccessProof:
    """How the citizen view's lines were proven against the audit log, checked server-side
    with the code an outside verifier uses (``service.audit.citizen_proofs.check_proofs``)."""

    verified: int  # lines whose inclusion proof verified
    pending: int  # lines newer than the checkpoint: proven once a later one is witnessed
    tree_size: int | None  # the checkpoint's size; None while there is none to prove against
    witnesses: tuple[str, ...]  # who cosigned it; empty when no witnesses are configured
    problem: str | None = None  # why a proof or a signature did not verify
