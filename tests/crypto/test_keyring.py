"""The keyring against the database: KEKs, data keys, the cache, shredding, events."""

from __future__ import annotations

from typing import cast

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.crypto.aead import DataKey, decrypt_value
from service.crypto.errors import CiphertextIntegrityError, CitizenShredded, DataKeyDestroyed, DataKeyMissing
from service.crypto.keyring import DATA_KEYS, KEKS, KeyEvent, Keyring, kek_context
from service.crypto.material import KeyMaterial
from service.crypto.providers import LocalKeyProvider
from service.db import utcnow
from service.records.models import FieldValue
from tests.fixtures.crypto import add_citizens, clock_at, make_keyring, write_value

FIELD_VALUES = cast(Table, FieldValue.__table__)


class TestDataKeys:
    async def test_first_write_creates_the_department_kek_and_a_data_key(
        self, conn: AsyncConnection, keyring: Keyring, key_events: list[KeyEvent]
    ) -> None:
        (citizen,) = await add_citizens(conn, 1)
        key = await keyring.data_key_for_write(conn, citizen, "register")
        assert (key.department, key.kek_version) == ("register", 1)
        keks = (await conn.execute(select(KEKS).where(KEKS.c.department == "register"))).all()
        assert [(k.version, k.status, k.provider) for k in keks] == [(1, "active", "local")]
        assert [(e.action, e.department, dict(e.detail)) for e in key_events] == [
            ("kek.created", "register", {"version": 1, "provider": "local"})
        ]
        row = (await conn.execute(select(DATA_KEYS).where(DATA_KEYS.c.id == key.id))).one()
        assert (row.citizen_id, row.department, row.kek_version, row.status) == (
            citizen,
            "register",
            1,
            "active",
        )
        assert key.material.reveal() not in row.wrapped_key
        # The same (citizen, department) always gets the same key; another department its own.
        assert (await keyring.data_key_for_write(conn, citizen, "register")).id == key.id
        other = await keyring.data_key_for_write(conn, citizen, "dvla")
        assert other.id != key.id
        assert other.material != key.material

    async def test_a_fresh_process_unwraps_the_same_key_from_the_rows(self, conn: AsyncConnection) -> None:
        root = b"\x07" * 32
        (citizen,) = await add_citizens(conn, 1)
        writer = make_keyring(root)
        key = await writer.data_key_for_write(conn, citizen, "welfare")
        reader = make_keyring(root)
        found = await reader.data_keys(conn, [key.id])
        assert found[key.id].material == key.material
        assert (await reader.data_key_for_write(conn, citizen, "welfare")).material == key.material

    async def test_another_root_key_cannot_unwrap(self, conn: AsyncConnection, keyring: Keyring) -> None:
        (citizen,) = await add_citizens(conn, 1)
        key = await keyring.data_key_for_write(conn, citizen, "welfare")
        with pytest.raises(Exception, match="did not unwrap") as caught:
            await make_keyring().data_keys(conn, [key.id])
        assert key.material.reveal().hex() not in str(caught.value)

    async def test_unknown_key_id_is_refused(self, conn: AsyncConnection, keyring: Keyring) -> None:
        with pytest.raises(DataKeyMissing):
            await keyring.data_keys(conn, [987654321])

    async def test_database_enforces_one_active_kek_per_department(
        self, conn: AsyncConnection, keyring: Keyring
    ) -> None:
        await keyring.active_kek(conn, "revenue")
        with pytest.raises(IntegrityError):
            async with conn.begin_nested():
                await conn.execute(
                    insert(KEKS).values(
                        department="revenue",
                        version=2,
                        status="active",
                        provider="local",
                        wrapped_key=b"x",
                        created_at=utcnow(),
                    )
                )

    async def test_database_enforces_one_active_data_key_per_citizen_and_department(
        self, conn: AsyncConnection, keyring: Keyring
    ) -> None:
        (citizen,) = await add_citizens(conn, 1)
        key = await keyring.data_key_for_write(conn, citizen, "register")
        with pytest.raises(IntegrityError):
            async with conn.begin_nested():
                await conn.execute(
                    insert(DATA_KEYS).values(
                        citizen_id=citizen,
                        department="register",
                        kek_version=key.kek_version,
                        status="active",
                        wrapped_key=b"x",
                        created_at=utcnow(),
                    )
                )


class TestCache:
    async def test_hits_skip_the_database_and_expire_after_the_ttl(self, conn: AsyncConnection) -> None:
        root = b"\x01" * 32
        citizens = await add_citizens(conn, 3)
        writer = make_keyring(root)
        ids = [(await writer.data_key_for_write(conn, c, "register")).id for c in citizens]

        now, clock = clock_at()
        reader = make_keyring(root, cache_size=2, cache_ttl_seconds=60, clock=clock)
        await reader.data_keys(conn, ids[:2])
        assert len(reader.data_key_cache) == 2
        hits = reader.data_key_cache.hits
        await reader.data_keys(conn, ids[:2])
        assert reader.data_key_cache.hits == hits + 2
        # The bound holds: a third key pushes out the least recently used.
        await reader.data_keys(conn, ids)
        assert len(reader.data_key_cache) == 2
        now[0] += 61
        misses = reader.data_key_cache.misses
        await reader.data_keys(conn, ids[1:])
        assert reader.data_key_cache.misses == misses + 2


class TestShredding:
    async def test_values_are_unrecoverable_even_with_the_root_key(
        self, conn: AsyncConnection, keyring: Keyring, key_events: list[KeyEvent]
    ) -> None:
        shredded_citizen, kept_citizen = await add_citizens(conn, 2)
        for citizen in (shredded_citizen, kept_citizen):
            await write_value(conn, keyring, citizen, "given_name", "register", f"Name of {citizen}")
            await write_value(conn, keyring, citizen, "licence_number", "dvla", f"LIC-{citizen[:8]}")
        key_events.clear()

        assert await keyring.shred_citizen(conn, shredded_citizen) == 2
        assert sorted((e.action, e.department, e.detail["count"]) for e in key_events) == [
            ("data_keys.shredded", "dvla", 1),
            ("data_keys.shredded", "register", 1),
        ]
        # A second shred finds nothing left to destroy.
        assert await keyring.shred_citizen(conn, shredded_citizen) == 0

        rows = (
            await conn.execute(select(FIELD_VALUES).where(FIELD_VALUES.c.citizen_id == shredded_citizen))
        ).all()
        with pytest.raises(DataKeyDestroyed) as caught:
            await keyring.data_keys(conn, {row.data_key_id for row in rows})
        assert caught.value.status == 410
        assert caught.value.problem()["title"] == "Erased"

        # The raw key rows: status shredded and no wrapped bytes left to unwrap.
        key_rows = (
            await conn.execute(select(DATA_KEYS).where(DATA_KEYS.c.citizen_id == shredded_citizen))
        ).all()
        assert {(r.status, r.wrapped_key) for r in key_rows} == {("shredded", None)}

        # An attacker holding the root key unwraps every KEK and tries each on each value
        # (as if it were the data key) and on every wrapped data key left in the table:
        # nothing yields the plaintext.
        keks = (await conn.execute(select(KEKS))).all()
        provider = keyring.provider
        assert isinstance(provider, LocalKeyProvider)
        kek_materials = [
            await provider.unwrap(k.wrapped_key, context=kek_context(k.department, k.version))
            for k in keks
            if k.wrapped_key is not None
        ]
        assert kek_materials
        for row in rows:
            for material in kek_materials:
                candidate = DataKey(row.data_key_id, row.owner, 1, material)
                with pytest.raises(CiphertextIntegrityError):
                    decrypt_value(
                        candidate,
                        citizen_id=row.citizen_id,
                        field=row.field,
                        version=row.version,
                        ciphertext=row.ciphertext,
                    )
        surviving_wrapped = [
            r.wrapped_key for r in (await conn.execute(select(DATA_KEYS))).all() if r.wrapped_key
        ]
        for row in rows:
            for material in kek_materials:
                for wrapped in surviving_wrapped:
                    try:
                        data_key = AESGCM(material.reveal()).decrypt(wrapped[1:13], wrapped[13:], None)
                    except InvalidTag:
                        continue
                    candidate = DataKey(row.data_key_id, row.owner, 1, KeyMaterial(data_key))
                    with pytest.raises(CiphertextIntegrityError):
                        decrypt_value(
                            candidate,
                            citizen_id=row.citizen_id,
                            field=row.field,
                            version=row.version,
                            ciphertext=row.ciphertext,
                        )

        # The other citizen is untouched.
        values = await read_all_values_for(conn, keyring, kept_citizen)
        assert sorted(values) == sorted([f"Name of {kept_citizen}", f"LIC-{kept_citizen[:8]}"])

    async def test_shredded_key_leaves_the_cache_at_once(
        self, conn: AsyncConnection, keyring: Keyring
    ) -> None:
        (citizen,) = await add_citizens(conn, 1)
        key = await keyring.data_key_for_write(conn, citizen, "register")
        assert key.id in keyring.data_key_cache
        await keyring.shred_citizen(conn, citizen)
        assert key.id not in keyring.data_key_cache
        with pytest.raises(DataKeyDestroyed):
            await keyring.data_keys(conn, [key.id])

    async def test_no_new_key_is_made_for_a_shredded_citizen(
        self, conn: AsyncConnection, keyring: Keyring
    ) -> None:
        (citizen,) = await add_citizens(conn, 1)
        await keyring.data_key_for_write(conn, citizen, "register")
        await keyring.shred_citizen(conn, citizen)
        for department in ("register", "welfare"):
            with pytest.raises(CitizenShredded) as caught:
                await keyring.data_key_for_write(conn, citizen, department)
            assert caught.value.status == 410


async def read_all_values_for(conn: AsyncConnection, keyring: Keyring, citizen_id: str) -> list[str]:
    rows = (await conn.execute(select(FIELD_VALUES).where(FIELD_VALUES.c.citizen_id == citizen_id))).all()
    keys = await keyring.data_keys(conn, {row.data_key_id for row in rows})
    return [
        decrypt_value(
            keys[r.data_key_id],
            citizen_id=r.citizen_id,
            field=r.field,
            version=r.version,
            ciphertext=r.ciphertext,
        ).decode()
        for r in rows
    ]


class TestShreddingWhileRead:
    async def test_a_read_that_fetched_the_key_before_the_erasure_committed_does_not_cache_it(
        self, scratch_engine: AsyncEngine
    ) -> None:
        """A read in the same process loads the wrapped key from the last committed state
        while the erasure is still open, and unwraps it after the erasure evicted the cache:
        the key must not come back into the cache, where it would outlive the erasure."""
        keyring = make_keyring()
        async with scratch_engine.begin() as conn:
            (citizen,) = await add_citizens(conn, 1)
            key = await keyring.data_key_for_write(conn, citizen, "register")
        keyring.data_key_cache.clear()
        async with scratch_engine.begin() as erasure:
            assert await keyring.shred_citizen(erasure, citizen) == 1
            async with scratch_engine.connect() as read:
                # The concurrent read: the erasure is not committed, so the key still unwraps.
                assert list(await keyring.data_keys(read, [key.id])) == [key.id]
        assert key.id not in keyring.data_key_cache
        async with scratch_engine.connect() as conn:
            with pytest.raises(DataKeyDestroyed):
                await keyring.data_keys(conn, [key.id])
