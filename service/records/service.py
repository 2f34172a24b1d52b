"""The records service: the parts the one access path to citizen data runs on, and the
steps every operation shares.

Every route that touches citizen data calls a function of ``reads.py`` or ``writes.py``
with a ``RecordsService``; each validates against the catalog (``validation.py``), decides
per field (policy), loads only the allowed ciphertexts, decrypts them, appends the audit
entry and waits until it is durable, then returns. If the audit cannot be written,
nothing is returned (``AuditUnavailable`` -> 503). Refused requests are audited too: an
attempt is an access.

The parts are injected: a server uses its engine, the raw-driver ``CitizenStore`` and
the batched ``AuditWriter``; ``RecordsService.in_transaction`` runs everything on one
connection instead (a test's rolled-back transaction, or a command's own transaction).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import NoReturn, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit import entries
from service.audit import writer as audit_writer
from service.audit.schemas import DECIDED_AS, Action, AuditEntry
from service.audit.schemas import Decision as AuditDecision
from service.auth.facts import RequestFacts
from service.cases import repository as cases_repository
from service.cases.errors import CaseRefRequired
from service.catalog.errors import CatalogMissing
from service.catalog.schemas import Catalog
from service.config import Settings
from service.consent import repository as consent_repository
from service.crypto import blind_index
from service.crypto.aead import DataKey, decrypt_value
from service.crypto.errors import DataKeyDestroyed
from service.crypto.keyring import Keyring
from service.db import savepoint
from service.errors import ServiceError
from service.observability import Metrics
from service.policy.engine import CompiledPolicy, Decision, RequestContext
from service.policy.service import PolicyHolder
from service.records import disclosure, repository, values
from service.records.errors import CitizenErased, CitizenNotFound
from service.records.repository import CitizenRow
from service.records.store import CitizenStore, CoreStore
from service.records.validation import NATIONAL_ID_FIELD


class Transactions(Protocol):
    """Where the service gets a connection: ``connect`` to read, ``begin`` to write."""

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]: ...

    def begin(self) -> AbstractAsyncContextManager[AsyncConnection]: ...


class AuditSink(Protocol):
    """Where reads append their entries; each call returns once they are durable."""

    async def append(self, entry: AuditEntry) -> int: ...

    async def append_many(self, entries: Sequence[AuditEntry]) -> list[int]: ...


class OneConnection:
    """``Transactions`` on one connection the caller owns: ``begin`` is a savepoint, so a
    refused write rolls back its part and the caller's transaction decides the rest."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        yield self.conn

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        async with savepoint(self.conn):
            yield self.conn


class AuditInTransaction:
    """An ``AuditSink`` that appends in the connection's transaction: durable when it commits."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def append(self, entry: AuditEntry) -> int:
        return await audit_writer.append_in_transaction(self.conn, entry)

    async def append_many(self, entries: Sequence[AuditEntry]) -> list[int]:
        return await audit_writer.append_many_in_transaction(self.conn, entries)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RecordsService:
    """The access path's parts. A server builds one per request from its long-lived parts."""

    transactions: Transactions
    keyring: Keyring
    audit: AuditSink
    store: CitizenStore
    # The app's holder, shared with the policy API: one compiled index per epoch.
    policy: PolicyHolder
    # Where verify counts repeated open claims (the probing metric); None: not counted.
    metrics: Metrics | None = None
    # Comparisons per (consumer, citizen, field) and UTC day that an agreement leaving its
    # claims open allows (``TELLONCE_VERIFY_UNCONSTRAINED_PER_DAY``).
    open_claims_per_day: int = Settings.model_fields["verify_unconstrained_per_day"].default
    # The time every decision is made at (``app.state.clock``; tests move it to expire consents).
    clock: Callable[[], datetime] = now

    @classmethod
    def in_transaction(cls, conn: AsyncConnection, keyring: Keyring, policy: PolicyHolder) -> RecordsService:
        """Everything on ``conn``: reads, writes and audit entries commit or roll back with it."""
        return cls(OneConnection(conn), keyring, AuditInTransaction(conn), CoreStore(conn), policy)

    # --- catalog and policy -------------------------------------------------------------

    async def snapshot(self, conn: AsyncConnection, facts: RequestFacts) -> tuple[Catalog, CompiledPolicy]:
        snapshot = await self.policy.snapshot(conn, facts.epoch_key)
        if snapshot.catalog is None:
            raise CatalogMissing("No catalog has been applied yet; run `tellonce policies apply DIR`.")
        return snapshot.catalog, snapshot.policy

    async def read_snapshot(self, facts: RequestFacts) -> tuple[Catalog, CompiledPolicy]:
        """Catalog and policy for a read: from memory when authentication's epoch key
        matches the compiled one, otherwise through a connection."""
        if facts.epoch_key is not None:
            snapshot = self.policy.cached(facts.epoch_key)
            if snapshot is not None and snapshot.catalog is not None:
                return snapshot.catalog, snapshot.policy
        async with self.transactions.connect() as conn:
            return await self.snapshot(conn, facts)

    def context(self, facts: RequestFacts, citizen_status: str | None) -> RequestContext:
        return decision_context(facts, citizen_status, self.clock())

    async def contexts_with_choices(
        self,
        contexts: Mapping[str, RequestContext],
        policy: CompiledPolicy,
        department: str,
        action: str,
        requested: Sequence[str],
        conn: AsyncConnection | None = None,
    ) -> dict[str, RequestContext]:
        """Each citizen's context with its consents and objections to the agreements that
        decide ``requested``: read from the database on every request, so a change takes
        effect on the next one in every process. No query when no such agreement applies."""
        needed = policy.choices_needed(department, action, requested)
        if not needed or not contexts:
            return dict(contexts)
        ids, agreements = list(contexts), sorted(needed)
        if conn is not None:
            rows = await consent_repository.choices(conn, ids, agreements)
        else:
            rows = await self.store.choices(ids, agreements)
        return with_choices(contexts, rows)

    # --- keys and decryption ------------------------------------------------------------

    async def decrypt(
        self, catalog: Catalog, rows: Sequence[repository.ValueRow], conn: AsyncConnection | None = None
    ) -> dict[tuple[str, str, int], values.JsonValue]:
        """The plaintext of ``rows`` by (citizen, field, version). Data keys come from the
        cache; a miss reads them on ``conn``, or on a connection of its own."""
        wanted = {row.data_key_id for row in rows}
        keys = {key_id: key for key_id in wanted if (key := self.keyring.data_key_cache.get(key_id))}
        if len(keys) < len(wanted):
            if conn is not None:
                keys = await self.keyring.data_keys(conn, wanted)
            else:
                async with self.transactions.connect() as own:
                    keys = await self.keyring.data_keys(own, wanted)
        return plaintexts(catalog, rows, keys)

    # --- audit --------------------------------------------------------------------------

    @staticmethod
    def entry(
        facts: RequestFacts,
        action: Action,
        *,
        citizen_id: str | None,
        catalog: Catalog,
        requested: Sequence[str],
        released: Sequence[str],
        decisions: Mapping[str, Decision],
        status: int,
        decision: AuditDecision | None = None,
        context: RequestContext | None = None,
    ) -> AuditEntry:
        """The audit entry; with ``context`` (every policy decision has one) it records
        every input the decision used, so the owner can re-decide it from the log alone."""
        return entries.records_access_entry(
            facts,
            action,
            citizen_id=citizen_id,
            catalog=catalog,
            requested=requested,
            released=released,
            decisions=decisions,
            purpose=facts.purpose,
            status=status,
            decision=decision,
            decided_at=context.time if context is not None else None,
            citizen_status=context.citizen_status if context is not None else None,
        )

    async def refuse(self, entry: AuditEntry, error: Exception) -> NoReturn:
        """Audit a refusal durably, then raise it."""
        await self.audit.append(entry)
        raise error

    async def require_case_ref(
        self,
        facts: RequestFacts,
        action: Action,
        citizen_id: str | None,
        catalog: Catalog,
        policy: CompiledPolicy,
        requested: Sequence[str],
        decisions: Mapping[str, Decision],
        context: RequestContext,
    ) -> None:
        """Audit and refuse (422) a request without ``X-Case-Ref`` that asks for a field a
        delayed-disclosure agreement would permit with one: such an agreement is used only
        under a case, which the consumer closes to let the citizen see its accesses.
        ``action`` is the audited one; agreements are asked under the policy action it was
        decided as (a batch-get's, ``read``), as the audit records it."""
        decided_as = DECIDED_AS.get(action, action)
        missing = policy.missing_case_ref(facts.department, decided_as, decisions, context)
        if not missing:
            return
        decisions = citing_missing_case_refs(decisions, missing)
        error = CaseRefRequired(
            f"An agreement with delayed disclosure covers {', '.join(sorted(missing))}: send the case "
            "reference in the X-Case-Ref header.",
            errors=[{"loc": ["header", "X-Case-Ref"], "msg": "a case reference is required"}],
        )
        await self.refuse_request(facts, action, citizen_id, catalog, requested, decisions, context, error)

    async def open_cases(
        self,
        facts: RequestFacts,
        decisions: Iterable[Decision],
        at: datetime,
        conn: AsyncConnection | None = None,
    ) -> None:
        """Record the request's case if a delayed-disclosure agreement permitted a field,
        before the access is audited: its department may then close it. A write opens it in
        ``conn``, its own transaction, where its audit entry is appended too."""
        if facts.case_ref is None or not any(d.disclosure_delay and d.permitted for d in decisions):
            return
        if conn is not None:
            await cases_repository.open_case(conn, facts.department, facts.case_ref, at)
            return
        async with self.transactions.begin() as own:
            await cases_repository.open_case(own, facts.department, facts.case_ref, at)

    async def refuse_nothing_allowed(
        self,
        facts: RequestFacts,
        action: Action,
        citizen_id: str,
        catalog: Catalog,
        policy: CompiledPolicy,
        requested: Sequence[str],
        decisions: Mapping[str, Decision],
        context: RequestContext,
    ) -> NoReturn:
        """Audit and raise ``disclosure.refusal``: 403 or 404."""
        error = disclosure.refusal(policy, facts.department, action, requested, decisions, context)
        await self.refuse_request(facts, action, citizen_id, catalog, requested, decisions, context, error)

    async def readable(
        self,
        facts: RequestFacts,
        action: Action,
        citizen_id: str,
        found: CitizenRow | None,
        catalog: Catalog,
        policy: CompiledPolicy,
        requested: Sequence[str],
        context: RequestContext,
    ) -> CitizenRow:
        """The citizen a read may go on with (``disclosure.readable``); else 404 for an
        unknown citizen, and for an erased one the audited refusal (``refuse_erased``):
        410 to a caller that may know it existed, the 404 of an unknown id to any other."""
        reason = disclosure.unavailable_reason(found, policy, facts.department, action, requested, context)
        if found is not None and reason is not None:
            await self.refuse_erased(facts, action, citizen_id, catalog, policy, requested, context)
        return disclosure.readable(found, reason)

    async def refuse_erased(
        self,
        facts: RequestFacts,
        action: Action,
        citizen_id: str,
        catalog: Catalog,
        policy: CompiledPolicy,
        requested: Sequence[str],
        context: RequestContext,
    ) -> NoReturn:
        """Audit a read of an erased citizen's record as refused, then raise the refusal:
        410 if the caller may know the citizen existed (``disclosure.may_know``), else the
        404 an unknown id gets, as a live citizen's record is refused to such a caller
        (audited too). An attempt is an access, and one after the erasure is what an
        auditor looks for. The entry is under the citizen's id with its status
        (``context``, erased), nothing released (an erased citizen has no values), and
        ``erased_decisions``."""
        decisions = self.erased_decisions(facts, action, policy, requested, context)
        error: ServiceError = (
            CitizenErased(disclosure.ERASED)
            if disclosure.may_know(policy, facts.department, action, requested, context)
            else CitizenNotFound(disclosure.NOT_KNOWN)
        )
        await self.refuse_request(facts, action, citizen_id, catalog, requested, decisions, context, error)

    @staticmethod
    def erased_decisions(
        facts: RequestFacts,
        action: Action,
        policy: CompiledPolicy,
        requested: Sequence[str],
        context: RequestContext,
    ) -> dict[str, Decision]:
        """The decisions a request for an erased citizen's fields is audited with: the
        policy's, as a refusal records them (``refused_decisions``), so the entry names the
        agreements the request was made under."""
        decisions = policy.decide(facts.department, DECIDED_AS.get(action, action), requested, context)
        return RecordsService.refused_decisions(facts, action, policy, decisions, context)

    @staticmethod
    def refused_decisions(
        facts: RequestFacts,
        action: Action,
        policy: CompiledPolicy,
        decisions: Mapping[str, Decision],
        context: RequestContext,
    ) -> dict[str, Decision]:
        """``decisions`` as a refusal for another reason than the case reference records
        them: citing, for a field a delayed-disclosure agreement would permit under the case
        reference the request lacks, that agreement (``citing_missing_case_refs``)."""
        decided_as = DECIDED_AS.get(action, action)
        missing = policy.missing_case_ref(facts.department, decided_as, decisions, context)
        return citing_missing_case_refs(decisions, missing)

    async def refuse_request(
        self,
        facts: RequestFacts,
        action: Action,
        citizen_id: str | None,
        catalog: Catalog,
        requested: Sequence[str],
        decisions: Mapping[str, Decision],
        context: RequestContext,
        error: ServiceError,
    ) -> NoReturn:
        """Audit the request as refused with ``error``'s status, nothing released, then
        raise ``error`` (``refuse``)."""
        entry = self.entry(
            facts,
            action,
            citizen_id=citizen_id,
            catalog=catalog,
            requested=requested,
            released=[],
            decisions=decisions,
            status=error.status,
            context=context,
        )
        await self.refuse(entry, error)


def citing_missing_case_refs(
    decisions: Mapping[str, Decision], missing: Mapping[str, Decision]
) -> dict[str, Decision]:
    """``decisions`` with each field of ``missing`` (``CompiledPolicy.missing_case_ref``)
    decided as the delayed-disclosure agreement that would permit it with a case reference,
    denied. A refusal cites the agreement it was refused under, so the citizen is shown it
    no sooner than an access under that agreement (``service.cases.rules``)."""
    return {**decisions, **{name: replace(missing[name], effect="deny") for name in missing}}


def with_choices(
    contexts: Mapping[str, RequestContext], rows: Sequence[consent_repository.ChoiceRow]
) -> dict[str, RequestContext]:
    """Each citizen's context with its choices among ``rows``."""
    return {
        citizen_id: consent_repository.context_with_choices(context, citizen_id, rows)
        for citizen_id, context in contexts.items()
    }


def decision_context(facts: RequestFacts, citizen_status: str | None, time: datetime) -> RequestContext:
    """The context a decision on ``facts``'s request is made in, at ``time``."""
    return RequestContext(
        purpose=facts.purpose or "", case_ref=facts.case_ref, time=time, citizen_status=citizen_status
    )


def plaintexts(
    catalog: Catalog, rows: Sequence[repository.ValueRow], keys: Mapping[int, DataKey]
) -> dict[tuple[str, str, int], values.JsonValue]:
    """Each row's value by (citizen, field, version), decrypted with its data key."""
    plain: dict[tuple[str, str, int], values.JsonValue] = {}
    for row in rows:
        key = keys.get(row.data_key_id)
        spec = catalog.field(row.field)
        if key is None or spec is None:
            continue
        data = decrypt_value(
            key, citizen_id=row.citizen_id, field=row.field, version=row.version, ciphertext=row.ciphertext
        )
        plain[(row.citizen_id, row.field, row.version)] = values.decode(spec, data)
    return plain


async def registered_national_ids(
    conn: AsyncConnection,
    keyring: Keyring,
    catalog: Catalog,
    national_ids: Sequence[str],
    indexes: Sequence[bytes] | None = None,
) -> dict[str, str]:
    """Registered citizens among ``national_ids``, as {comparable national id: citizen id}.

    Found by blind index (``indexes``, if the caller has computed them already), then
    confirmed by decrypting: the index is truncated, so a candidate may be another value.
    A candidate whose data key is shredded was erased after the search saw its index (an
    erasure drops it): erased, it holds no national id, as if the search had come later."""
    if catalog.field(NATIONAL_ID_FIELD) is None or not national_ids:
        return {}
    if indexes is None:
        indexes = [keyring.blind_index(NATIONAL_ID_FIELD, n) for n in national_ids]
    candidates, keys = await with_live_keys(
        conn, keyring, await repository.candidates_by_blind_indexes(conn, NATIONAL_ID_FIELD, indexes)
    )
    wanted = {comparable_national_id(n) for n in national_ids}
    found: dict[str, str] = {}
    for (citizen_id, _field, _version), value in plaintexts(catalog, candidates, keys).items():
        if (key := comparable_national_id(value)) in wanted:
            found[key] = citizen_id
    return found


async def with_live_keys(
    conn: AsyncConnection, keyring: Keyring, rows: Sequence[repository.ValueRow]
) -> tuple[list[repository.ValueRow], dict[int, DataKey]]:
    """``rows`` without those whose data key was destroyed, and the data keys of the rest.

    A destroyed key means its citizen was erased after the rows were read (on PostgreSQL
    each statement sees what had committed when it began): erased, the citizen holds no
    values, as if the rows had been read after the erasure."""
    kept = list(rows)
    while kept:
        try:
            return kept, await keyring.data_keys(conn, {row.data_key_id for row in kept})
        except DataKeyDestroyed as shredded:
            kept = [row for row in kept if row.data_key_id not in shredded.key_ids]
    return [], {}


def comparable_national_id(value: values.JsonValue) -> str:
    """A national id as the duplicate check and lookup compare it: under the
    normalisation the blind index uses."""
    return blind_index.normalise(values.normalise_for_index(value))
