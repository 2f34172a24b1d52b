"""A stolen copy of the database reveals no plaintext: scan the raw SQLite file and WAL,
or a ``pg_dump``, for every value written through the keyring."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from service.crypto.keyring import DATA_KEYS
from tests.fixtures.crypto import CITIZENS, add_citizens, make_keyring, read_all_values, write_value
from tests.fixtures.databases import SQLITE_PREFIX, is_postgres

POPULATION = 200
# A value written in clear on purpose: the scan must find it, or it proves nothing.
CANARY = f"CanaryRegistrar~{secrets.token_hex(6)}"


def distinctive_values(n: int) -> list[tuple[str, str, str, bool]]:
    """(field, owner, plaintext, searchable) for one citizen; every plaintext unique."""
    tag = secrets.token_hex(5)
    return [
        ("given_name", "register", f"Zoë-Þórhildur~{tag}", False),
        ("national_id", "register", f"QXNAT~{n:06d}{tag.upper()}", True),
        ("address", "register", f"Wrenfield Närrow Lane~{n} {tag}", False),
        ("licence_number", "dvla", f"LICENCE~{tag}-{n:04d}", False),
    ]


def encodings(text: str) -> list[bytes]:
    forms = [text.encode("utf-8"), text.encode("utf-16-le"), text.encode("utf-16-be")]
    # pg_dump writes bytea as hex; a plaintext inside a bytea would show up like this.
    return forms + [form.hex().encode() for form in forms]


def leaked(blob: bytes, plaintexts: list[str]) -> list[str]:
    """The plaintexts found in ``blob`` in any encoding.

    Each plaintext starts with one of a few distinctive stems; a plaintext can only be
    present where its stem is, so only the stems found are followed up in full."""
    found = []
    for stem in {text.split("~", 1)[0] + "~" for text in plaintexts}:
        if any(form in blob for form in encodings(stem)):
            found += [t for t in plaintexts if t.startswith(stem) and any(f in blob for f in encodings(t))]
    return sorted(found)


async def write_population(engine: AsyncEngine) -> tuple[list[str], dict[int, str]]:
    keyring = make_keyring()
    plaintexts: list[str] = []
    async with engine.begin() as conn:
        citizens = await add_citizens(conn, POPULATION)
        await conn.execute(update(CITIZENS).where(CITIZENS.c.id == citizens[0]).values(registered_by=CANARY))
        for n, citizen in enumerate(citizens):
            for field, owner, text, searchable in distinctive_values(n):
                await write_value(conn, keyring, citizen, field, owner, text, searchable=searchable)
                plaintexts.append(text)
    async with engine.connect() as conn:
        known = await read_all_values(conn, keyring)
    return plaintexts, known


async def pg_dump(url: str) -> bytes:
    parsed = make_url(url)
    process = await asyncio.create_subprocess_exec(
        "/usr/bin/pg_dump",
        "--host",
        parsed.host or "127.0.0.1",
        "--port",
        str(parsed.port or 5432),
        "--username",
        parsed.username or "postgres",
        "--no-password",
        "--dbname",
        str(parsed.database),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out


class TestNoPlaintextAtRest:
    async def test_database_files_hold_no_plaintext(
        self, scratch_database: str, scratch_engine: AsyncEngine
    ) -> None:
        plaintexts, known = await write_population(scratch_engine)
        assert len(plaintexts) == POPULATION * 4
        # The values really are there, encrypted: each decrypts to what was written.
        assert sorted(known.values()) == sorted(plaintexts)

        if is_postgres(scratch_database):
            dump = await pg_dump(scratch_database)
            assert b"COPY public.field_values" in dump
            assert leaked(dump, [CANARY]) == [CANARY]
            assert leaked(dump, plaintexts) == []
            return

        path = Path(scratch_database[len(SQLITE_PREFIX) :])
        wal = Path(f"{path}-wal")
        # Before a checkpoint the newest pages live in the WAL; scan it and the file.
        files = b"".join(p.read_bytes() for p in (path, wal) if p.exists())
        assert leaked(files, [CANARY]) == [CANARY]
        assert leaked(files, plaintexts) == []
        # After the engine closes, SQLite checkpoints the WAL into the main file.
        await scratch_engine.dispose()
        files = b"".join(p.read_bytes() for p in (path, wal) if p.exists())
        assert leaked(files, [CANARY]) == [CANARY]
        assert leaked(files, plaintexts) == []


class TestShreddedKeysLeaveNoCopy:
    async def test_wrapped_keys_are_gone_from_the_files_after_shredding(
        self, scratch_database: str, scratch_engine: AsyncEngine
    ) -> None:
        keyring = make_keyring()
        async with scratch_engine.begin() as conn:
            citizens = await add_citizens(conn, 40)
            for citizen in citizens:
                await write_value(conn, keyring, citizen, "given_name", "register", f"Name~{citizen}")
        async with scratch_engine.connect() as conn:
            wrapped = {
                row.citizen_id: row.wrapped_key
                for row in await conn.execute(select(DATA_KEYS.c.citizen_id, DATA_KEYS.c.wrapped_key))
            }
        erased, kept = citizens[:10], citizens[10:]
        async with scratch_engine.begin() as conn:
            for citizen in erased:
                assert await keyring.shred_citizen(conn, citizen) == 1

        if is_postgres(scratch_database):
            # A backup taken after the erasure.
            blob = await pg_dump(scratch_database)
            as_hex = True  # pg_dump writes bytea as hex
        else:
            # Closing the engine checkpoints the WAL into the file.
            await scratch_engine.dispose()
            path = Path(scratch_database[len(SQLITE_PREFIX) :])
            blob = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))
            as_hex = False

        def present(citizen: str) -> bool:
            key = wrapped[citizen]
            return (key.hex().encode() if as_hex else key) in blob

        # The kept citizens' wrapped keys are found (the scan works); the erased ones not.
        assert all(present(c) for c in kept)
        assert [c for c in erased if present(c)] == []
