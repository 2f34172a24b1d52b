"""Bulk registration: many citizens, each with fields of any owner, in one transaction.

For an operator loading a store (the demo's population, the benchmarks, an import), acting
as the registrar named in ``facts``. The same catalog validation, per-(citizen, owner)
data keys under each owner's active KEK (made by the keyring), AEAD, blind indexes and a
``register`` audit entry per citizen as ``writes.register``, but a few statements for the
whole batch instead of several per value.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from service.audit import writer as audit_writer
from service.auth.facts import RequestFacts
from service.catalog import service as catalog_service
from service.crypto.keyring import Keyring
from service.errors import Conflict
from service.records import repository, values
from service.records.service import comparable_national_id, now, registered_national_ids
from service.records.validation import NATIONAL_ID_FIELD, validated_values
from service.records.writes import encrypted_rows, registered_entry


async def register_population(
    conn: AsyncConnection, keyring: Keyring, facts: RequestFacts, citizens: Sequence[Mapping[str, Any]]
) -> list[str]:
    """Register ``citizens`` in the caller's transaction on ``conn``; return their new ids.

    Raises ``Conflict`` (the caller rolls back: nothing is stored) if a national id is
    missing, already registered or appears twice in the batch."""
    started = now()
    catalog = await catalog_service.current_cached(conn)
    cleaned = [validated_values(catalog, submitted, "fields") for submitted in citizens]
    wanted = [values.normalise_for_index(clean.get(NATIONAL_ID_FIELD, "")) for clean in cleaned]
    comparable = {comparable_national_id(n) for n in wanted}
    if not all(wanted) or len(comparable) != len(wanted):
        raise Conflict("Every citizen needs a national id, and no national id may appear twice.")
    ids = [str(uuid.uuid4()) for _ in cleaned]
    written_by = facts.principal.client_id
    # The citizens first: on SQLite that takes the write lock before the check.
    await repository.insert_citizens(conn, ids, written_by, started)
    if await registered_national_ids(conn, keyring, catalog, wanted):
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
    await audit_writer.append_many_in_transaction(conn, entries)
    return ids


async def citizen_count(conn: AsyncConnection) -> int:
    """How many citizens are registered (any status), so a loader can tell an empty store.
    No field is read."""
    return await repository.count_citizens(conn)
