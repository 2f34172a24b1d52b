"""Writers racing for the same key settle on one key; the app exposes the keyring."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.crypto.keyring import DATA_KEYS, KEKS, Keyring, get_keyring
from tests.fixtures.crypto import add_citizens, make_keyring


class TestRacingWriters:
    async def test_concurrent_first_writes_share_one_kek_and_one_data_key(
        self, scratch_engine: AsyncEngine
    ) -> None:
        async with scratch_engine.begin() as conn:
            citizens = await add_citizens(conn, 4)
        root = b"\x05" * 32
        # Separate keyrings: separate processes with nothing cached.
        keyrings = [make_keyring(root) for _ in range(4)]

        async def first_write(keyring: Keyring, citizen: str) -> int:
            async with scratch_engine.begin() as conn:
                return (await keyring.data_key_for_write(conn, citizen, "welfare")).id

        for citizen in citizens:
            ids = await asyncio.gather(*(first_write(k, citizen) for k in keyrings))
            assert len(set(ids)) == 1
        async with scratch_engine.connect() as conn:
            keks = (await conn.execute(select(KEKS.c.version).where(KEKS.c.department == "welfare"))).all()
            per_citizen = (
                await conn.execute(
                    select(DATA_KEYS.c.citizen_id, func.count()).group_by(DATA_KEYS.c.citizen_id)
                )
            ).all()
            assert len(keks) == 1
            assert sorted(n for _, n in per_citizen) == [1, 1, 1, 1]
            found = await make_keyring(root).data_keys(conn, [(await first_write(keyrings[0], citizens[0]))])
        assert len(found) == 1


class TestAppKeyring:
    async def test_the_app_carries_a_keyring_from_settings(self, app: FastAPI) -> None:
        keyring = app.state.keyring
        assert isinstance(keyring, Keyring)
        assert keyring.provider.name == "local"

        # What the get_keyring dependency resolves to inside a request.
        assert await get_keyring(Request({"type": "http", "app": app})) is keyring
