"""The writes of citizen data: register, write and erase.

A write's audit entry and its change events go in the write's own transaction, so a
write that rolls back leaves no trace and one that commits is accounted for.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit import writer as audit_writer
from service.audit.schemas import AuditEntry
from service.auth.facts import RequestFacts
from service.catalog.schemas import Catalog
from service.crypto.aead import DataKey, encrypt_value
from service.crypto.blind_index import NORMALISATION_VERSION
from service.crypto.keyring import Keyring
from service.errors import Conflict, Forbidden, Loc, ServiceError
from service.etags import IfMatch
from service.events import service as events_service
from service.policy.engine import CompiledPolicy, Decision, RequestContext
from service.records import disclosure, repository, values
from service.records.errors import (
    CitizenErased,
    CitizenNotFound,
    InvalidFieldValue,
    NotPermitted,
    StaleVersion,
)
from service.records.schemas import ErasureReason, Registered, WriteOut
from service.records.service import (
    RecordsService,
    comparable_national_id,
    now,
    registered_national_ids,
)
from service.records.validation import NATIONAL_ID_FIELD, require_known, validated_values
from service.records.validation import legal_basis as validated_legal_basis


def encrypted_rows(
    keyring: Keyring,
    catalog: Catalog,
    citizen_id: str,
    clean: Mapping[str, values.JsonValue],
    keys: Mapping[str, DataKey],
    versions: Mapping[str, int],
    written_by: str,
    written_at: datetime,
) -> list[tuple[object, ...]]:
    """The current ``field_values`` rows of one citizen's values, as tuples in
    ``repository.VALUE_INSERT_COLUMNS`` order: each encrypted under its owner's data key
    (``keys``, by owner) for this exact (citizen, field, version, key), with a blind index
    if the field is searchable. The one place values are encrypted."""
    rows: list[tuple[object, ...]] = []
    for name, value in clean.items():
        spec = catalog.field(name)
        if spec is None:
            continue
        key, version = keys[spec.owner], versions[name]
        ciphertext = encrypt_value(
            key, citizen_id=citizen_id, field=name, version=version, plaintext=values.encode(spec, value)
        )
        index = keyring.blind_index(name, values.normalise_for_index(value)) if spec.searchable else None
        rows.append(
            (
                citizen_id,
                name,
                version,
                spec.owner,
                key.id,
                ciphertext,
                index,
                NORMALISATION_VERSION,
                True,
                written_by,
                written_at,
            )
        )
    return rows


async def store_values(
    records: RecordsService,
    conn: AsyncConnection,
    catalog: Catalog,
    citizen_id: str,
    clean: Mapping[str, values.JsonValue],
    written_by: str,
    written_at: datetime,
) -> dict[str, int]:
    """Store each value as its field's next version; return the versions written."""
    owners = sorted({spec.owner for name in clean if (spec := catalog.field(name))})
    keys = {owner: await records.keyring.data_key_for_write(conn, citizen_id, owner) for owner in owners}
    versions = {
        name: await repository.retire_current(conn, citizen_id, name) + 1
        for name in clean
        if catalog.field(name)
    }
    rows = encrypted_rows(records.keyring, catalog, citizen_id, clean, keys, versions, written_by, written_at)
    await repository.insert_values(conn, rows)
    return versions


def status_written(catalog: Catalog, names: Iterable[str]) -> str | None:
    """The status storing values of ``names`` gives a citizen: deceased when the catalog's
    death field is among them (at registration as in a later write), else unchanged."""
    death = catalog.death_field
    return "deceased" if death is not None and death.name in names else None


# A registration sends the national id beside ``fields``, at the top of its body.
_TOP_LEVEL_NATIONAL_ID: Mapping[str, Loc] = {NATIONAL_ID_FIELD: ("body", NATIONAL_ID_FIELD)}


async def register(
    records: RecordsService, facts: RequestFacts, national_id: str, fields: Mapping[str, Any]
) -> Registered:
    """A new citizen with the registrar's own fields; 409 if the national id exists."""
    if NATIONAL_ID_FIELD in fields:
        # Two national ids in one request: neither silently wins.
        raise InvalidFieldValue(
            "The national id is given once, at the top level, not among the fields.",
            errors=[
                {"loc": ["body", "fields", NATIONAL_ID_FIELD], "msg": "give the national id as national_id"}
            ],
        )
    started = now()
    async with records.transactions.connect() as conn:
        catalog, _policy = await records.snapshot(conn, facts)
    # The national id last: an unknown field is located by its position in ``fields``.
    clean = validated_values(
        catalog,
        {**fields, NATIONAL_ID_FIELD: national_id},
        ("body", "fields"),
        located=_TOP_LEVEL_NATIONAL_ID,
    )
    foreign = sorted(n for n in clean if (s := catalog.field(n)) and s.owner != facts.department)

    def refusal(status: int) -> AuditEntry:
        return records.entry(
            facts,
            "register",
            citizen_id=None,
            catalog=catalog,
            requested=list(clean),
            released=[],
            decisions={},
            status=status,
            decision="deny",
        )

    if foreign:
        await records.refuse(
            refusal(403),
            Forbidden(f"A registrar sets only its own department's fields, not: {', '.join(foreign)}"),
        )
    citizen_id = str(uuid.uuid4())
    written_by = facts.principal.client_id
    status = status_written(catalog, clean) or "active"
    try:
        async with records.transactions.begin() as conn:
            # Insert first: on SQLite that takes the write lock, so the duplicate check
            # below sees every committed registration; on PostgreSQL an advisory lock on
            # the blind index does the same.
            deceased = [citizen_id] if status == "deceased" else []
            await repository.insert_citizens(conn, [citizen_id], written_by, started, deceased)
            await require_unregistered(records, conn, catalog, clean[NATIONAL_ID_FIELD], citizen_id)
            await store_values(records, conn, catalog, citizen_id, clean, written_by, started)
            entry = registered_entry(facts, catalog, citizen_id, clean)
            await audit_writer.append_in_transaction(conn, entry)
    except Conflict as duplicate:
        # Rolled back: audited as a refused attempt, once the transaction is over (the
        # audit writer waits for SQLite's write lock, which it held).
        await records.refuse(refusal(duplicate.status), duplicate)
    return Registered(id=citizen_id, status=status, version=1, fields=sorted(clean))


async def require_unregistered(
    records: RecordsService,
    conn: AsyncConnection,
    catalog: Catalog,
    national_id: values.JsonValue,
    citizen_id: str,
) -> None:
    """409 if a citizen other than ``citizen_id`` holds ``national_id``. Run in the writing
    transaction after it holds SQLite's write lock (so every committed write is seen); on
    PostgreSQL it first takes an advisory lock on the id's blind index until commit, so two
    transactions storing the same id run one after the other."""
    wanted = values.normalise_for_index(national_id)
    await lock_blind_indexes(conn, [records.keyring.blind_index(NATIONAL_ID_FIELD, wanted)])
    found = await registered_national_ids(conn, records.keyring, catalog, [wanted])
    if found.get(comparable_national_id(wanted), citizen_id) != citizen_id:
        raise Conflict("A citizen with that national id is already registered.")


def registered_entry(
    facts: RequestFacts, catalog: Catalog, citizen_id: str, clean: Mapping[str, values.JsonValue]
) -> AuditEntry:
    """The audit entry of one registration: every field set, no values."""
    return RecordsService.entry(
        facts,
        "register",
        citizen_id=citizen_id,
        catalog=catalog,
        requested=list(clean),
        released=list(clean),
        decisions={},
        status=201,
        decision="permit",
    )


async def write(
    records: RecordsService,
    facts: RequestFacts,
    citizen_id: str,
    fields: Mapping[str, Any],
    *,
    reason: str,
    if_match: IfMatch | None,
) -> WriteOut:
    """New versions of fields the caller owns, or that a ``write`` agreement delegates to
    it for the stated purpose; 412 if ``if_match`` does not name the record's version, 409
    if it gives ``national_id`` a value another citizen holds; 422 without ``X-Case-Ref``
    under a delayed-disclosure agreement, whose case a permitted write opens. A refusal
    (403, 410, 412, 409, 422) is audited. A caller that may write the fields is told 404
    for an unknown citizen and 410 for an erased one; one that may not, and may not
    otherwise learn who is registered (``disclosure.may_know_writing``), is told 404 alike
    for an unknown, an existing and an erased citizen, and that refusal of an existing or
    erased citizen is audited (once, as 404). An unknown citizen's 404 is never audited,
    as for a read: a made-up id names no citizen and has no entry."""
    # The writer's reason is required but not stored: it is free text and may well
    # hold personal data ("moved in with her mother at ..."), which the audit must not.
    del reason
    started = now()
    async with records.transactions.connect() as conn:
        catalog, policy = await records.snapshot(conn, facts)
    clean = validated_values(catalog, fields, ("body", "fields"))
    require_known(catalog, [], facts.purpose, purpose_at=("body", "purpose"))
    names = list(clean)
    written: WriteOut | None = None
    refused: ServiceError | None = None
    try:
        async with records.transactions.begin() as conn:
            found = (await repository.get_citizens(conn, [citizen_id])).get(citizen_id)
            context = records.context(facts, found.status if found else None)
            decisions = _write_decisions(catalog, policy, facts, names, context)
            denied = [n for n in names if decisions[n].effect != "permit"]
            if denied and not disclosure.may_know_writing(
                policy, facts.department, names, decisions, context
            ):
                refused = CitizenNotFound(disclosure.NOT_KNOWN)
            else:
                disclosure.present(found)
            if not denied:
                await records.open_cases(facts, decisions.values(), context.time, conn)
                written = await _store_write(
                    records, conn, facts, catalog, citizen_id, clean, decisions, context, if_match, started
                )
    except (CitizenErased, StaleVersion, Conflict) as error:
        # Refused after the decision (erased before it, or since it was read): rolled
        # back, then audited as a 403 is.
        refused = error
    if written is not None:
        # Committed: wake feeds and dispatchers waiting in this process.
        events_service.notify()
        return written
    if isinstance(refused, CitizenErased) and facts.purpose is not None:
        # A delegate's 410 cites a delayed-disclosure agreement it lacked the case reference
        # for, as a read's does (``RecordsService.erased_decisions``).
        decisions = records.refused_decisions(facts, "write", policy, decisions, context)
    elif refused is None:
        if facts.purpose is not None:
            # A delegated write (decided by policy) under a delayed-disclosure agreement
            # without X-Case-Ref: 422, as a read is refused.
            await records.require_case_ref(
                facts, "write", citizen_id, catalog, policy, names, decisions, context
            )
        reasons = "; ".join(decisions[n].reason for n in denied)
        refused = NotPermitted(f"Not permitted to write {', '.join(denied)}: {reasons}")
    if found is None:
        # The 404 of a caller that may not know (the only refusal an unknown citizen gets
        # here): the same answer as an existing citizen's, but a made-up id has no entry.
        raise refused
    refusal = records.entry(
        facts,
        "write",
        context=context,
        citizen_id=citizen_id,
        catalog=catalog,
        requested=names,
        released=[],
        decisions=decisions,
        status=refused.status,
        decision="deny",
    )
    await records.refuse(refusal, refused)


async def _store_write(
    records: RecordsService,
    conn: AsyncConnection,
    facts: RequestFacts,
    catalog: Catalog,
    citizen_id: str,
    clean: Mapping[str, values.JsonValue],
    decisions: Mapping[str, Decision],
    context: RequestContext,
    if_match: IfMatch | None,
    started: datetime,
) -> WriteOut:
    """A permitted write in its transaction: the version bump (412 if ``if_match`` does not
    name the record's version), the national id's check (409), the values, the change
    events and the audit entry."""
    names = list(clean)
    status = status_written(catalog, clean)
    bumped = await repository.bump_version(
        conn,
        citizen_id,
        expected=None if if_match is None else if_match.versions,
        now=started,
        status=status,
    )
    if bumped is None:
        # Erased since it was read (the update waited for the erasure, or took SQLite's
        # write lock after it): 410 as a write sent after it gets, not a stale version.
        disclosure.present((await repository.get_citizens(conn, [citizen_id])).get(citizen_id))
        raise StaleVersion("The record is not at the version you read; read it again.")
    if NATIONAL_ID_FIELD in clean:
        # As registration does, after the version bump took SQLite's write lock.
        await require_unregistered(records, conn, catalog, clean[NATIONAL_ID_FIELD], citizen_id)
    written_by = facts.principal.client_id
    versions = await store_values(records, conn, catalog, citizen_id, clean, written_by, started)
    entry = records.entry(
        facts,
        "write",
        context=context,
        citizen_id=citizen_id,
        catalog=catalog,
        requested=names,
        released=names,
        decisions=decisions,
        status=200,
    )
    # The change events, one per owning department, in this same transaction:
    # a write that rolls back tells no one. Field names only, never values.
    for owner, changed in _fields_by_owner(catalog, names).items():
        await events_service.record_change(
            conn, citizen_id=citizen_id, fields=changed, owner=owner, occurred_at=started
        )
    # Last statement before commit: on PostgreSQL it holds the audit's order lock.
    await audit_writer.append_in_transaction(conn, entry)
    return WriteOut(id=citizen_id, status=bumped.status, version=bumped.version, fields=versions)


def _write_decisions(
    catalog: Catalog,
    policy: CompiledPolicy,
    facts: RequestFacts,
    names: Sequence[str],
    context: RequestContext,
) -> dict[str, Decision]:
    """An owner writes its own fields without naming a purpose; a delegate must name
    the purpose of its ``write`` agreement."""
    if facts.purpose is not None:
        return policy.decide(facts.department, "write", names, context)
    return owner_decisions(catalog, facts, names)


def owner_decisions(catalog: Catalog, facts: RequestFacts, names: Sequence[str]) -> dict[str, Decision]:
    """The decisions of a write that names no purpose: the owner writes its own fields;
    anything else is denied."""
    decisions: dict[str, Decision] = {}
    for name in names:
        spec = catalog.field(name)
        if spec is not None and spec.owner == facts.department:
            decisions[name] = Decision(name, "permit", None, None, "owner")
        else:
            reason = f"{facts.department} does not own {name}; a delegated write must name its purpose"
            decisions[name] = Decision(name, "deny", None, None, reason)
    return decisions


async def erase(
    records: RecordsService,
    facts: RequestFacts,
    citizen_id: str,
    *,
    reason: ErasureReason,
    legal_basis: str,
    if_match: IfMatch | None = None,
) -> None:
    """Crypto-shred a citizen: the data keys are destroyed; the audit stays.

    Only the department that owns ``national_id`` (the register), or a department holding
    an ``erase`` agreement on ``national_id`` (then stating that agreement's purpose). The
    reason (a fixed code, so no free text reaches the audit) and the stated legal basis are
    kept in the audit entry. Anyone else is refused with a 403 whether or not the citizen
    exists, audited for a citizen that does (existing or erased; as for a read, a made-up
    id names no citizen and has no entry). A 412 when ``if_match`` does not name the
    record's version (nothing is erased) is audited, and so is the 410 of a citizen erased
    already; a department that may erase is told 404, unaudited, for an unknown citizen."""
    legal_basis = validated_legal_basis(legal_basis)
    started = now()
    refused: ServiceError | None = None
    try:
        async with records.transactions.begin() as conn:
            catalog, policy = await records.snapshot(conn, facts)
            require_known(catalog, [], facts.purpose, purpose_at=("query", "purpose"))
            citizen = (await repository.get_citizens(conn, [citizen_id])).get(citizen_id)
            context = records.context(facts, citizen.status if citizen else None)
            decision = _erase_decision(catalog, policy, facts, context, reason, legal_basis)
            if decision.effect == "permit":
                disclosure.present(citizen)
                # Marked first, and only if not erased yet: that update takes SQLite's write
                # lock or waits for the citizen's row on PostgreSQL, so of erasures sent at
                # once one shreds and is audited and the others, finding the citizen erased,
                # are 410 (the read above may predate the first one's commit).
                expected = None if if_match is None else if_match.versions
                if await repository.mark_erased(conn, citizen_id, started, expected=expected):
                    # Its key events are audited in this transaction (the keyring's hook).
                    await records.keyring.shred_citizen(conn, citizen_id)
                    await audit_writer.append_in_transaction(
                        conn, _erase_entry(records, facts, citizen_id, catalog, decision, context, status=204)
                    )
                    return
                # Erased meanwhile (410), else at a version ``if_match`` does not name.
                disclosure.present((await repository.get_citizens(conn, [citizen_id])).get(citizen_id))
    except CitizenErased as gone:
        # Erased already: rolled back, then audited as a 403 is.
        refused = gone
    if refused is None:
        if decision.effect == "permit":
            refused = StaleVersion("The record is not at the version you read; read it again.")
        else:
            refused = NotPermitted(f"Not permitted to erase this citizen: {decision.reason}")
    if citizen is None:
        # The 403 an existing citizen's erasure gets, so it tells no one who is registered;
        # but a made-up id names no citizen and has no entry (as for a read).
        raise refused
    refusal = _erase_entry(records, facts, citizen_id, catalog, decision, context, status=refused.status)
    await records.refuse(refusal, refused)


def _erase_entry(
    records: RecordsService,
    facts: RequestFacts,
    citizen_id: str,
    catalog: Catalog,
    decision: Decision,
    context: RequestContext,
    *,
    status: int,
) -> AuditEntry:
    """With the decision's context: the entry's time is the decision's, and it records the
    citizen's status the decision saw (as every decided access does), the inputs of an
    erasure agreement's condition."""
    return records.entry(
        facts,
        "erase",
        citizen_id=citizen_id,
        catalog=catalog,
        requested=[NATIONAL_ID_FIELD],
        released=[],
        decisions={NATIONAL_ID_FIELD: decision},
        status=status,
        decision="permit" if status == 204 else "deny",
        context=context,
    )


def _erase_decision(
    catalog: Catalog,
    policy: CompiledPolicy,
    facts: RequestFacts,
    context: RequestContext,
    reason: ErasureReason,
    legal_basis: str,
) -> Decision:
    """The owner of ``national_id`` erases; anyone else needs an ``erase`` agreement for
    the purpose it states."""
    spec = catalog.field(NATIONAL_ID_FIELD)
    if spec is not None and spec.owner == facts.department:
        return Decision(NATIONAL_ID_FIELD, "permit", None, None, f"owner; {reason}", legal_basis)
    if facts.purpose is None:
        owner = spec.owner if spec else "the register"
        return Decision(
            NATIONAL_ID_FIELD,
            "deny",
            None,
            None,
            f"only {owner}, which owns {NATIONAL_ID_FIELD}, erases citizens; "
            "a department with an erase agreement must name its purpose",
        )
    decided = policy.decide(facts.department, "erase", [NATIONAL_ID_FIELD], context)[NATIONAL_ID_FIELD]
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


def _fields_by_owner(catalog: Catalog, names: Iterable[str]) -> dict[str, list[str]]:
    owners = catalog.field_owners
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(owners[name], []).append(name)
    return grouped


async def lock_blind_indexes(conn: AsyncConnection, indexes: Iterable[bytes]) -> None:
    """On PostgreSQL, serialise registrations of the same national ids until commit. The
    locks are taken in key order, so two batches that share ids cannot deadlock."""
    if conn.dialect.name == "postgresql":
        keys = sorted({int.from_bytes(index[:8], "big", signed=True) for index in indexes})
        await conn.execute(
            text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:keys AS bigint[])) AS k"),
            {"keys": keys},
        )
