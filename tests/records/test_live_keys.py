"""``with_live_keys``: the rule that leaves out values whose data key was destroyed (their
citizen erased after they were read), shared by lookup, the duplicate check and the import."""

from __future__ import annotations

import secrets

from sqlalchemy.ext.asyncio import AsyncSession

from service.records import repository
from service.records.service import with_live_keys
from tests.fixtures.crypto import add_citizens, make_keyring, write_value


class TestWithLiveKeys:
    async def test_leaves_out_the_rows_under_destroyed_keys_and_unwraps_the_rest(
        self, session: AsyncSession
    ) -> None:
        conn = await session.connection()
        root = secrets.token_bytes(32)
        keyring = make_keyring(root)
        kept, erased = await add_citizens(conn, 2)
        for citizen in (kept, erased):
            await write_value(conn, keyring, citizen, "given_name", "register", "Live")
            await write_value(conn, keyring, citizen, "licence_status", "dvla", "valid")
        rows = await repository.current_values(conn, [kept, erased], ["given_name", "licence_status"])
        # Another process's erasure; this one's keyring has none of the keys cached.
        await make_keyring(root).shred_citizen(conn, erased)

        live, keys = await with_live_keys(conn, make_keyring(root), rows)

        assert sorted((row.citizen_id, row.field) for row in live) == [
            (kept, "given_name"),
            (kept, "licence_status"),
        ]
        assert set(keys) == {row.data_key_id for row in live}

    async def test_none_left_is_no_rows_and_no_keys(self, session: AsyncSession) -> None:
        conn = await session.connection()
        keyring = make_keyring()
        (erased,) = await add_citizens(conn, 1)
        await write_value(conn, keyring, erased, "given_name", "register", "Gone")
        rows = await repository.current_values(conn, [erased], ["given_name"])
        await keyring.shred_citizen(conn, erased)

        assert await with_live_keys(conn, keyring, rows) == ([], {})
