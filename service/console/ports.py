"""What the console needs from the other domains, in the console's own words.

Pages talk to a ``ConsoleBackend``; ``service/console/backend.py`` implements it over the
policy domain's ``agreements`` functions and the audit domain's ``search`` functions,
the ones the API endpoints call (never HTTP). Tests may put another implementation on
``app.state.console_backend``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal, Protocol

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.search import EntryQuery
from service.auth.dependencies import Principal
from service.catalog.schemas import Catalog

# The roles a person may sign in to the console with; every other role is refused.
CONSOLE_ROLES = ("data-owner", "auditor", "citizen-portal")


class SignInRefused(Exception):
    """The credentials do not sign anyone in; ``message`` is safe to show."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


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


@dataclass(frozen=True)
class DraftCheck:
    """A checked draft: the stored form of the agreement, or the problems by form field."""

    content: dict[str, Any] | None
    errors: list[tuple[str, str]] = field(default_factory=list)


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


@dataclass(frozen=True)
class UsageRow:
    consumer: str
    owner: str | None
    field: str
    purpose: str | None
    period: str
    count: int


@dataclass(frozen=True)
class AccessRow:
    time: datetime
    department: str
    action: str
    fields: list[str]
    purpose: str | None
    decision: str


@dataclass(frozen=True)
class AccessProof:
    """How the citizen view's lines were proven against the audit log, checked server-side
    with the same code an outside verifier uses (``service.audit.citizen_proofs``)."""

    verified: int  # lines whose inclusion proof verified
    pending: int  # lines newer than the checkpoint, proven once the next one is witnessed
    tree_size: int | None  # the checkpoint's size; None if there is none to prove against yet
    witnesses: tuple[str, ...]  # who cosigned it; empty when no witnesses are configured
    problem: str | None = None  # set when a proof or a cosignature did not verify


@dataclass(frozen=True)
class AccessLog:
    rows: list[AccessRow]
    proof: AccessProof


class ConsoleBackend(Protocol):
    """The domain operations behind the pages. ``viewer`` is the signed-in client."""

    async def check_credentials(self, session: AsyncSession, client_id: str, client_secret: str) -> Principal:
        """The principal of a client whose secret matches; ``SignInRefused`` otherwise."""
        ...

    async def client_active(self, session: AsyncSession, client_id: str) -> bool:
        """Still registered and not disabled: checked on every page, so disabling bites at once."""
        ...

    async def catalog(self, session: AsyncSession) -> Catalog: ...

    # agreements
    async def agreements(self, session: AsyncSession, viewer: Principal) -> list[AgreementRecord]: ...
    async def versions(
        self, session: AsyncSession, viewer: Principal, agreement_id: str
    ) -> list[AgreementRecord]: ...
    async def check_draft(
        self, session: AsyncSession, viewer: Principal, draft: dict[str, Any], *, creating: bool
    ) -> DraftCheck:
        """Validate as the policy loader does; ``creating`` also refuses an id already taken."""
        ...

    async def simulate(
        self, request: Request, session: AsyncSession, viewer: Principal, content: dict[str, Any]
    ) -> Simulation: ...
    async def save(
        self,
        session: AsyncSession,
        viewer: Principal,
        content: dict[str, Any],
        *,
        expected_version: int | None,
        reason: str,
    ) -> AgreementRecord: ...
    async def revoke(
        self,
        session: AsyncSession,
        viewer: Principal,
        agreement_id: str,
        *,
        expected_version: int,
        reason: str,
    ) -> AgreementRecord: ...

    # audit
    async def search(
        self, request: Request, viewer: Principal, query: EntryQuery, after: int, limit: int
    ) -> AuditPage: ...
    async def export_csv(
        self, request: Request, viewer: Principal, query: EntryQuery
    ) -> AsyncIterator[str]: ...
    async def checkpoint(self, request: Request) -> CheckpointView | None: ...
    async def verify(self, request: Request, viewer: Principal) -> VerifyOutcome: ...
    async def usage(
        self,
        request: Request,
        session: AsyncSession,
        viewer: Principal,
        *,
        period: Literal["day", "month"],
        since: datetime,
        until: datetime | None,
    ) -> list[UsageRow]: ...
    async def access_log(self, request: Request, viewer: Principal, citizen_id: str) -> AccessLog | None: ...
