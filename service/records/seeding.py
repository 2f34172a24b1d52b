"""Bulk writes: many citizens registered, or many owners' writes, in one transaction.

For an operator loading a store (the demo's population, the benchmarks, ``tellonce
import``), acting as the client named in ``facts``. The same catalog validation,
per-(citizen, owner) data keys under each owner's active KEK (made by the keyring), AEAD,
blind indexes, versions, change events and one ``register`` or ``write`` audit entry per
citizen as ``writes.register`` and ``writes.write``, but a few statements for the whole
batch instead of several per value.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit import writer as audit_writer
from service.audit.schemas import AuditEntry
from service.auth.facts import RequestFacts
from service.catalog import service as catalog_service
from service.catalog.schemas import Catalog
from service.crypto.keyring import DataKeysAhead, Kek, Keyring
from service.errors import Conflict
from service.events import service as events_service
from service.records import repository, values
from service.records.service import (
    RecordsService,
    comparable_national_id,
    decision_context,
    now,
    registered_national_ids,
)
from service.records.validation import NATIONAL_ID_FIELD, validated_values
from service.records.writes import encrypted_rows, owner_decisions, registered_entry, status_written


async def register_population(
    conn: AsyncConnection, keyring: Keyring, facts: RequestFacts, citizens: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Register ``citizens`` in the caller's transaction on ``conn``; return their new ids.

    Raises ``Conflict`` (the caller rolls back: nothing is stored) if a national id is
    missing, already registered or appears twice in the batch."""
    started = now()
    catalog = await catalog_service.current_cached(conn)
    cleaned = [validated_values(catalog, submitted, ("fields",)) for submitted in citizens]
    wanted = [values.normalise_for_index(clean.get(NATIONAL_ID_FIELD, "")) for clean in cleaned]
    comparable = {comparable_national_id(n) for n in wanted}
    if not all(wanted) or len(comparable) != len(wanted):
        raise Conflict("Every citizen needs a national id, and no national id may appear twice.")
    # The check runs once the citizens are inserted: on SQLite that holds the write lock.
    ids, entries = await store_registrations(conn, keyring, catalog, facts, cleaned, started, check=wanted)
    await audit_writer.append_many_in_transaction(conn, entries)
    return ids


async def store_registrations(
    conn: AsyncConnection,
    keyring: Keyring,
    catalog: Catalog,
    facts: RequestFacts,
    cleaned: Sequence[Mapping[str, values.JsonValue]],
    started: datetime,
    *,
    check: Sequence[str] | None = None,
) -> tuple[list[str], list[AuditEntry]]:
    """Store new citizens with their validated values (each holding its national id, none
    registered already); their new ids and the ``register`` audit entries, which the
    caller appends as its transaction's last statement. With ``check`` (the normalised
    national ids), refuse with ``Conflict`` if any is registered after all, checked once
    the citizens' insert holds SQLite's write lock."""
    ids = [str(uuid.uuid4()) for _ in cleaned]
    written_by = facts.principal.client_id
    deceased = _deceased(catalog, ids, cleaned)
    await repository.insert_citizens(conn, ids, written_by, started, deceased)
    if check is not None and await registered_national_ids(conn, keyring, catalog, check):
        raise Conflict("A citizen in the batch is already registered.")
    owners_of = [sorted({s.owner for n in clean if (s := catalog.field(n))}) for clean in cleaned]
    keys = await keyring.new_data_keys(
        conn, [(cid, owner) for cid, owners in zip(ids, owners_of, strict=True) for owner in owners]
    )
    rows = [
        row
        for citizen_id, clean, owners in zip(ids, cleaned, owners_of, strict=True)
        for row in encrypted_rows(
            keyring,
            catalog,
            citizen_id,
            clean,
            {o: keys[(citizen_id, o)] for o in owners},
            dict.fromkeys(clean, 1),
            written_by,
            started,
        )
    ]
    await repository.insert_values(conn, rows)
    entries = [registered_entry(facts, catalog, cid, clean) for cid, clean in zip(ids, cleaned, strict=True)]
    return ids, entries


@dataclass(frozen=True)
class RegistrationsAhead:
    """New citizens made ready before their transaction by ``registrations_ahead``: ids,
    data keys, encrypted values and the rows of their ``register`` audit entries."""

    citizen_ids: list[str]
    keys: DataKeysAhead
    value_rows: list[tuple[object, ...]]
    audit_rows: list[audit_writer.Values]
    written_by: str
    started: datetime
    # Those registered with a date of death.
    deceased: list[str]

    def without_material(self) -> RegistrationsAhead:
        """The same with the data keys only in their wrapped form, to send to the process
        that stores them."""
        return replace(self, keys=self.keys.without_material())


def registrations_ahead(
    keyring: Keyring,
    catalog: Catalog,
    facts: RequestFacts,
    kek: Kek,
    cleaned: Sequence[Mapping[str, values.JsonValue]],
    started: datetime,
    *,
    key_ids: Sequence[int],
) -> RegistrationsAhead | None:
    """``store_registrations``' work done without the database, so a bulk import prepares
    one batch while the batch before it is written: the data keys under ``kek`` with the
    ids ``key_ids`` (``Keyring.data_keys_ahead``: guessed on SQLite, drawn from the
    sequence on PostgreSQL), the values encrypted under them, the audit entries' rows. None
    if there is nothing to register, fewer ids than citizens, or a citizen has fields of
    another department than ``kek``'s."""
    department = kek.department
    if (
        not cleaned
        or len(key_ids) < len(cleaned)
        or any(
            (spec := catalog.field(name)) is None or spec.owner != department
            for clean in cleaned
            for name in clean
        )
    ):
        return None
    ids = [str(uuid.uuid4()) for _ in cleaned]
    keys = keyring.data_keys_ahead(kek, ids, key_ids, started)
    written_by = facts.principal.client_id
    rows = [
        row
        for citizen_id, clean, key in zip(ids, cleaned, keys.keys, strict=True)
        for row in encrypted_rows(
            keyring,
            catalog,
            citizen_id,
            clean,
            {department: key},
            dict.fromkeys(clean, 1),
            written_by,
            started,
        )
    ]
    audit_rows = registered_rows(facts, catalog, ids, cleaned)
    return RegistrationsAhead(
        ids, keys, rows, audit_rows, written_by, started, _deceased(catalog, ids, cleaned)
    )


def _deceased(
    catalog: Catalog, citizen_ids: Sequence[str], cleaned: Sequence[Mapping[str, values.JsonValue]]
) -> list[str]:
    """The citizens among new ones whose values make them deceased (``status_written``)."""
    return [
        citizen_id
        for citizen_id, clean in zip(citizen_ids, cleaned, strict=True)
        if status_written(catalog, clean) == "deceased"
    ]


def registered_rows(
    facts: RequestFacts,
    catalog: Catalog,
    citizen_ids: Sequence[str],
    cleaned: Sequence[Mapping[str, values.JsonValue]],
) -> list[audit_writer.Values]:
    """The audit rows of ``registered_entry`` for many citizens, in order: one entry per
    set of fields, its row copied for each citizen who has those fields
    (``audit_writer.entry_values_for_citizens``), so entries of one set share a time."""
    by_fields: dict[tuple[str, ...], list[int]] = {}
    for position, clean in enumerate(cleaned):
        by_fields.setdefault(tuple(clean), []).append(position)
    rows: list[audit_writer.Values] = [()] * len(citizen_ids)
    for fields, positions in by_fields.items():
        entry = registered_entry(facts, catalog, citizen_ids[positions[0]], dict.fromkeys(fields))
        made = audit_writer.entry_values_for_citizens(entry, [citizen_ids[p] for p in positions])
        for position, row in zip(positions, made, strict=True):
            rows[position] = row
    return rows


async def store_registrations_ahead(
    conn: AsyncConnection, keyring: Keyring, ahead: RegistrationsAhead
) -> bool:
    """Store registrations made ahead, in the caller's transaction on ``conn``, which has
    found none of the citizens registered (on SQLite holding the write lock). False, with
    nothing written, if their data keys no longer hold (the KEK was rotated, or on SQLite
    another writer made keys meanwhile): the caller stores the citizens with
    ``store_registrations``."""
    if not await keyring.data_keys_ahead_hold(conn, ahead.keys):
        return False
    await repository.insert_citizens(conn, ahead.citizen_ids, ahead.written_by, ahead.started, ahead.deceased)
    await keyring.store_data_keys_ahead(conn, ahead.keys)
    await repository.insert_values(conn, ahead.value_rows)
    return True


async def store_revisions(
    conn: AsyncConnection,
    keyring: Keyring,
    catalog: Catalog,
    facts: RequestFacts,
    revisions: Mapping[str, Mapping[str, values.JsonValue]],
    started: datetime,
) -> list[AuditEntry]:
    """New versions of fields the caller's department owns, {citizen id: {field: value}},
    stored as ``writes.write`` stores an owner's write: the record's version bumped (a
    death field marks the citizen deceased), the current values retired, the new ones
    encrypted under the citizen's data key as the next versions, and one change event per
    citizen. Returns the ``write`` audit entries for the caller to append last. A citizen
    erased meanwhile is skipped and has no entry."""
    bumped = await repository.bump_versions(
        conn,
        [(citizen_id, status_written(catalog, fields)) for citizen_id, fields in revisions.items()],
        started,
    )
    present = {citizen_id: fields for citizen_id, fields in revisions.items() if citizen_id in bumped}
    if not present:
        return []
    department = facts.department
    latest = await repository.retire_current_many(
        conn, [(citizen_id, name) for citizen_id, fields in present.items() for name in fields]
    )
    keys = await keyring.data_keys_for_write_many(conn, list(present), department)
    written_by = facts.principal.client_id
    rows = [
        row
        for citizen_id, fields in present.items()
        for row in encrypted_rows(
            keyring,
            catalog,
            citizen_id,
            fields,
            {department: keys[citizen_id]},
            {name: latest[citizen_id, name] + 1 for name in fields},
            written_by,
            started,
        )
    ]
    await repository.insert_values(conn, rows)
    # Field names only, never values; one event per citizen, since one owner wrote.
    await events_service.record_changes(
        conn,
        [
            events_service.Change(citizen_id, list(fields), department)
            for citizen_id, fields in present.items()
        ],
        occurred_at=started,
    )
    entries: list[AuditEntry] = []
    for citizen_id, fields in present.items():
        names = list(fields)
        context = decision_context(facts, bumped[citizen_id].status, now())
        entries.append(
            RecordsService.entry(
                facts,
                "write",
                context=context,
                citizen_id=citizen_id,
                catalog=catalog,
                requested=names,
                released=names,
                decisions=owner_decisions(catalog, facts, names),
                status=200,
            )
        )
    return entries


async def citizen_count(conn: AsyncConnection) -> int:
    """How many citizens are registered (any status), so a loader can tell an empty store.
    No field is read."""
    return await repository.count_citizens(conn)
