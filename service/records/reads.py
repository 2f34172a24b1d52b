"""The reads of citizen data: read, batch-get, verify, history and lookup.

Each decides per field, loads only what is allowed, decrypts it, and returns only after
its audit entry is durable (``RecordsService.audit``). The rules on what a caller may
learn about a citizen it is refused live in ``disclosure.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from service import tracing
from service.audit.schemas import Action, AuditEntry, Reason
from service.auth.facts import RequestFacts
from service.catalog.schemas import Catalog
from service.consent.repository import ChoiceRow
from service.crypto.errors import DataKeyDestroyed
from service.errors import TooManyRequests
from service.policy.engine import CompiledPolicy, Decision, RequestContext
from service.records import claims as claim_limits
from service.records import disclosure, repository, values
from service.records.errors import CitizenNotFound, NotPermitted
from service.records.repository import CitizenRow, ValueRow
from service.records.schemas import (
    BatchItem,
    BatchPage,
    CitizenOut,
    HistoryItem,
    HistoryPage,
    LookupOut,
    VerifyOut,
    Withheld,
)
from service.records.service import (
    RecordsService,
    comparable_national_id,
    registered_national_ids,
    with_choices,
)
from service.records.validation import (
    NATIONAL_ID_FIELD,
    canonical_national_id,
    parse_cursor,
    requested_fields,
    require_known,
    validate_claims,
)


@dataclass(frozen=True)
class _Decided:
    """One citizen as a read found it, and the decision on each field asked for."""

    citizen: CitizenRow
    context: RequestContext
    decisions: dict[str, Decision]
    allowed: list[str]


async def _decide(
    records: RecordsService,
    facts: RequestFacts,
    action: Action,
    citizen_id: str,
    requested: list[str],
    catalog: Catalog,
    policy: CompiledPolicy,
) -> _Decided:
    """Find the citizen (404, or an audited 410), decide each field, refuse (audited 403/404)
    if nothing is allowed."""
    # The citizen's consents and objections, when an agreement with a choice decides one of
    # the fields: read with the citizen (one round trip on PostgreSQL), on every request.
    needed = policy.choices_needed(facts.department, action, requested)
    if needed:
        citizens, choices = await records.store.citizens_with_choices([citizen_id], sorted(needed))
    else:
        citizens, choices = await records.store.citizens([citizen_id]), []
    return await _decide_found(
        records, facts, action, citizen_id, requested, catalog, policy, citizens.get(citizen_id), choices
    )


async def _decide_found(
    records: RecordsService,
    facts: RequestFacts,
    action: Action,
    citizen_id: str,
    requested: list[str],
    catalog: Catalog,
    policy: CompiledPolicy,
    found: CitizenRow | None,
    choices: Sequence[ChoiceRow],
) -> _Decided:
    """``_decide`` on the citizen and choices already read."""
    context = records.context(facts, found.status if found else None)
    citizen = await records.readable(facts, action, citizen_id, found, catalog, policy, requested, context)
    if choices:
        context = with_choices({citizen_id: context}, choices)[citizen_id]
    with tracing.span("policy.decide", fields=len(requested)):
        decisions = policy.decide(facts.department, action, requested, context)
    await records.require_case_ref(facts, action, citizen_id, catalog, policy, requested, decisions, context)
    allowed = disclosure.allowed(requested, decisions)
    if not allowed:
        await records.refuse_nothing_allowed(
            facts, action, citizen_id, catalog, policy, requested, decisions, context
        )
    return _Decided(citizen, context, decisions, allowed)


# The status the one-statement read assumes, then checks: the usual one. A citizen found
# with another (deceased is readable too) is decided again for that status.
ACTIVE = "active"


async def _decide_and_load(
    records: RecordsService,
    facts: RequestFacts,
    action: Action,
    citizen_id: str,
    requested: list[str],
    catalog: Catalog,
    policy: CompiledPolicy,
) -> tuple[_Decided, list[ValueRow]]:
    """``_decide``, then the allowed current value rows, in one statement when it can.

    When no citizen's choice decides a field, the fields are decided first as for an active
    citizen (the status is the only thing the decision needs from the citizen's row), and
    one statement returns the citizen and the current values of the fields allowed, with
    the values only while the citizen is active: so only allowed ciphertexts are loaded,
    and on PostgreSQL the read is one round trip instead of two. A citizen found with
    another status, or not found, is decided again as ``_decide`` does, and what that
    allows is loaded on its own. With choices to read, or nothing allowed, it is
    ``_decide`` and a load."""
    department = facts.department
    if not policy.choices_needed(department, action, requested):
        context = records.context(facts, ACTIVE)
        with tracing.span("policy.decide", fields=len(requested)):
            decisions = policy.decide(department, action, requested, context)
        allowed = disclosure.allowed(requested, decisions)
        if allowed:
            with tracing.span("records.load", fields=len(allowed)):
                found, rows = await records.store.citizen_with_values(citizen_id, ACTIVE, allowed)
            if found is not None and found.status == ACTIVE:
                reason = disclosure.unavailable_reason(found, policy, department, action, requested, context)
                citizen = disclosure.readable(found, reason)
                await records.require_case_ref(
                    facts, action, citizen_id, catalog, policy, requested, decisions, context
                )
                return _Decided(citizen, context, decisions, allowed), rows
            decided = await _decide_found(
                records, facts, action, citizen_id, requested, catalog, policy, found, []
            )
            return decided, await _rows(records, citizen_id, decided.allowed)
    decided = await _decide(records, facts, action, citizen_id, requested, catalog, policy)
    return decided, await _rows(records, citizen_id, decided.allowed)


async def _rows(records: RecordsService, citizen_id: str, allowed: list[str]) -> list[ValueRow]:
    with tracing.span("records.load", fields=len(allowed)):
        return await records.store.current_values([citizen_id], allowed)


async def _load(
    records: RecordsService, catalog: Catalog, citizen_id: str, allowed: list[str]
) -> tuple[list[ValueRow], dict[tuple[str, str, int], values.JsonValue]]:
    """Only the allowed current values, and their plaintext."""
    with tracing.span("records.load", fields=len(allowed)):
        rows = await records.store.current_values([citizen_id], allowed)
    with tracing.span("crypto.decrypt", values=len(rows)):
        return rows, await records.decrypt(catalog, rows)


async def _refuse_erased(
    records: RecordsService,
    facts: RequestFacts,
    action: Action,
    citizen_id: str,
    catalog: Catalog,
    requested: Sequence[str],
    policy: CompiledPolicy,
) -> NoReturn:
    """Raise what a request sent after the citizen's erasure gets: the audited 410, or 404."""
    erased = CitizenRow(citizen_id, "erased", 0)
    context = records.context(facts, erased.status)
    await records.readable(facts, action, citizen_id, erased, catalog, policy, requested, context)
    raise CitizenNotFound(disclosure.NOT_KNOWN)  # not reached: an erased citizen is not readable


async def _audit_release(
    records: RecordsService,
    facts: RequestFacts,
    action: Action,
    citizen_id: str,
    catalog: Catalog,
    requested: list[str],
    released: list[str],
    decisions: Mapping[str, Decision],
    context: RequestContext | None = None,
) -> None:
    """Append the entry of a read that released ``released``, durably."""
    entry = records.entry(
        facts,
        action,
        context=context,
        citizen_id=citizen_id,
        catalog=catalog,
        requested=requested,
        released=released,
        decisions=decisions,
        status=200,
    )
    with tracing.span("audit.append"):
        await records.audit.append(entry)


async def read(
    records: RecordsService, facts: RequestFacts, citizen_id: str, fields: Sequence[str] | None
) -> CitizenOut:
    """One citizen's allowed fields for the stated purpose; 403/404 if none, 410 if erased."""
    purpose = facts.stated_purpose(("query", "purpose"))
    catalog, policy = await records.read_snapshot(facts)
    requested = requested_fields(catalog, fields)
    require_known(catalog, requested, purpose, fields_at=("query", "fields"), purpose_at=("query", "purpose"))
    decided, rows = await _decide_and_load(records, facts, "read", citizen_id, requested, catalog, policy)
    with tracing.span("crypto.decrypt", values=len(rows)):
        try:
            plain = await records.decrypt(catalog, rows)
        except DataKeyDestroyed:
            await _refuse_erased(records, facts, "read", citizen_id, catalog, requested, policy)
    current = {(row.citizen_id, row.field): row for row in rows}
    released = disclosure.released(catalog, citizen_id, decided.allowed, current, plain)
    await records.open_cases(facts, decided.decisions.values(), decided.context.time)
    await _audit_release(
        records,
        facts,
        "read",
        citizen_id,
        catalog,
        requested,
        decided.allowed,
        decided.decisions,
        decided.context,
    )
    return CitizenOut(
        id=citizen_id,
        status=decided.citizen.status,
        version=decided.citizen.version,
        fields=released,
        withheld=disclosure.withheld(requested, decided.decisions),
    )


async def batch_get(
    records: RecordsService, facts: RequestFacts, ids: Sequence[str], fields: Sequence[str] | None
) -> BatchPage:
    """Many citizens, decided field by field for each, one audit entry per citizen a read
    would audit.

    A citizen read would answer 404 or 410 for gets an item with no fields and every
    field withheld with the reason read's answer gives (unknown, or erased); one the
    caller may not learn exists gets exactly the item of a made-up id. An erased citizen
    is audited with read's status, 410 if the caller may know it existed and 404 if not,
    and so is one that exists but may not be known (404); an unknown id has no entry, as
    a read of it has none."""
    purpose = facts.stated_purpose(("body", "purpose"))
    unique_ids = list(dict.fromkeys(ids))
    catalog, policy = await records.read_snapshot(facts)
    requested = requested_fields(catalog, fields)
    require_known(catalog, requested, purpose, fields_at=("body", "fields"), purpose_at=("body", "purpose"))
    found = await records.store.citizens(unique_ids)
    decisions_by_citizen: dict[str, dict[str, Decision]] = {}
    # Why a citizen gets nothing without a decision: unknown, or erased (as read says).
    unavailable: dict[str, str] = {}
    # Citizens refused as a read would refuse them, audited with read's status and the
    # decisions: 404 for those the caller may not learn exist or existed (answered like
    # unknown ids), 410 for those it may know were erased.
    refused: dict[str, tuple[int, dict[str, Decision]]] = {}
    contexts: dict[str, RequestContext] = {}
    allowed_by_citizen: dict[str, frozenset[str]] = {}
    for citizen_id in unique_ids:
        citizen = found.get(citizen_id)
        contexts[citizen_id] = records.context(facts, citizen.status if citizen else None)
    contexts = await records.contexts_with_choices(
        {i: c for i, c in contexts.items() if i in found}, policy, facts.department, "read", requested
    ) | {i: c for i, c in contexts.items() if i not in found}

    def answered_unavailable(citizen_id: str, citizen: CitizenRow | None) -> bool:
        """Whether ``citizen`` gets nothing without a decision (unknown, or erased, as a
        read says); one erased is refused, and audited, with read's status: 410 if the
        caller may know it existed, else 404."""
        context = contexts[citizen_id]
        reason = disclosure.unavailable_reason(citizen, policy, facts.department, "read", requested, context)
        if reason is None:
            return False
        unavailable[citizen_id] = reason
        if citizen is not None:
            decisions = records.erased_decisions(facts, "batch-get", policy, requested, context)
            refused[citizen_id] = (410 if reason == disclosure.ERASED_REASON else 404, decisions)
        return True

    for citizen_id in unique_ids:
        context = contexts[citizen_id]
        if answered_unavailable(citizen_id, found.get(citizen_id)):
            continue
        decisions = policy.decide(facts.department, "read", requested, context)
        await records.require_case_ref(
            facts, "batch-get", citizen_id, catalog, policy, requested, decisions, context
        )
        allowed = disclosure.allowed(requested, decisions)
        if not allowed and not disclosure.may_know(policy, facts.department, "read", requested, context):
            # Where a single read would answer 404, this citizen looks exactly like an
            # unknown id: the withheld reasons would otherwise tell them apart.
            refused[citizen_id] = (404, decisions)
            unavailable[citizen_id] = disclosure.NOT_KNOWN_REASON
            continue
        decisions_by_citizen[citizen_id] = decisions
        allowed_by_citizen[citizen_id] = frozenset(allowed)
    # One query for the fields any of them may be given, then each citizen's own allowed
    # fields only: a field allowed for one is never decrypted for another it is denied for.
    rows = [
        row
        for row in await records.store.current_values(
            list(decisions_by_citizen), sorted(frozenset[str]().union(*allowed_by_citizen.values()))
        )
        if row.field in allowed_by_citizen[row.citizen_id]
    ]
    while True:
        try:
            plain = await records.decrypt(catalog, rows)
            break
        except DataKeyDestroyed as shredded:
            # Erased since their status was read: those citizens are answered as erased, as
            # a read would be now, and the rest of the batch is still served.
            erased = {row.citizen_id for row in rows if row.data_key_id in shredded.key_ids}
            if not erased:
                raise
            for citizen_id in erased:
                del decisions_by_citizen[citizen_id]
                contexts[citizen_id] = records.context(facts, "erased")
                answered_unavailable(citizen_id, CitizenRow(citizen_id, "erased", 0))
            rows = [row for row in rows if row.citizen_id not in erased]
    current = {(row.citizen_id, row.field): row for row in rows}
    items: list[BatchItem] = []
    entries: list[AuditEntry] = []
    for citizen_id in unique_ids:
        decided = decisions_by_citizen.get(citizen_id)
        if decided is None:
            withheld = [Withheld(field=n, reason=unavailable[citizen_id]) for n in requested]
            items.append(BatchItem(id=citizen_id, fields={}, withheld=withheld))
            if citizen_id not in refused:
                continue  # unknown, or erased and not known to the caller: as for a single read
            (status, decisions), allowed = refused[citizen_id], []
        else:
            decisions, allowed, status = decided, disclosure.allowed(requested, decided), 200
            released = disclosure.released(catalog, citizen_id, allowed, current, plain)
            withheld = disclosure.withheld(requested, decisions)
            items.append(BatchItem(id=citizen_id, fields=released, withheld=withheld))
        entries.append(
            records.entry(
                facts,
                "batch-get",
                context=contexts[citizen_id],
                citizen_id=citizen_id,
                catalog=catalog,
                requested=requested,
                released=allowed,
                decisions=decisions,
                status=status,
            )
        )
    if entries:
        decided_any = (d for decisions in decisions_by_citizen.values() for d in decisions.values())
        await records.open_cases(facts, decided_any, records.context(facts, None).time)
        await records.audit.append_many(entries)
    return BatchPage(items=items, next_cursor=None)


async def lookup(records: RecordsService, facts: RequestFacts, national_id: str) -> LookupOut:
    """A citizen's id by national id; 404 alike for unknown, erased and not allowed."""
    purpose = facts.stated_purpose(("body", "purpose"))
    async with records.transactions.connect() as conn:
        catalog, policy = await records.snapshot(conn, facts)
        require_known(catalog, [], purpose, purpose_at=("body", "purpose"))
        canonical = canonical_national_id(national_id)
        # The citizen is found first, whether or not the caller may be told, so that the
        # decision sees its status as a read's does (a condition on citizen.status applies
        # to lookups too), and a refusal costs the same search as an answer.
        wanted = values.normalise_for_index(canonical)
        found = await registered_national_ids(conn, records.keyring, catalog, [wanted])
        citizen_id = found.get(comparable_national_id(wanted))
        citizen = None
        if citizen_id is not None:
            citizen = (await repository.get_citizens(conn, [citizen_id])).get(citizen_id)
            if citizen is None or disclosure.erased(citizen):
                citizen, citizen_id = None, None
        context = records.context(facts, citizen.status if citizen is not None else None)
        decisions = policy.decide(facts.department, "lookup", [NATIONAL_ID_FIELD], context)
        if not decisions[NATIONAL_ID_FIELD].permitted:
            await records.require_case_ref(
                facts, "lookup", citizen_id, catalog, policy, [NATIONAL_ID_FIELD], decisions, context
            )
        told = citizen_id is not None and decisions[NATIONAL_ID_FIELD].effect == "permit"
    # A refused lookup of a registered citizen is audited under that citizen, so it is on
    # their access log as a refused read is; the caller is answered as for an unknown id.
    entry = records.entry(
        facts,
        "lookup",
        context=context,
        citizen_id=citizen_id,
        catalog=catalog,
        requested=[NATIONAL_ID_FIELD],
        released=[NATIONAL_ID_FIELD] if told else [],
        decisions=decisions,
        status=200 if told else 404,
    )
    if citizen_id is None or not told:
        # Unknown and not allowed give the same answer.
        await records.refuse(entry, CitizenNotFound("No citizen with that national id is known to you."))
    await records.open_cases(facts, decisions.values(), context.time)
    await records.audit.append(entry)
    return LookupOut(id=citizen_id)


async def verify(
    records: RecordsService, facts: RequestFacts, citizen_id: str, claims: Mapping[str, Mapping[str, Any]]
) -> VerifyOut:
    """Whether each claim holds, as booleans; the values never leave. What may be asked is
    limited (``claims.py``): a claim the agreement does not fix is 403, open claims past
    the daily limit are 429."""
    purpose = facts.stated_purpose(("body", "purpose"))
    catalog, policy = await records.read_snapshot(facts)
    requested = list(claims)
    require_known(catalog, requested, purpose, fields_at=("body", "claims"), purpose_at=("body", "purpose"))
    validate_claims(catalog, claims, ("body", "claims"))
    decided = await _decide(records, facts, "verify", citizen_id, requested, catalog, policy)
    decisions, allowed, context = decided.decisions, decided.allowed, decided.context
    # A field the caller may read outright has nothing for verify to protect. Decided with
    # the citizen's choices on the read agreements, not the verify ones: an objection to
    # an objectable read agreement leaves the field unreadable, so its claims count.
    read_context = (
        await records.contexts_with_choices({citizen_id: context}, policy, facts.department, "read", allowed)
    )[citizen_id]
    readable = {
        n for n, d in policy.decide(facts.department, "read", allowed, read_context).items() if d.permitted
    }

    def entry(status: int, released: Sequence[str], flags: Sequence[Reason] = ()) -> AuditEntry:
        made = records.entry(
            facts,
            "verify",
            context=context,
            citizen_id=citizen_id,
            catalog=catalog,
            requested=requested,
            released=released,
            decisions=decisions,
            status=status,
            decision=None if status == 200 else "deny",
        )
        return made.model_copy(update={"reasons": [*made.reasons, *flags]}) if flags else made

    today = context.time.date()
    outside = claim_limits.outside_agreements(catalog, claims, decisions, allowed, today)
    if outside:
        await records.refuse(entry(403, []), NotPermitted("; ".join(outside)))
    open_fields = [
        name
        for name in allowed
        if decisions[name].agreement is not None
        and decisions[name].allowed_claims is None
        and name not in readable
    ]
    flags, limited = await claim_limits.count_open_claims(
        records, facts, citizen_id, claims, open_fields, today
    )
    if limited:
        await records.refuse(
            entry(429, [], flags),
            TooManyRequests(
                claim_limits.seconds_to_next_day(context.time),
                f"The daily limit of {records.open_claims_per_day} open comparisons per citizen and field is "
                f"reached for {', '.join(limited)}; ask a claim your agreement fixes, or wait until "
                "the next UTC day.",
            ),
        )
    try:
        rows, plain = await _load(records, catalog, citizen_id, allowed)
    except DataKeyDestroyed:
        await _refuse_erased(records, facts, "verify", citizen_id, catalog, requested, policy)
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
    await records.open_cases(facts, decisions.values(), context.time)
    await records.audit.append(entry(200, allowed, flags))
    return VerifyOut(results=results, withheld=disclosure.withheld(requested, decisions))


async def history(
    records: RecordsService,
    facts: RequestFacts,
    citizen_id: str,
    field: str,
    *,
    cursor: str | None,
    limit: int,
) -> HistoryPage:
    """Earlier versions of one field, newest first, ``limit`` a page."""
    purpose = facts.stated_purpose(("query", "purpose"))
    before = parse_cursor(cursor)
    async with records.transactions.connect() as conn:
        catalog, policy = await records.snapshot(conn, facts)
        require_known(
            catalog,
            [field],
            purpose,
            fields_at=("path", "field"),
            positional=False,
            purpose_at=("query", "purpose"),
        )
        found = (await repository.get_citizens(conn, [citizen_id])).get(citizen_id)
        context = records.context(facts, found.status if found else None)
        await records.readable(facts, "history", citizen_id, found, catalog, policy, [field], context)
        chosen = await records.contexts_with_choices(
            {citizen_id: context}, policy, facts.department, "history", [field], conn
        )
        context = chosen[citizen_id]
        decisions = policy.decide(facts.department, "history", [field], context)
        await records.require_case_ref(
            facts, "history", citizen_id, catalog, policy, [field], decisions, context
        )
        if decisions[field].effect != "permit":
            await records.refuse_nothing_allowed(
                facts, "history", citizen_id, catalog, policy, [field], decisions, context
            )
        rows = await repository.history(conn, citizen_id, field, before_version=before, limit=limit + 1)
        page, more = rows[:limit], len(rows) > limit
        try:
            plain = await records.decrypt(catalog, page, conn)
        except DataKeyDestroyed:
            await _refuse_erased(records, facts, "history", citizen_id, catalog, [field], policy)
    await records.open_cases(facts, decisions.values(), context.time)
    await _audit_release(records, facts, "history", citizen_id, catalog, [field], [field], decisions, context)
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
