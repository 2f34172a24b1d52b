"""The one access path to citizen data.

Every route that touches citizen data calls a method here, which does, in order:
validate against the catalog, decide per field (policy), load only the allowed
ciphertexts, decrypt them, append the audit entry and wait until it is durable, return.
If the audit cannot be written, nothing is returned (``AuditUnavailable`` -> 503).
Refused requests are audited too: an attempt is an access.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NoReturn

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit import service as audit_service
from service.audit.schemas import Action, AuditEntry, Reason
from service.audit.schemas import Decision as AuditDecision
from service.audit.writer import AuditWriter
from service.auth.dependencies import Principal
from service.catalog.errors import CatalogMissing
from service.catalog.schemas import Catalog
from service.crypto import blind_index
from service.crypto.aead import DataKey, decrypt_value, encrypt_value
from service.crypto.keyring import DATA_KEYS, Keyring
from service.crypto.material import KeyMaterial
from service.db import Database
from service.errors import Conflict, Forbidden, TooManyRequests, ValidationFailed
from service.events import service as events_service
from service.observability import Metrics
from service.policy import service as policy_service
from service.policy.engine import CompiledPolicy, Decision, RequestContext
from service.policy.repository import EpochKey
from service.records import repository, values
from service.records.errors import (
    CitizenErased,
    CitizenNotFound,
    InvalidFieldValue,
    NotPermitted,
    StaleVersion,
)
from service.records.reader import Reader
from service.records.schemas import (
    BatchItem,
    BatchPage,
    CitizenOut,
    ErasureReason,
    FieldOut,
    HistoryItem,
    HistoryPage,
    LookupOut,
    Registered,
    VerifyOut,
    Withheld,
    WriteOut,
)

NATIONAL_ID_FIELD = "national_id"


@dataclass(frozen=True)
class Access:
    """Who asks, and the request facts that the audit records with every entry."""

    principal: Principal
    request_id: str
    source: str | None
    case_ref: str | None
    # The revocation epoch authentication just read, so the policy need not read it again.
    epoch_key: EpochKey | None = None

    @property
    def department(self) -> str:
        return self.principal.department


def _now() -> datetime:
    return datetime.now(UTC)


def _unknown_fields(catalog: Catalog, names: Iterable[str]) -> list[str]:
    return [name for name in names if catalog.field(name) is None]


def _require_known(catalog: Catalog, fields: Sequence[str], purpose: str | None, *, loc: str) -> None:
    errors: list[dict[str, Any]] = []
    for name in _unknown_fields(catalog, fields):
        errors.append({"loc": [loc, name], "msg": f"unknown field {name!r}"})
    if purpose is not None and catalog.purpose(purpose) is None:
        errors.append({"loc": ["purpose"], "msg": f"unknown purpose {purpose!r}"})
    if errors:
        raise ValidationFailed("The request names something the catalog does not know.", errors=errors)


def _summary(requested: Sequence[str], released: Sequence[str]) -> AuditDecision:
    if not requested or not released:
        return "deny"
    return "permit" if len(released) == len(requested) else "partial"


class RecordsService:
    """The access path. Built per request from the process's long-lived parts."""

    def __init__(
        self,
        database: Database,
        keyring: Keyring,
        audit: AuditWriter,
        reader: Reader,
        policy: policy_service.PolicyHolder | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.database = database
        self.keyring = keyring
        self.audit = audit
        self.reader = reader
        # The app's holder, shared with the policy API: one compiled index per epoch.
        self.policy = policy or policy_service.PROCESS_POLICY

    # --- shared steps -----------------------------------------------------------------

    async def _catalog_and_policy(
        self, conn: AsyncConnection, access: Access | None = None
    ) -> tuple[Catalog, CompiledPolicy]:
        snapshot = await self.policy.snapshot(conn, access.epoch_key if access else None)
        if snapshot.catalog is None:
            raise CatalogMissing("No catalog has been applied yet; run `tellonce policies apply DIR`.")
        return snapshot.catalog, snapshot.policy

    async def _read_snapshot(self, access: Access) -> tuple[Catalog, CompiledPolicy]:
        """Catalog and policy for a read: from memory when authentication's epoch key
        matches the compiled one, otherwise through a connection."""
        if access.epoch_key is not None:
            snapshot = self.policy.cached(access.epoch_key)
            if snapshot is not None and snapshot.catalog is not None:
                return snapshot.catalog, snapshot.policy
        async with self.database.engine.connect() as conn:
            return await self._catalog_and_policy(conn, access)

    async def _keys(self, rows: Sequence[repository.ValueRow]) -> dict[int, DataKey]:
        """Unwrapped data keys from the cache; a connection only for a miss."""
        wanted = {row.data_key_id for row in rows}
        cached = {key_id: key for key_id in wanted if (key := self.keyring.data_key_cache.get(key_id))}
        if len(cached) == len(wanted):
            return cached
        async with self.database.engine.connect() as conn:
            return await self.keyring.data_keys(conn, wanted)

    def _plain(
        self, catalog: Catalog, rows: Sequence[repository.ValueRow], keys: Mapping[int, DataKey]
    ) -> dict[tuple[str, str, int], values.JsonValue]:
        plain: dict[tuple[str, str, int], values.JsonValue] = {}
        for row in rows:
            key = keys.get(row.data_key_id)
            spec = catalog.field(row.field)
            if key is None or spec is None:
                continue
            data = decrypt_value(
                key,
                citizen_id=row.citizen_id,
                field=row.field,
                version=row.version,
                ciphertext=row.ciphertext,
            )
            plain[(row.citizen_id, row.field, row.version)] = values.decode(spec, data)
        return plain

    def _entry(
        self,
        access: Access,
        action: Action,
        *,
        citizen_id: str | None,
        catalog: Catalog,
        requested: Sequence[str],
        released: Sequence[str],
        decisions: Mapping[str, Decision],
        purpose: str | None,
        status: int,
        decision: AuditDecision | None = None,
    ) -> AuditEntry:
        owners = sorted({spec.owner for name in requested if (spec := catalog.field(name))})
        legal_basis = sorted(
            {d.legal_basis for d in decisions.values() if d.effect == "permit" and d.legal_basis}
        )
        return AuditEntry(
            time=_now().isoformat(),
            request_id=access.request_id,
            client_id=access.principal.client_id,
            department=access.department,
            on_behalf_of=access.principal.on_behalf_of,
            action=action,
            citizen_id=citizen_id,
            owners=owners,
            fields_requested=list(requested),
            fields_released=list(released),
            decision=decision or _summary(requested, released),
            reasons=[
                Reason(
                    field=d.field, effect=d.effect, agreement=d.agreement, version=d.version, reason=d.reason
                )
                for d in decisions.values()
            ],
            purpose=purpose,
            case_ref=access.case_ref,
            legal_basis=legal_basis,
            status=status,
            source=access.source,
        )

    def _context(self, access: Access, purpose: str | None, status: str | None) -> RequestContext:
        return RequestContext(
            purpose=purpose or "", case_ref=access.case_ref, time=_now(), citizen_status=status
        )

    async def _decrypt(
        self, conn: AsyncConnection, catalog: Catalog, rows: Sequence[repository.ValueRow]
    ) -> dict[tuple[str, str, int], values.JsonValue]:
        keys = await self.keyring.data_keys(conn, {row.data_key_id for row in rows})
        return self._plain(catalog, rows, keys)

    async def _refuse(self, entry: AuditEntry, error: Exception) -> NoReturn:
        """Audit a refusal durably, then raise it."""
        await self.audit.append(entry)
        raise error

    async def _load_citizen(self, conn: AsyncConnection, citizen_id: str) -> repository.CitizenRow:
        citizen = await repository.get_citizen(conn, citizen_id)
        if citizen is None:
            raise CitizenNotFound("No citizen with that id is known to you.")
        if citizen.status == "erased":
            raise CitizenErased("This citizen's record was erased.")
        return citizen

    # --- read -------------------------------------------------------------------------

    async def read(
        self, access: Access, citizen_id: str, fields: Sequence[str] | None, purpose: str
    ) -> CitizenOut:
        catalog, policy = await self._read_snapshot(access)
        requested = list(dict.fromkeys(fields)) if fields else [f.name for f in catalog.fields]
        _require_known(catalog, requested, purpose, loc="fields")
        citizen = (await self.reader.citizens([citizen_id])).get(citizen_id)
        if citizen is None:
            raise CitizenNotFound("No citizen with that id is known to you.")
        if citizen.status == "erased":
            raise CitizenErased("This citizen's record was erased.")
        context = self._context(access, purpose, citizen.status)
        decisions = policy.decide(access.department, "read", requested, context)
        allowed = [name for name in requested if decisions[name].effect == "permit"]
        withheld = [Withheld(field=n, reason=decisions[n].reason) for n in requested if n not in allowed]
        if not allowed:
            await self._refuse_nothing_allowed(
                access, "read", citizen_id, catalog, policy, requested, decisions, purpose, context
            )
        rows = await self.reader.current_values([citizen_id], allowed)
        plain = self._plain(catalog, rows, await self._keys(rows))
        by_field = {row.field: row for row in rows}
        released: dict[str, FieldOut] = {}
        for name in allowed:
            spec = catalog.field(name)
            row = by_field.get(name)
            owner = spec.owner if spec else ""
            if row is None:
                released[name] = FieldOut(value=None, version=None, updated_at=None, owner=owner)
            else:
                value = plain[(citizen_id, name, row.version)]
                released[name] = FieldOut(
                    value=value, version=row.version, updated_at=row.written_at, owner=owner
                )
        await self.audit.append(
            self._entry(
                access,
                "read",
                citizen_id=citizen_id,
                catalog=catalog,
                requested=requested,
                released=allowed,
                decisions=decisions,
                purpose=purpose,
                status=200,
            )
        )
        return CitizenOut(
            id=citizen_id, status=citizen.status, version=citizen.version, fields=released, withheld=withheld
        )

    async def _refuse_nothing_allowed(
        self,
        access: Access,
        action: Action,
        citizen_id: str,
        catalog: Catalog,
        policy: CompiledPolicy,
        requested: Sequence[str],
        decisions: Mapping[str, Decision],
        purpose: str,
        context: RequestContext,
    ) -> NoReturn:
        """403 if the caller may know the citizen exists, else 404.

        A caller may know when it may look citizens up for this purpose, or when it is a
        party to an agreement over one of the fields that just missed (it needs a case
        reference, has expired, or its condition does not hold for this citizen).
        """
        may_know = _may_know(policy, access, action, requested, context)
        error: Exception
        if may_know:
            reasons = "; ".join(decisions[n].reason for n in requested)
            error = NotPermitted(f"No agreement permits this request: {reasons}")
        else:
            error = CitizenNotFound("No citizen with that id is known to you.")
        status = 403 if may_know else 404
        entry = self._entry(
            access,
            action,
            citizen_id=citizen_id,
            catalog=catalog,
            requested=requested,
            released=[],
            decisions=decisions,
            purpose=purpose,
            status=status,
        )
        await self._refuse(entry, error)

    # --- batch-get --------------------------------------------------------------------

    async def batch_get(
        self, access: Access, ids: Sequence[str], fields: Sequence[str] | None, purpose: str
    ) -> BatchPage:
        unique_ids = list(dict.fromkeys(ids))
        catalog, policy = await self._read_snapshot(access)
        requested = list(dict.fromkeys(fields)) if fields else [f.name for f in catalog.fields]
        _require_known(catalog, requested, purpose, loc="fields")
        found = await self.reader.citizens(unique_ids)
        decisions_by_citizen: dict[str, dict[str, Decision]] = {}
        # Citizens the caller may not learn exist: answered like unknown ids, still audited.
        hidden: dict[str, dict[str, Decision]] = {}
        allowed_any: set[str] = set()
        for citizen_id in unique_ids:
            citizen = found.get(citizen_id)
            if citizen is None or citizen.status == "erased":
                continue
            context = self._context(access, purpose, citizen.status)
            decisions = policy.decide(access.department, "read", requested, context)
            if not any(d.effect == "permit" for d in decisions.values()) and not _may_know(
                policy, access, "read", requested, context
            ):
                # Where a single read would answer 404, this citizen looks exactly like an
                # unknown id: the withheld reasons would otherwise tell them apart.
                hidden[citizen_id] = decisions
                continue
            decisions_by_citizen[citizen_id] = decisions
            allowed_any.update(n for n, d in decisions.items() if d.effect == "permit")
        rows = await self.reader.current_values(list(decisions_by_citizen), sorted(allowed_any))
        plain = self._plain(catalog, rows, await self._keys(rows))
        current = {(row.citizen_id, row.field): row for row in rows}
        items: list[BatchItem] = []
        entries: list[AuditEntry] = []
        for citizen_id in unique_ids:
            citizen_decisions = decisions_by_citizen.get(citizen_id)
            if citizen_decisions is None:
                # Unknown, erased and hidden citizens look alike: existence is not disclosed.
                if citizen_id in hidden:
                    entries.append(
                        self._entry(
                            access,
                            "batch-get",
                            citizen_id=citizen_id,
                            catalog=catalog,
                            requested=requested,
                            released=[],
                            decisions=hidden[citizen_id],
                            purpose=purpose,
                            status=404,
                        )
                    )
                items.append(
                    BatchItem(
                        id=citizen_id,
                        fields={},
                        withheld=[
                            Withheld(field=n, reason="no such citizen is available to you") for n in requested
                        ],
                    )
                )
                continue
            released: dict[str, FieldOut] = {}
            withheld: list[Withheld] = []
            for name in requested:
                decision = citizen_decisions[name]
                if decision.effect != "permit":
                    withheld.append(Withheld(field=name, reason=decision.reason))
                    continue
                spec = catalog.field(name)
                owner = spec.owner if spec else ""
                row = current.get((citizen_id, name))
                if row is None:
                    released[name] = FieldOut(value=None, version=None, updated_at=None, owner=owner)
                else:
                    released[name] = FieldOut(
                        value=plain[(citizen_id, name, row.version)],
                        version=row.version,
                        updated_at=row.written_at,
                        owner=owner,
                    )
            items.append(BatchItem(id=citizen_id, fields=released, withheld=withheld))
            entries.append(
                self._entry(
                    access,
                    "batch-get",
                    citizen_id=citizen_id,
                    catalog=catalog,
                    requested=requested,
                    released=list(released),
                    decisions=citizen_decisions,
                    purpose=purpose,
                    status=200,
                )
            )
        if entries:
            await self.audit.append_many(entries)
        return BatchPage(items=items, next_cursor=None)

    # --- lookup -----------------------------------------------------------------------

    async def _find_by_national_id(
        self, conn: AsyncConnection, catalog: Catalog, national_id: str
    ) -> str | None:
        spec = catalog.field(NATIONAL_ID_FIELD)
        if spec is None:
            return None
        index = self.keyring.blind_index(NATIONAL_ID_FIELD, national_id)
        candidates = await repository.candidates_by_blind_index(conn, NATIONAL_ID_FIELD, index)
        if not candidates:
            return None
        # The index is truncated, so a candidate is confirmed by decrypting it, and compared
        # under the normalisation the index uses.
        plain = await self._decrypt(conn, catalog, candidates)
        wanted = blind_index.normalise(national_id)
        for (citizen_id, _field, _version), value in plain.items():
            if blind_index.normalise(values.normalise_for_index(value)) == wanted:
                return citizen_id
        return None

    async def lookup(self, access: Access, national_id: str, purpose: str) -> LookupOut:
        async with self.database.engine.connect() as conn:
            catalog, policy = await self._catalog_and_policy(conn, access)
            _require_known(catalog, [], purpose, loc="fields")
            national_id = _canonical_national_id(national_id)
            context = self._context(access, purpose, None)
            decisions = policy.decide(access.department, "lookup", [NATIONAL_ID_FIELD], context)
            permitted = decisions[NATIONAL_ID_FIELD].effect == "permit"
            citizen_id = await self._find_by_national_id(conn, catalog, national_id) if permitted else None
            if citizen_id is not None:
                citizen = await repository.get_citizen(conn, citizen_id)
                if citizen is None or citizen.status == "erased":
                    citizen_id = None
        released = [NATIONAL_ID_FIELD] if citizen_id else []
        entry = self._entry(
            access,
            "lookup",
            citizen_id=citizen_id,
            catalog=catalog,
            requested=[NATIONAL_ID_FIELD],
            released=released,
            decisions=decisions,
            purpose=purpose,
            status=200 if citizen_id else 404,
        )
        if citizen_id is None:
            # Unknown and not allowed give the same answer.
            await self._refuse(entry, CitizenNotFound("No citizen with that national id is known to you."))
        await self.audit.append(entry)
        return LookupOut(id=str(citizen_id))

    # --- verify -----------------------------------------------------------------------

    async def verify(
        self, access: Access, citizen_id: str, purpose: str, claims: Mapping[str, Mapping[str, Any]]
    ) -> VerifyOut:
        """Answer claims with booleans, never the value.

        Where the deciding agreement fixes the claims that may be asked (``verify:``), any
        other claim is refused (403). Where it leaves them open, each comparison counts
        against a daily limit per (consumer, citizen, field), shared through the database:
        beyond it, 429 until the next UTC day. Asking the same field of the same citizen
        again within a day is flagged in the audit entry and the probing metric."""
        async with self.database.engine.connect() as conn:
            catalog, policy = await self._catalog_and_policy(conn, access)
            requested = list(claims)
            _require_known(catalog, requested, purpose, loc="claims")
            self._validate_claims(catalog, claims)
            citizen = await self._load_citizen(conn, citizen_id)
            context = self._context(access, purpose, citizen.status)
            decisions = policy.decide(access.department, "verify", requested, context)
            allowed = [n for n in requested if decisions[n].effect == "permit"]
            if not allowed:
                await self._refuse_nothing_allowed(
                    access, "verify", citizen_id, catalog, policy, requested, decisions, purpose, context
                )
            # A field the caller may read outright has nothing for verify to protect.
            readable = {
                n
                for n, d in policy.decide(access.department, "read", allowed, context).items()
                if d.permitted
            }

        def entry(status: int, released: Sequence[str], flags: Sequence[Reason] = ()) -> AuditEntry:
            made = self._entry(
                access,
                "verify",
                citizen_id=citizen_id,
                catalog=catalog,
                requested=requested,
                released=released,
                decisions=decisions,
                purpose=purpose,
                status=status,
                decision=None if status == 200 else "deny",
            )
            return made.model_copy(update={"reasons": [*made.reasons, *flags]}) if flags else made

        today = context.time.date()
        outside = _claims_outside_agreements(catalog, claims, decisions, allowed, today)
        if outside:
            await self._refuse(entry(403, []), NotPermitted("; ".join(outside)))
        open_fields = [
            name
            for name in allowed
            if decisions[name].agreement is not None
            and decisions[name].allowed_claims is None
            and name not in readable
        ]
        flags, limited = await self._count_open_claims(access, citizen_id, claims, open_fields, today)
        if limited:
            await self._refuse(
                entry(429, [], flags),
                TooManyRequests(
                    _seconds_to_next_day(context.time),
                    f"The daily limit of {self._open_limit} open comparisons per citizen and field is "
                    f"reached for {', '.join(limited)}; ask a claim your agreement fixes, or wait until "
                    "the next UTC day.",
                ),
            )
        async with self.database.engine.connect() as conn:
            rows = await repository.current_values(conn, [citizen_id], allowed)
            plain = await self._decrypt(conn, catalog, rows)
        current = {row.field: plain[(citizen_id, row.field, row.version)] for row in rows}
        results: dict[str, bool] = {}
        for name in allowed:
            spec = catalog.field(name)
            if spec is None:
                continue
            value = current.get(name)
            results[name] = value is not None and all(
                values.check_claim(spec, value, operator, operand, today)
                for operator, operand in claims[name].items()
            )
        await self.audit.append(entry(200, allowed, flags))
        withheld = [Withheld(field=n, reason=decisions[n].reason) for n in requested if n not in allowed]
        return VerifyOut(results=results, withheld=withheld)

    @property
    def _open_limit(self) -> int:
        return self.database.settings.verify_unconstrained_per_day

    async def _count_open_claims(
        self,
        access: Access,
        citizen_id: str,
        claims: Mapping[str, Mapping[str, Any]],
        open_fields: Sequence[str],
        today: date,
    ) -> tuple[list[Reason], list[str]]:
        """Count the comparisons asked of ``open_fields`` (left open by their agreement, and
        neither owned nor readable by the caller); return the probing flags for the audit
        and the fields over the daily limit."""
        if not open_fields:
            return [], []
        totals: dict[str, tuple[int, int]] = {}
        async with self.database.engine.begin() as conn:
            for name in open_fields:
                asked = values.comparisons(claims[name])
                total = await repository.add_verify_comparisons(
                    conn,
                    consumer=access.department,
                    citizen_id=citizen_id,
                    field=name,
                    day=today,
                    comparisons=asked,
                )
                totals[name] = (asked, total)
        limit = self._open_limit
        flags: list[Reason] = []
        limited: list[str] = []
        for name, (asked, total) in totals.items():
            over = total > limit
            if over:
                limited.append(name)
            if total > asked:
                flags.append(
                    Reason(
                        field=name,
                        effect="probing",
                        reason=f"repeated open claims: {total} comparisons of {name} on this citizen today "
                        f"(limit {limit})",
                    )
                )
                if self.metrics is not None:
                    self.metrics.verify_probing.labels(access.department, name, str(over).lower()).inc()
        return flags, limited

    @staticmethod
    def _validate_claims(catalog: Catalog, claims: Mapping[str, Mapping[str, Any]]) -> None:
        errors: list[dict[str, Any]] = []
        for name, operations in claims.items():
            spec = catalog.field(name)
            if spec is None:
                continue
            if not operations:
                errors.append({"loc": ["claims", name], "msg": "a claim needs an operator"})
            for operator, operand in operations.items():
                if operator not in values.CLAIM_OPERATORS:
                    errors.append(
                        {"loc": ["claims", name, operator], "msg": "operator must be one of eq, lte, gte, in"}
                    )
                    continue
                try:
                    # Check the operand's shape against a placeholder value of the same type.
                    values.check_claim(spec, None, operator, operand)
                except values.ValueRejected as exc:
                    errors.append({"loc": ["claims", name, operator], "msg": str(exc)})
        if errors:
            raise ValidationFailed("The claims are not valid.", errors=errors)

    # --- history ----------------------------------------------------------------------

    async def history(
        self, access: Access, citizen_id: str, field: str, purpose: str, *, cursor: str | None, limit: int
    ) -> HistoryPage:
        before = _parse_cursor(cursor)
        async with self.database.engine.connect() as conn:
            catalog, policy = await self._catalog_and_policy(conn, access)
            _require_known(catalog, [field], purpose, loc="field")
            citizen = await self._load_citizen(conn, citizen_id)
            context = self._context(access, purpose, citizen.status)
            decisions = policy.decide(access.department, "history", [field], context)
            if decisions[field].effect != "permit":
                await self._refuse_nothing_allowed(
                    access, "history", citizen_id, catalog, policy, [field], decisions, purpose, context
                )
            rows = await repository.history(conn, citizen_id, field, before_version=before, limit=limit + 1)
            page, more = rows[:limit], len(rows) > limit
            plain = await self._decrypt(conn, catalog, page)
        await self.audit.append(
            self._entry(
                access,
                "history",
                citizen_id=citizen_id,
                catalog=catalog,
                requested=[field],
                released=[field],
                decisions=decisions,
                purpose=purpose,
                status=200,
            )
        )
        items = [
            HistoryItem(
                value=plain[(citizen_id, row.field, row.version)],
                version=row.version,
                updated_at=row.written_at,
                written_by=row.written_by,
            )
            for row in page
        ]
        next_cursor = str(page[-1].version) if more and page else None
        return HistoryPage(items=items, next_cursor=next_cursor)

    # --- writes -----------------------------------------------------------------------

    def _validated(
        self, catalog: Catalog, submitted: Mapping[str, Any], loc: str
    ) -> dict[str, values.JsonValue]:
        errors: list[dict[str, Any]] = []
        clean: dict[str, values.JsonValue] = {}
        for name, raw in submitted.items():
            spec = catalog.field(name)
            if spec is None:
                errors.append({"loc": [loc, name], "msg": f"unknown field {name!r}"})
                continue
            if raw is None:
                errors.append({"loc": [loc, name], "msg": "a value is required (null cannot be written)"})
                continue
            try:
                value = values.validate(spec, raw)
                # A value citizens are found by is canonical before it is indexed or compared.
                identifying = spec.searchable or name == NATIONAL_ID_FIELD
                if identifying and spec.type == "string" and isinstance(value, str):
                    value = values.identifier(value)
                clean[name] = value
            except values.ValueRejected as exc:
                errors.append({"loc": [loc, name], "msg": f"{name} {exc}"})
        if errors:
            raise InvalidFieldValue("One or more field values are not valid.", errors=errors)
        return clean

    async def _store_values(
        self,
        conn: AsyncConnection,
        catalog: Catalog,
        citizen_id: str,
        clean: Mapping[str, values.JsonValue],
        written_by: str,
        now: datetime,
    ) -> dict[str, int]:
        keys: dict[str, DataKey] = {}
        versions: dict[str, int] = {}
        for name, value in clean.items():
            spec = catalog.field(name)
            if spec is None:
                continue
            key = keys.get(spec.owner)
            if key is None:
                key = await self.keyring.data_key_for_write(conn, citizen_id, spec.owner)
                keys[spec.owner] = key
            version = await repository.retire_current(conn, citizen_id, name) + 1
            ciphertext = encrypt_value(
                key, citizen_id=citizen_id, field=name, version=version, plaintext=values.encode(spec, value)
            )
            blind = (
                self.keyring.blind_index(name, values.normalise_for_index(value)) if spec.searchable else None
            )
            await repository.insert_value(
                conn,
                citizen_id=citizen_id,
                field=name,
                version=version,
                owner=spec.owner,
                data_key_id=key.id,
                ciphertext=ciphertext,
                blind_index=blind,
                written_by=written_by,
                now=now,
            )
            versions[name] = version
        return versions

    async def register(self, access: Access, national_id: str, fields: Mapping[str, Any]) -> Registered:
        now = _now()
        async with self.database.engine.connect() as conn:
            catalog, _policy = await self._catalog_and_policy(conn, access)
        submitted = {NATIONAL_ID_FIELD: national_id, **fields}
        clean = self._validated(catalog, submitted, "fields")
        foreign = sorted(n for n in clean if (s := catalog.field(n)) and s.owner != access.department)
        decisions: dict[str, Decision] = {}
        if foreign:
            entry = self._entry(
                access,
                "register",
                citizen_id=None,
                catalog=catalog,
                requested=list(clean),
                released=[],
                decisions=decisions,
                purpose=None,
                status=403,
                decision="deny",
            )
            await self._refuse(
                entry,
                Forbidden(f"A registrar sets only its own department's fields, not: {', '.join(foreign)}"),
            )
        citizen_id = str(uuid.uuid4())
        async with self.database.engine.begin() as conn:
            # Insert first: on SQLite that takes the write lock, so the duplicate check
            # below sees every committed registration; on PostgreSQL an advisory lock on
            # the blind index does the same.
            await repository.insert_citizen(conn, citizen_id, access.principal.client_id, now)
            canonical = values.normalise_for_index(clean[NATIONAL_ID_FIELD])
            index = self.keyring.blind_index(NATIONAL_ID_FIELD, canonical)
            await _lock_blind_index(conn, index)
            if await self._find_by_national_id(conn, catalog, canonical):
                raise Conflict("A citizen with that national id is already registered.")
            await self._store_values(conn, catalog, citizen_id, clean, access.principal.client_id, now)
            await audit_service.append_in_transaction(
                conn,
                self._entry(
                    access,
                    "register",
                    citizen_id=citizen_id,
                    catalog=catalog,
                    requested=list(clean),
                    released=list(clean),
                    decisions=decisions,
                    purpose=None,
                    status=201,
                    decision="permit",
                ),
            )
        return Registered(id=citizen_id, status="active", version=1, fields=sorted(clean))

    async def write(
        self,
        access: Access,
        citizen_id: str,
        fields: Mapping[str, Any],
        *,
        reason: str,
        purpose: str | None,
        if_match: int | None,
    ) -> WriteOut:
        # The writer's reason is required but not stored: it is free text and may well
        # hold personal data ("moved in with her mother at ..."), which the audit must not.
        del reason
        now = _now()
        async with self.database.engine.connect() as conn:
            catalog, policy = await self._catalog_and_policy(conn, access)
        clean = self._validated(catalog, fields, "fields")
        _require_known(catalog, [], purpose, loc="fields")
        names = list(clean)
        denied: list[str] = []
        written: WriteOut | None = None
        async with self.database.engine.begin() as conn:
            citizen = await self._load_citizen(conn, citizen_id)
            context = self._context(access, purpose, citizen.status)
            decisions = self._write_decisions(catalog, policy, access, names, context, purpose)
            denied = [n for n in names if decisions[n].effect != "permit"]
            if not denied:
                death = catalog.death_field
                status = "deceased" if death is not None and death.name in clean else None
                bumped = await repository.bump_version(
                    conn, citizen_id, expected=if_match, now=now, status=status
                )
                if bumped is None:
                    raise StaleVersion(f"The record is no longer at version {if_match}; read it again.")
                versions = await self._store_values(
                    conn, catalog, citizen_id, clean, access.principal.client_id, now
                )
                entry = self._entry(
                    access,
                    "write",
                    citizen_id=citizen_id,
                    catalog=catalog,
                    requested=names,
                    released=names,
                    decisions=decisions,
                    purpose=purpose,
                    status=200,
                )
                # The change events, one per owning department, in this same transaction:
                # a write that rolls back tells no one. Field names only, never values.
                for owner, changed in _fields_by_owner(catalog, names).items():
                    await events_service.record_change(
                        conn, citizen_id=citizen_id, fields=changed, owner=owner, occurred_at=now
                    )
                # Last statement before commit: on PostgreSQL it holds the audit's order lock.
                await audit_service.append_in_transaction(conn, entry)
                written = WriteOut(
                    id=citizen_id, status=bumped.status, version=bumped.version, fields=versions
                )
        if written is not None:
            # Committed: wake feeds and dispatchers waiting in this process.
            events_service.notify()
            return written
        reasons = "; ".join(decisions[n].reason for n in denied)
        refusal = self._entry(
            access,
            "write",
            citizen_id=citizen_id,
            catalog=catalog,
            requested=names,
            released=[],
            decisions=decisions,
            purpose=purpose,
            status=403,
            decision="deny",
        )
        await self._refuse(refusal, NotPermitted(f"Not permitted to write {', '.join(denied)}: {reasons}"))

    @staticmethod
    def _write_decisions(
        catalog: Catalog,
        policy: CompiledPolicy,
        access: Access,
        names: Sequence[str],
        context: RequestContext,
        purpose: str | None,
    ) -> dict[str, Decision]:
        """An owner writes its own fields without naming a purpose; a delegate must name
        the purpose of its ``write`` agreement."""
        if purpose is not None:
            return policy.decide(access.department, "write", names, context)
        decisions: dict[str, Decision] = {}
        for name in names:
            spec = catalog.field(name)
            if spec is not None and spec.owner == access.department:
                decisions[name] = Decision(name, "permit", None, None, "owner")
            else:
                reason = f"{access.department} does not own {name}; a delegated write must name its purpose"
                decisions[name] = Decision(name, "deny", None, None, reason)
        return decisions

    # --- bulk registration (the demo's population) ---------------------------------------

    async def register_population(self, access: Access, citizens: Sequence[Mapping[str, Any]]) -> list[str]:
        """Register many citizens in one transaction, each with fields of any owner.

        For seeding a store (the demo, benchmarks), by an operator acting as ``access``.
        The same catalog validation, per-(citizen, owner) data keys under the owner's
        active KEK, AEAD and blind indexes as ``register`` and ``write``, and a
        ``register`` audit entry per citizen in the same transaction; but a few statements
        for the whole batch instead of several per value. Raises ``Conflict`` (nothing
        stored) if a national id is already registered or appears twice.
        """
        now = _now()
        async with self.database.engine.connect() as conn:
            catalog, _policy = await self._catalog_and_policy(conn, access)
        cleaned = [self._validated(catalog, submitted, "fields") for submitted in citizens]
        wanted = [values.normalise_for_index(clean.get(NATIONAL_ID_FIELD, "")) for clean in cleaned]
        compared = [blind_index.normalise(nid) for nid in wanted]
        if not all(wanted) or len(set(compared)) != len(compared):
            raise Conflict("Every citizen needs a national id, and no national id may appear twice.")
        ids = [str(uuid.uuid4()) for _ in cleaned]
        written_by = access.principal.client_id
        async with self.database.engine.begin() as conn:
            # The citizens first: on SQLite that takes the write lock before the check.
            await repository.insert_citizens(conn, ids, written_by, now)
            indexes = [self.keyring.blind_index(NATIONAL_ID_FIELD, nid) for nid in wanted]
            candidates = await repository.candidates_by_blind_indexes(conn, NATIONAL_ID_FIELD, indexes)
            # The index is truncated: a candidate is a duplicate only if it decrypts to one.
            existing = {
                blind_index.normalise(values.normalise_for_index(v))
                for v in (await self._decrypt(conn, catalog, candidates)).values()
            }
            if existing & set(compared):
                raise Conflict("A citizen in the batch is already registered.")
            owners_of = [sorted({s.owner for n in clean if (s := catalog.field(n))}) for clean in cleaned]
            keys = await self._new_data_keys(
                conn, [(cid, owner) for cid, owners in zip(ids, owners_of, strict=True) for owner in owners]
            )
            rows: list[dict[str, object]] = []
            for citizen_id, clean in zip(ids, cleaned, strict=True):
                for name, value in clean.items():
                    spec = catalog.field(name)
                    if spec is None:
                        continue
                    key = keys[(citizen_id, spec.owner)]
                    plaintext = values.encode(spec, value)
                    searchable = spec.searchable
                    rows.append(
                        {
                            "citizen_id": citizen_id,
                            "field": name,
                            "version": 1,
                            "owner": spec.owner,
                            "data_key_id": key.id,
                            "ciphertext": encrypt_value(
                                key, citizen_id=citizen_id, field=name, version=1, plaintext=plaintext
                            ),
                            "blind_index": (
                                self.keyring.blind_index(name, values.normalise_for_index(value))
                                if searchable
                                else None
                            ),
                            "is_current": True,
                            "written_by": written_by,
                            "written_at": now,
                        }
                    )
            await repository.insert_values(conn, rows)
            await audit_service.append_many_in_transaction(
                conn,
                [
                    self._entry(
                        access,
                        "register",
                        citizen_id=citizen_id,
                        catalog=catalog,
                        requested=list(clean),
                        released=list(clean),
                        decisions={},
                        purpose=None,
                        status=201,
                        decision="permit",
                    )
                    for citizen_id, clean in zip(ids, cleaned, strict=True)
                ],
            )
        return ids

    async def _new_data_keys(
        self, conn: AsyncConnection, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], DataKey]:
        """Fresh data keys for new (citizen, owner) pairs, wrapped by each owner's active KEK.

        The bulk form of ``Keyring.data_key_for_write`` for citizens created in this
        transaction (so none has a key yet): one insert and one select per batch."""
        keks = {owner: await self.keyring.active_kek(conn, owner) for owner in {o for _c, o in pairs}}
        materials = {pair: KeyMaterial(DataKey.generate_material()) for pair in pairs}
        await conn.execute(
            insert(DATA_KEYS),
            [
                {
                    "citizen_id": citizen_id,
                    "department": owner,
                    "kek_version": keks[owner].version,
                    "status": "active",
                    "wrapped_key": keks[owner].wrap(materials[(citizen_id, owner)], citizen_id),
                    "created_at": _now(),
                }
                for citizen_id, owner in pairs
            ],
        )
        keys: dict[tuple[str, str], DataKey] = {}
        citizen_ids = sorted({c for c, _o in pairs})
        for start in range(0, len(citizen_ids), 500):
            rows = await conn.execute(
                select(DATA_KEYS.c.id, DATA_KEYS.c.citizen_id, DATA_KEYS.c.department).where(
                    DATA_KEYS.c.citizen_id.in_(citizen_ids[start : start + 500]),
                    DATA_KEYS.c.status == "active",
                )
            )
            for key_id, citizen_id, owner in rows:
                pair = (citizen_id, owner)
                keys[pair] = DataKey(key_id, owner, keks[owner].version, materials[pair])
        return keys

    async def erase(
        self,
        access: Access,
        citizen_id: str,
        *,
        reason: ErasureReason,
        legal_basis: str,
        purpose: str | None = None,
    ) -> None:
        """Crypto-shred a citizen: only the department that owns ``national_id`` (the
        register), or a department holding an ``erase`` agreement on ``national_id`` (then
        naming that agreement's purpose). The reason (a fixed code, so no free text reaches
        the audit) and the stated legal basis are kept in the audit entry. A refusal is a
        403 whether or not the citizen exists, and is audited."""
        legal_basis = _legal_basis(legal_basis)
        now = _now()
        async with self.database.engine.begin() as conn:
            catalog, policy = await self._catalog_and_policy(conn, access)
            _require_known(catalog, [], purpose, loc="query")
            citizen = await repository.get_citizen(conn, citizen_id)
            decision = self._erase_decision(
                catalog, policy, access, purpose, citizen.status if citizen else None, reason, legal_basis
            )
            if decision.effect == "permit":
                await self._load_citizen(conn, citizen_id)
                await self.keyring.shred_citizen(conn, citizen_id)
                await repository.mark_erased(conn, citizen_id, now)
                await audit_service.append_in_transaction(
                    conn,
                    self._entry(
                        access,
                        "erase",
                        citizen_id=citizen_id,
                        catalog=catalog,
                        requested=[NATIONAL_ID_FIELD],
                        released=[],
                        decisions={NATIONAL_ID_FIELD: decision},
                        purpose=purpose,
                        status=204,
                        decision="permit",
                    ),
                )
                return
        refusal = self._entry(
            access,
            "erase",
            citizen_id=citizen_id,
            catalog=catalog,
            requested=[NATIONAL_ID_FIELD],
            released=[],
            decisions={NATIONAL_ID_FIELD: decision},
            purpose=purpose,
            status=403,
            decision="deny",
        )
        await self._refuse(refusal, NotPermitted(f"Not permitted to erase this citizen: {decision.reason}"))

    def _erase_decision(
        self,
        catalog: Catalog,
        policy: CompiledPolicy,
        access: Access,
        purpose: str | None,
        status: str | None,
        reason: ErasureReason,
        legal_basis: str,
    ) -> Decision:
        spec = catalog.field(NATIONAL_ID_FIELD)
        if spec is not None and spec.owner == access.department:
            return Decision(NATIONAL_ID_FIELD, "permit", None, None, f"owner; {reason}", legal_basis)
        if purpose is None:
            owner = spec.owner if spec else "the register"
            return Decision(
                NATIONAL_ID_FIELD,
                "deny",
                None,
                None,
                f"only {owner}, which owns {NATIONAL_ID_FIELD}, erases citizens; "
                "a department with an erase agreement must name its purpose",
            )
        decided = policy.decide(
            access.department, "erase", [NATIONAL_ID_FIELD], self._context(access, purpose, status)
        )[NATIONAL_ID_FIELD]
        if decided.effect != "permit":
            return decided
        return Decision(
            NATIONAL_ID_FIELD,
            "permit",
            decided.agreement,
            decided.version,
            f"{decided.reason}; {reason}",
            legal_basis,
        )


async def citizen_count(database: Database) -> int:
    """How many citizens are registered (any status). No field is read."""
    async with database.engine.connect() as conn:
        return await repository.count_citizens(conn)


def _may_know(
    policy: CompiledPolicy, access: Access, action: str, requested: Sequence[str], context: RequestContext
) -> bool:
    """Whether the caller may learn that a citizen exists when nothing it asked is allowed.

    It may when it may look citizens up for this purpose, or when it is a party to an
    agreement over one of the fields that just missed (it needs a case reference, has
    expired, or its condition does not hold for this citizen)."""
    lookup = policy.decide(access.department, "lookup", [NATIONAL_ID_FIELD], context)
    if lookup[NATIONAL_ID_FIELD].effect == "permit":
        return True
    explained = policy.explain(access.department, action, requested, context)
    return any(
        miss.effect == "permit" for explanation in explained.values() for miss in explanation.near_misses
    )


def _fields_by_owner(catalog: Catalog, names: Iterable[str]) -> dict[str, list[str]]:
    owners = catalog.field_owners
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(owners[name], []).append(name)
    return grouped


async def _lock_blind_index(conn: AsyncConnection, index: bytes) -> None:
    if conn.dialect.name == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(index[:8], "big", signed=True)
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _claims_outside_agreements(
    catalog: Catalog,
    claims: Mapping[str, Mapping[str, Any]],
    decisions: Mapping[str, Decision],
    allowed: Sequence[str],
    today: date,
) -> list[str]:
    """Why each claim outside what its deciding agreement fixes is refused; [] if none."""
    refusals: list[str] = []
    for name in allowed:
        fixed = decisions[name].allowed_claims
        spec = catalog.field(name)
        if fixed is None or spec is None:
            continue
        permitted = {
            (operator, values.operand(spec, threshold, today))
            for operator, thresholds in fixed.items()
            for threshold in thresholds
        }
        # An 'in' is a choice of 'eq' claims: each of its values must be a fixed 'eq'.
        asked = [
            (operator, values.operand(spec, operand, today))
            for op, raw in claims[name].items()
            for operator, operand in ([("eq", item) for item in raw] if op == "in" else [(op, raw)])
        ]
        if any(pair not in permitted for pair in asked):
            listed = ", ".join(f"{op} {t}" for op, thresholds in fixed.items() for t in thresholds)
            refusals.append(
                f"agreement {decisions[name].agreement} allows only these claims on {name}: {listed}"
            )
    return refusals


def _seconds_to_next_day(now: datetime) -> int:
    tomorrow = datetime.combine(now.date() + timedelta(days=1), time.min, tzinfo=UTC)
    return max(1, int((tomorrow - now).total_seconds()))


def _legal_basis(text: str) -> str:
    stripped = text.strip()
    if (
        not stripped
        or len(stripped) > 200
        or any(unicodedata.category(ch) in ("Cc", "Cf") for ch in stripped)
    ):
        raise ValidationFailed(
            "An erasure names its legal basis: 1 to 200 visible characters.",
            errors=[{"loc": ["query", "legal_basis"], "msg": "invalid legal basis"}],
        )
    return stripped


def _canonical_national_id(national_id: str) -> str:
    """The national id as registration stores it, or a 422 naming the rule (never the value)."""
    try:
        return values.identifier(national_id)
    except values.ValueRejected as exc:
        raise InvalidFieldValue(
            "The national id is not valid.",
            errors=[{"loc": ["body", NATIONAL_ID_FIELD], "msg": f"{NATIONAL_ID_FIELD} {exc}"}],
        ) from None


def _parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or len(cursor) > 9:
        raise ValidationFailed(
            "The cursor is not valid.", errors=[{"loc": ["query", "cursor"], "msg": "invalid"}]
        )
    return int(cursor)
