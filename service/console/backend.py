"""The console backend over the domain services: the same functions the API endpoints call.

Nothing here goes over HTTP. Sign-in uses the auth domain's client lookup and its
constant-time secret check; agreements go through the policy domain's validation,
simulation and versioned writes (so its change hooks audit them, with the signed-in
client as author); audit pages use the audit domain's queries and append an audit entry
for each query, the same entry the audit API appends, naming the signed-in client.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit import observed as audit_observed
from service.audit import query as audit_query
from service.audit import repository as audit_repository
from service.audit import service as audit_service
from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.repository import EntryFilter
from service.audit.verify import VerificationFailed
from service.audit.writer import AuditWriter
from service.auth import service as auth_service
from service.auth.dependencies import Principal
from service.auth.secrets import hash_secret, secret_matches
from service.catalog import service as catalog_service
from service.catalog.schemas import Catalog
from service.console.forms import field_for_loc
from service.console.ports import (
    AccessRow,
    AgreementRecord,
    AuditPage,
    AuditQuery,
    AuditRow,
    CheckpointView,
    DraftCheck,
    SignInRefused,
    SimulatedChange,
    Simulation,
    UsageRow,
    VerifyOutcome,
)
from service.db import Database
from service.errors import NotFound
from service.policy import repository as policy_repository
from service.policy import service as policy_service
from service.policy.errors import AgreementExists, AgreementRevoked, NotFieldOwner, StaleAgreement
from service.policy.loader import check_agreement
from service.policy.models import AgreementVersion
from service.policy.schemas import AgreementSpec
from service.policy.simulate import draft_agreements, draft_policy, simulate

# Compared against when the client id is unknown, so an unknown id and a wrong secret
# take the same time: the form must not tell which client ids exist.
_NO_CLIENT_HASH = hash_secret("no such client: a value no secret hashes to in practice")
_BAD_CREDENTIALS = "The client ID or client secret is not right"
# Friendlier words for the schema's own refusals, by (form field, pydantic error type).
_FRIENDLY = {
    ("id", "string_pattern_mismatch"): "The agreement ID must be lower-case letters, digits and hyphens, "
    "starting with a letter",
    ("id", "string_type"): "Enter an agreement ID",
    ("consumer", "string_pattern_mismatch"): "Choose the consumer department",
    ("fields", "too_short"): "Choose at least one field",
    ("actions", "too_short"): "Choose at least one action",
    ("actions", "literal_error"): "Choose actions from the list",
    ("valid_from", "date_from_datetime_parsing"): "The valid from date must be a real date, like 2027-01-31",
    ("valid_from", "date_parsing"): "The valid from date must be a real date, like 2027-01-31",
    (
        "valid_until",
        "date_from_datetime_parsing",
    ): "The valid until date must be a real date, like 2027-12-31",
    ("valid_until", "date_parsing"): "The valid until date must be a real date, like 2027-12-31",
}
ACCESS_LOG_LIMIT = 1000
_PAGE = 500


def _sees_all(viewer: Principal) -> bool:
    return "auditor" in viewer.roles


def _record(row: AgreementVersion) -> AgreementRecord:
    return AgreementRecord(
        id=row.agreement_id,
        owner=row.owner,
        content=dict(row.content),
        version=row.version,
        status=row.status,
        author=row.author,
        reason=row.reason,
        created_at=row.created_at,
    )


def _entry_filter(viewer: Principal, query: AuditQuery) -> EntryFilter:
    return EntryFilter(
        citizen_id=query.citizen_id,
        consumer=query.consumer,
        owner=query.owner,
        field=query.field,
        purpose=query.purpose,
        decision=query.decision,
        since=query.since,
        until=query.until,
        # A data owner sees only entries that touch its fields, exactly as in the API.
        visible_to_owner=None if _sees_all(viewer) else viewer.department,
    )


def _audit_row(entry_id: int, leaf: int | None, canonical: str) -> AuditRow:
    entry: dict[str, Any] = json.loads(canonical)
    return AuditRow(
        id=entry_id,
        leaf_index=leaf,
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
    )


def _strip_prefix(message: str, agreement_id: str) -> str:
    prefix = f"agreement {agreement_id}: "
    text = message.removeprefix(prefix)
    return text[:1].upper() + text[1:]


class DomainBackend:
    """Built once per app; holds nothing but references to the app's long-lived parts."""

    async def check_credentials(self, session: AsyncSession, client_id: str, client_secret: str) -> Principal:
        client = await auth_service.get_client(session, client_id)
        matches = secret_matches(client_secret, client.secret_hash if client else _NO_CLIENT_HASH)
        if client is None or not matches:
            raise SignInRefused(_BAD_CREDENTIALS)
        if client.disabled_at is not None:
            raise SignInRefused("This client has been disabled; ask your administrator for a working one")
        return Principal.with_roles(client.client_id, client.department, *client.roles)

    async def client_active(self, session: AsyncSession, client_id: str) -> bool:
        status = await auth_service.client_status(session, client_id)
        return status is not None and not status.disabled

    async def catalog(self, session: AsyncSession) -> Catalog:
        return (await catalog_service.current(session))[1]

    # --- agreements ---------------------------------------------------------------------

    async def agreements(self, session: AsyncSession, viewer: Principal) -> list[AgreementRecord]:
        owner = None if _sees_all(viewer) else viewer.department
        rows = await policy_repository.current_versions(session, owner)
        return sorted((_record(r) for r in rows), key=lambda r: (r.owner, r.id))

    async def versions(
        self, session: AsyncSession, viewer: Principal, agreement_id: str
    ) -> list[AgreementRecord]:
        current = await policy_repository.current_version(session, agreement_id)
        # Another owner's agreement is simply not there, as in the API.
        if current is None or (not _sees_all(viewer) and current.owner != viewer.department):
            return []
        rows = await policy_repository.page_versions(session, agreement_id, after=None, limit=10_000)
        return [_record(r) for r in rows]

    async def check_draft(
        self, session: AsyncSession, viewer: Principal, draft: dict[str, Any], *, creating: bool
    ) -> DraftCheck:
        errors: list[tuple[str, str]] = []
        try:
            spec = AgreementSpec.model_validate(draft)
        except ValidationError as exc:
            for error in exc.errors():
                name = field_for_loc(error["loc"])
                errors.append((name, _FRIENDLY.get((name, error["type"]), str(error["msg"]))))
            return DraftCheck(None, errors)
        catalog = await self.catalog(session)
        for loc, message in check_agreement(spec, viewer.department, catalog):
            errors.append((field_for_loc(loc), _strip_prefix(message, spec.id)))
        if creating and await policy_repository.current_version(session, spec.id) is not None:
            errors.append(
                ("id", "An agreement with this ID already exists; IDs are unique across the catalog")
            )
        return DraftCheck(None if errors else spec.content(), errors)

    async def simulate(
        self, request: Request, session: AsyncSession, viewer: Principal, content: dict[str, Any]
    ) -> Simulation:
        spec = AgreementSpec.model_validate(content)
        current = await policy_repository.current_version(session, spec.id)
        conn = await session.connection()
        live = await policy_service.current_policy(conn, getattr(request.app.state, "policy", None))
        upsert = [spec.to_engine(viewer.department, current.version + 1 if current else 1)]
        draft = draft_policy(live, draft_agreements(live.agreements, upsert, []))
        # The audit store's past requests, as the API's simulate replays them.
        result = await simulate(live, draft, request.app.state.recorded_requests, None)
        changes = [
            SimulatedChange(consumer, field, action, purpose, before, after, count)
            for (consumer, field, action, purpose, before, after), count in sorted(result.changes.items())
        ]
        return Simulation(result.evaluated, result.changed, changes)

    async def save(
        self,
        session: AsyncSession,
        viewer: Principal,
        content: dict[str, Any],
        *,
        expected_version: int | None,
        reason: str,
    ) -> AgreementRecord:
        spec = AgreementSpec.model_validate(content)
        previous = await policy_repository.current_version(session, spec.id)
        if expected_version is None:
            if previous is not None:
                raise AgreementExists(
                    f"An agreement {spec.id!r} already exists; ids are unique across the catalog."
                )
        else:
            if previous is None or previous.owner != viewer.department:
                raise NotFound(f"No agreement {spec.id!r}.")
            if previous.status != "active":
                raise AgreementRevoked(f"Agreement {spec.id} is revoked; create a new agreement instead.")
            if previous.version != expected_version:
                raise StaleAgreement(
                    f"Agreement {spec.id} changed (it is at version {previous.version}) while you edited it; "
                    "open it again."
                )
        row = await policy_service.put_agreement(
            session, previous, spec, owner=viewer.department, author=viewer.client_id, reason=reason
        )
        return _record(row)

    async def revoke(
        self,
        session: AsyncSession,
        viewer: Principal,
        agreement_id: str,
        *,
        expected_version: int,
        reason: str,
    ) -> AgreementRecord:
        row = await policy_repository.current_version(session, agreement_id)
        if row is None or (row.owner != viewer.department and not _sees_all(viewer)):
            raise NotFound(f"No agreement {agreement_id!r}.")
        if row.owner != viewer.department:
            raise NotFieldOwner("Only the owning department revokes its agreements.")
        if row.version != expected_version:
            raise StaleAgreement(f"Agreement {agreement_id} changed since you opened it; open it again.")
        if row.status == "revoked":
            raise AgreementRevoked(f"Agreement {agreement_id} is already revoked.")
        return _record(await policy_service.revoke(session, row, author=viewer.client_id, reason=reason))

    # --- audit ----------------------------------------------------------------------------

    @staticmethod
    def _database(request: Request) -> Database:
        database: Database = request.app.state.database
        return database

    @staticmethod
    def _writer(request: Request) -> AuditWriter:
        writer: AuditWriter = request.app.state.audit_writer
        return writer

    async def _audit_query(self, request: Request, viewer: Principal, **kw: Any) -> None:
        """Record the query itself, durably, before any result is shown (as the API does)."""
        entry = audit_service.request_entry(request, viewer, kw.pop("action", "audit-query"), **kw)
        await self._writer(request).append(entry)

    async def search(
        self, request: Request, viewer: Principal, query: AuditQuery, after: int, limit: int
    ) -> AuditPage:
        entry_filter = _entry_filter(viewer, query)
        async with self._database(request).engine.connect() as conn:
            rows = await audit_repository.page_entries(conn, entry_filter, after, limit + 1)
        await self._audit_query(request, viewer, owners=[query.owner] if query.owner else [])
        more = len(rows) > limit
        rows = rows[:limit]
        items = [_audit_row(entry_id, leaf, canonical) for entry_id, leaf, canonical in rows]
        return AuditPage(items, rows[-1][0] if more else None)

    async def export_csv(self, request: Request, viewer: Principal, query: AuditQuery) -> AsyncIterator[str]:
        entry_filter = _entry_filter(viewer, query)
        await self._audit_query(request, viewer, owners=[query.owner] if query.owner else [])
        engine = self._database(request).engine

        async def lines() -> AsyncIterator[str]:
            yield audit_query.csv_header()
            after = 0
            while True:
                async with engine.connect() as conn:
                    rows = await audit_repository.page_entries(conn, entry_filter, after, _PAGE)
                for entry_id, leaf, canonical in rows:
                    yield audit_query.csv_line(audit_query.entry_item(entry_id, leaf, canonical))
                if len(rows) < _PAGE:
                    return
                after = rows[-1][0]

        return lines()

    async def checkpoint(self, request: Request) -> CheckpointView | None:
        async with self._database(request).engine.connect() as conn:
            row = await audit_repository.latest_checkpoint(conn)
        if row is None:
            return None
        return CheckpointView(row.tree_size, base64.b64encode(row.root_hash).decode(), row.created_at)

    async def verify(self, request: Request, viewer: Principal) -> VerifyOutcome:
        await self._audit_query(request, viewer)
        signer: NoteSigner = request.app.state.audit_signer
        verifier = NoteVerifier.parse(signer.verifier_key())
        try:
            result = await audit_observed.verify_for_auditor(
                self._database(request).engine, verifier, viewer.client_id
            )
        except VerificationFailed as failure:
            return VerifyOutcome(False, 0, f"Verification failed: {failure}")
        anchored = (
            f" It still holds the {result.anchored_at} entries an auditor verified before."
            if result.anchored_at
            else ""
        )
        return VerifyOutcome(
            True,
            result.size,
            f"All {result.size} entries were hashed again and every column auditors filter on was "
            f"checked against its entry; the tree matches all {result.checkpoints} signed checkpoints."
            + anchored,
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
        owner = None if _sees_all(viewer) else viewer.department
        catalog = await self.catalog(session)
        entry_filter = EntryFilter(owner=owner, since=since, until=until)
        counts = await audit_query.usage_counts(
            self._database(request).engine, entry_filter, period, catalog.field_owners, owner
        )
        await self._audit_query(request, viewer, owners=[owner] if owner else [])
        return [
            UsageRow(c["consumer"], c["owner"], c["field"], c["purpose"], c["period"], int(c["count"]))
            for c in counts
        ]

    async def access_log(
        self, request: Request, viewer: Principal, citizen_id: str
    ) -> list[AccessRow] | None:
        async with self._database(request).engine.connect() as conn:
            if not await audit_repository.citizen_exists(conn, citizen_id):
                return None
            entry_filter = EntryFilter(citizen_id=citizen_id, actions=audit_query.CITIZEN_VISIBLE_ACTIONS)
            rows = await audit_repository.page_entries(conn, entry_filter, 0, ACCESS_LOG_LIMIT)
        await self._audit_query(request, viewer, action="access-log", citizen_id=citizen_id)
        items = [audit_query.access_item(canonical) for _entry_id, _leaf, canonical in rows]
        return [
            AccessRow(
                time=datetime.fromisoformat(item["time"]),
                department=item["department"],
                action=item["action"],
                fields=list(item["fields"] or []),
                purpose=item["purpose"],
                decision=item["decision"],
            )
            for item in items
        ]
