"""An in-memory ConsoleBackend for page tests that need no other domain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.search import EntryQuery
from service.auth.dependencies import Principal
from service.catalog.loader import load_catalog
from service.catalog.schemas import Catalog
from service.console.ports import (
    AccessLog,
    AccessProof,
    AccessRow,
    AgreementRecord,
    AuditPage,
    AuditRow,
    CheckpointView,
    DraftCheck,
    SignInRefused,
    SimulatedChange,
    Simulation,
    UsageRow,
    VerifyOutcome,
)
from tests.conftest import TEST_POLICIES


@dataclass
class FakeClient:
    secret: str
    department: str
    roles: tuple[str, ...]
    disabled: bool = False


@dataclass
class FakeBackend:
    clients: dict[str, FakeClient] = field(default_factory=dict)
    versions_by_id: dict[str, list[AgreementRecord]] = field(default_factory=dict)
    rows: list[AuditRow] = field(default_factory=list)
    access: dict[str, list[AccessRow]] = field(default_factory=dict)
    proofs: dict[str, AccessProof] = field(default_factory=dict)
    usage_rows: list[UsageRow] = field(default_factory=list)
    verified: list[str] = field(default_factory=list)
    _catalog: Catalog = field(default_factory=lambda: load_catalog(TEST_POLICIES))

    async def check_credentials(self, session: AsyncSession, client_id: str, client_secret: str) -> Principal:
        client = self.clients.get(client_id)
        if client is None or client.secret != client_secret:
            raise SignInRefused("The client ID or secret is not right")
        if client.disabled:
            raise SignInRefused("This client is disabled")
        return Principal.with_roles(client_id, client.department, *client.roles)

    async def client_active(self, session: AsyncSession, client_id: str) -> bool:
        client = self.clients.get(client_id)
        return client is not None and not client.disabled

    async def catalog(self, session: AsyncSession) -> Catalog:
        return self._catalog

    async def agreements(self, session: AsyncSession, viewer: Principal) -> list[AgreementRecord]:
        return [v[-1] for v in self.versions_by_id.values() if v[-1].owner == viewer.department]

    async def versions(
        self, session: AsyncSession, viewer: Principal, agreement_id: str
    ) -> list[AgreementRecord]:
        return list(self.versions_by_id.get(agreement_id, []))

    async def check_draft(
        self, session: AsyncSession, viewer: Principal, draft: dict[str, Any]
    ) -> DraftCheck:
        errors = []
        if not draft.get("id"):
            errors.append(("id", "Enter an agreement ID"))
        if not draft.get("legal_basis"):
            errors.append(("legal_basis", "a permit needs a legal_basis"))
        return DraftCheck(None if errors else dict(draft), errors)

    async def simulate(
        self, request: Request, session: AsyncSession, viewer: Principal, content: dict[str, Any]
    ) -> Simulation:
        change = SimulatedChange(
            content["consumer"], content["fields"][0], "read", "benefit-eligibility", "deny", "permit", 3
        )
        return Simulation(10, 3, [change])

    async def save(
        self,
        session: AsyncSession,
        viewer: Principal,
        content: dict[str, Any],
        *,
        expected_version: int | None,
        reason: str,
    ) -> AgreementRecord:
        versions = self.versions_by_id.setdefault(content["id"], [])
        record = AgreementRecord(
            content["id"],
            viewer.department,
            content,
            len(versions) + 1,
            "active",
            viewer.client_id,
            reason,
            datetime.now(UTC),
        )
        versions.append(record)
        return record

    async def revoke(
        self,
        session: AsyncSession,
        viewer: Principal,
        agreement_id: str,
        *,
        expected_version: int,
        reason: str,
    ) -> AgreementRecord:
        versions = self.versions_by_id[agreement_id]
        last = versions[-1]
        record = AgreementRecord(
            last.id,
            last.owner,
            last.content,
            last.version + 1,
            "revoked",
            viewer.client_id,
            reason,
            datetime.now(UTC),
        )
        versions.append(record)
        return record

    async def search(
        self, request: Request, viewer: Principal, query: EntryQuery, after: int, limit: int
    ) -> AuditPage:
        rows = [
            r
            for r in self.rows
            if r.id > after and (query.consumer is None or r.department == query.consumer)
        ]
        page = rows[:limit]
        return AuditPage(page, page[-1].id if len(rows) > limit else None)

    async def export_csv(self, request: Request, viewer: Principal, query: EntryQuery) -> AsyncIterator[str]:
        async def lines() -> AsyncIterator[str]:
            yield "id,department\n"
            for row in self.rows:
                yield f"{row.id},{row.department}\n"

        return lines()

    async def checkpoint(self, request: Request) -> CheckpointView | None:
        return CheckpointView(len(self.rows), "q1w2e3r4t5y6u7i8o9p0", datetime.now(UTC))

    async def verify(self, request: Request, viewer: Principal) -> VerifyOutcome:
        self.verified.append(viewer.client_id)
        return VerifyOutcome(
            True, len(self.rows), f"All {len(self.rows)} entries and 1 checkpoint check out."
        )

    async def usage(
        self,
        request: Request,
        session: AsyncSession,
        viewer: Principal,
        *,
        period: str,
        since: datetime,
        until: datetime | None,
    ) -> list[UsageRow]:
        width = 10 if period == "day" else 7
        return [
            UsageRow(u.consumer, u.owner, u.field, u.purpose, u.period[:width], u.count)
            for u in self.usage_rows
        ]

    async def access_log(self, request: Request, viewer: Principal, citizen_id: str) -> AccessLog | None:
        rows = self.access.get(citizen_id)
        if rows is None:
            return None
        return AccessLog(rows, self.proofs.get(citizen_id, AccessProof(len(rows), 0, len(rows), ())))
