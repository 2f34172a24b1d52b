"""An erasure leaves nothing in a stolen copy of the database that could be matched back to
the citizen: after it, neither the data keys' wrapped bytes nor the blind indexes of the
citizen's searchable values are anywhere in the SQLite file and its WAL, or in a
``pg_dump``. A blind index is a keyed hash of a national id: with the index key, it would
confirm a guessed one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.config import Settings
from service.crypto.keyring import DATA_KEYS, Keyring
from service.db import create_engine
from service.policy.service import PolicyHolder
from service.records import writes
from service.records.models import FieldValue
from service.records.service import RecordsService
from tests.crypto.test_plaintext_scan import pg_dump
from tests.fixtures.databases import SQLITE_PREFIX, is_postgres
from tests.records.conftest import apply_policies, facts_as

REGISTRAR = facts_as("register", "registrar")
VALUES = FieldValue.__table__


def _secure_delete_off(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA secure_delete = OFF")


@pytest.fixture
async def scratch_engine(scratch_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(scratch_database)
    if engine.dialect.name == "sqlite":
        # Each connection starts as SQLite's own default build has it (Debian's turns it
        # on): freed cells keep their bytes unless the service asks otherwise.
        event.listen(engine.sync_engine, "connect", _secure_delete_off, insert=True)
    yield engine
    await engine.dispose()


class TestErasureAtRest:
    async def test_no_blind_index_or_wrapped_key_of_an_erased_citizen_is_left(
        self, scratch_database: str, scratch_engine: AsyncEngine, settings: Settings
    ) -> None:
        apply_policies(scratch_database)
        keyring = Keyring.from_settings(settings)
        policy = PolicyHolder()
        citizens: list[str] = []
        async with scratch_engine.begin() as conn:
            records = RecordsService.in_transaction(conn, keyring, policy)
            for n in range(20):
                fields = {"given_name": f"Name{n}", "date_of_birth": f"19{50 + n}-02-03"}
                registered = await writes.register(records, REGISTRAR, f"ZZ{n:07d}", fields)
                citizens.append(registered.id)
        async with scratch_engine.connect() as conn:
            secrets: dict[str, list[bytes]] = {citizen: [] for citizen in citizens}
            for citizen_id, index in await conn.execute(
                select(VALUES.c.citizen_id, VALUES.c.blind_index).where(VALUES.c.blind_index.is_not(None))
            ):
                secrets[citizen_id].append(index)
            for citizen_id, wrapped in await conn.execute(
                select(DATA_KEYS.c.citizen_id, DATA_KEYS.c.wrapped_key)
            ):
                secrets[citizen_id].append(wrapped)
        assert all(len(found) == 3 for found in secrets.values())  # national id, birth date, key
        erased, kept = citizens[::2], citizens[1::2]
        for citizen_id in erased:
            async with scratch_engine.begin() as conn:
                records = RecordsService.in_transaction(conn, keyring, policy)
                await writes.erase(
                    records, REGISTRAR, citizen_id, reason="court-order", legal_basis="Court order 2026/1"
                )

        if is_postgres(scratch_database):
            # A backup taken after the erasures; it writes bytea as hex.
            blob, as_hex = await pg_dump(scratch_database), True
        else:
            # Closing the engine checkpoints the WAL into the file.
            await scratch_engine.dispose()
            path = Path(scratch_database[len(SQLITE_PREFIX) :])
            blob = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))
            as_hex = False

        def left(citizen_id: str) -> list[bytes]:
            return [s for s in secrets[citizen_id] if (s.hex().encode() if as_hex else s) in blob]

        # The kept citizens' indexes and keys are found (the scan works); the erased ones' not.
        assert all(len(left(c)) == 3 for c in kept)
        assert {c: left(c) for c in erased if left(c)} == {}
