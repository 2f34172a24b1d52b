"""The console backend: the pages' words over the functions the API endpoints call.

Nothing here goes over HTTP, and no rule lives here. Sign-in uses the auth domain's
client lookup and its constant-time secret check; agreements go through
``service.policy.agreements`` (visibility, ownership, version checks, the author
string); audit pages through ``service.audit.search`` (visibility, the query's own
audit entry, export and the usage report).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from fastapi import Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from service.audit import citizen_proofs, search
from service.audit import observed as audit_observed
from service.audit import repository as audit_repository
from service.audit.checkpoint import Checkpoint, CheckpointError, NoteSigner, NoteVerifier
from service.audit.search import EntryQuery, Page
from service.audit.verify import VerificationFailed
from service.audit.witnessing import WitnessConfig
from service.audit.writer import AuditWriter
from service.auth import service as auth_service
from service.auth.dependencies import Principal
from service.auth.secrets import hash_secret, secret_matches
from service.catalog import service as catalog_service
from service.catalog.schemas import Catalog
from service.console.forms import field_for_loc
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
from service.db import Database
from service.errors import NotFound
from service.policy import agreements
from service.policy.errors import AgreementNotFound
from service.policy.models import AgreementVersion
from service.policy.schemas import AgreementSpec
from service.witness.cosignature import split_note

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


def _audit_row(item: dict[str, Any]) -> AuditRow:
    entry: dict[str, Any] = item["entry"]
    return AuditRow(
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
        records: list[AgreementRecord] = []
        cursor = None
        while True:
            page = await agreements.list_agreements(session, viewer, cursor=cursor, limit=200)
            records.extend(_record(r) for r in page.rows)
            if page.next_cursor is None:
                return sorted(records, key=lambda r: (r.owner, r.id))
            cursor = page.next_cursor

    async def versions(
        self, session: AsyncSession, viewer: Principal, agreement_id: str
    ) -> list[AgreementRecord]:
        records: list[AgreementRecord] = []
        cursor = None
        while True:
            try:
                page = await agreements.list_versions(session, viewer, agreement_id, cursor=cursor, limit=200)
            except AgreementNotFound:
                # Another owner's agreement is simply not there, as in the API.
                return []
            records.extend(_record(r) for r in page.rows)
            if page.next_cursor is None:
                return records
            cursor = page.next_cursor

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
        for loc, message in agreements.problems(spec, viewer.department, catalog):
            errors.append((field_for_loc(loc), _strip_prefix(message, spec.id)))
        if creating and await agreements.id_taken(session, spec.id):
            errors.append(
                ("id", "An agreement with this ID already exists; IDs are unique across the catalog")
            )
        return DraftCheck(None if errors else spec.content(), errors)

    async def simulate(
        self, request: Request, session: AsyncSession, viewer: Principal, content: dict[str, Any]
    ) -> Simulation:
        result = await agreements.simulate_draft(
            session,
            viewer,
            request.app.state.policy,
            request.app.state.recorded_requests,
            upsert=[AgreementSpec.model_validate(content)],
            remove=[],
        )
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
        if expected_version is None:
            row = await agreements.create_agreement(session, viewer, spec, reason=reason)
        else:
            row = await agreements.replace_agreement(
                session, viewer, spec.id, spec, expected=expected_version, reason=reason
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
        row = await agreements.revoke_agreement(
            session, viewer, agreement_id, expected=expected_version, reason=reason
        )
        return _record(row)

    # --- audit ----------------------------------------------------------------------------

    @staticmethod
    def _database(request: Request) -> Database:
        database: Database = request.app.state.database
        return database

    @staticmethod
    def _writer(request: Request) -> AuditWriter:
        writer: AuditWriter = request.app.state.audit_writer
        return writer

    @staticmethod
    def _source(request: Request) -> str | None:
        return request.client.host if request.client else None

    async def search(
        self, request: Request, viewer: Principal, query: EntryQuery, after: int, limit: int
    ) -> AuditPage:
        page = await search.search_entries(
            self._database(request).engine,
            self._writer(request),
            viewer,
            query,
            after=after,
            limit=limit,
            source=self._source(request),
        )
        return AuditPage([_audit_row(item) for item in page.items], page.next_cursor)

    async def export_csv(self, request: Request, viewer: Principal, query: EntryQuery) -> AsyncIterator[str]:
        return await search.export_entries(
            self._database(request).engine,
            self._writer(request),
            viewer,
            query,
            format="csv",
            source=self._source(request),
        )

    async def checkpoint(self, request: Request) -> CheckpointView | None:
        async with self._database(request).engine.connect() as conn:
            row = await audit_repository.latest_checkpoint(conn)
        if row is None:
            return None
        return CheckpointView(row.tree_size, base64.b64encode(row.root_hash).decode(), row.created_at)

    async def verify(self, request: Request, viewer: Principal) -> VerifyOutcome:
        await search.record_query(self._writer(request), viewer, source=self._source(request))
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
        period: Literal["day", "month"],
        since: datetime,
        until: datetime | None,
    ) -> list[UsageRow]:
        counts = await search.usage_report(
            session,
            self._database(request).engine,
            self._writer(request),
            viewer,
            period=period,
            since=since,
            until=until,
            source=self._source(request),
        )
        return [
            UsageRow(c["consumer"], c["owner"], c["field"], c["purpose"], c["period"], int(c["count"]))
            for c in counts
        ]

    async def access_log(self, request: Request, viewer: Principal, citizen_id: str) -> AccessLog | None:
        config = request.app.state.witness_config
        try:
            page = await search.citizen_access_log(
                self._database(request).engine,
                self._writer(request),
                viewer,
                citizen_id,
                after=0,
                limit=ACCESS_LOG_LIMIT,
                source=self._source(request),
                proofs=config,
            )
        except NotFound:
            return None
        return AccessLog(self._access_rows(page.items), self._proven(request, config, page))

    @staticmethod
    def _proven(request: Request, config: WitnessConfig, page: Page) -> AccessProof:
        """Check the page's proofs here as the citizen's own verifier would."""
        signer: NoteSigner = request.app.state.audit_signer
        proofs = [item["proof"] for item in page.items]
        try:
            checked = citizen_proofs.check_proofs(
                NoteVerifier.parse(signer.verifier_key()), config, page.checkpoint, proofs
            )
        except CheckpointError as exc:
            return AccessProof(0, len(proofs), None, (), problem=str(exc))
        size = None if page.checkpoint is None else Checkpoint.parse_body(split_note(page.checkpoint)[0]).size
        return AccessProof(checked.verified, checked.pending, size, checked.witnesses)

    @staticmethod
    def _access_rows(items: list[dict[str, Any]]) -> list[AccessRow]:
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
