"""A key made in a transaction that rolls back is forgotten by the keyring's caches: its
data-key id (SQLite gives a rolled-back id again) or KEK version (numbered max + 1 on every
database) may go to another key next, and the cache must not answer for that key with the
material that was never stored."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import begin_on_sqlite
from tests.fixtures.crypto import add_citizens, make_keyring, read_all_values, write_value


async def rolled_back(engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    """What ``work`` returns, its transaction rolled back (as a failed audit append's is)."""
    async with engine.connect() as conn:
        transaction = await conn.begin()
        made = await work(conn)
        await transaction.rollback()
    return made


async def test_a_data_key_id_given_again_after_a_rollback_is_the_new_key(scratch_engine: AsyncEngine) -> None:
    root = secrets.token_bytes(32)
    keyring = make_keyring(root)
    async with scratch_engine.begin() as conn:
        first, second = await add_citizens(conn, 2)
        await write_value(conn, keyring, first, "given_name", "register", "Ada")
    undone = await rolled_back(
        scratch_engine, lambda conn: keyring.data_key_for_write(conn, first, "welfare")
    )
    assert undone.id not in keyring.data_key_cache
    # The next key (made in bulk, as registration does) may get the same id on SQLite.
    async with scratch_engine.begin() as conn:
        made = (await keyring.new_data_keys(conn, [(second, "register")]))[(second, "register")]
        await write_value(conn, keyring, second, "given_name", "register", "Bea")
    async with scratch_engine.begin() as conn:
        # This keyring and a fresh one (another process) read both values, and the key a
        # write is given is the stored one.
        assert sorted((await read_all_values(conn, keyring)).values()) == ["Ada", "Bea"]
        assert sorted((await read_all_values(conn, make_keyring(root))).values()) == ["Ada", "Bea"]
        used = await keyring.data_key_for_write(conn, second, "register")
        assert used.id == made.id
        assert used.material.reveal() == made.material.reveal()


async def test_a_kek_version_another_process_then_made_is_the_stored_one(scratch_engine: AsyncEngine) -> None:
    root = secrets.token_bytes(32)
    one, two = make_keyring(root), make_keyring(root)  # two processes, one root key
    async with scratch_engine.begin() as conn:
        first, second = await add_citizens(conn, 2)
    # The department's first write in process one makes its KEK version 1, then is undone.
    await rolled_back(scratch_engine, lambda conn: one.data_key_for_write(conn, first, "welfare"))
    assert ("welfare", 1) not in one.kek_cache
    # Process two makes and commits the version 1 that is kept.
    async with scratch_engine.begin() as conn:
        await write_value(conn, two, first, "benefit", "welfare", "yes")
    # Process one wraps a new data key under the stored version 1: every process reads it.
    async with scratch_engine.begin() as conn:
        await write_value(conn, one, second, "benefit", "welfare", "no")
    async with scratch_engine.begin() as conn:
        for keyring in (one, two, make_keyring(root)):
            keyring.data_key_cache.clear()
            assert sorted((await read_all_values(conn, keyring)).values()) == ["no", "yes"]


async def test_a_key_made_under_a_savepoint_that_rolls_back_is_forgotten(scratch_engine: AsyncEngine) -> None:
    root = secrets.token_bytes(32)
    keyring = make_keyring(root)
    async with scratch_engine.begin() as conn:
        first, second = await add_citizens(conn, 2)
        await write_value(conn, keyring, first, "given_name", "register", "Ada")
    async with scratch_engine.begin() as conn:
        await begin_on_sqlite(conn)
        nested = await conn.begin_nested()
        undone = await keyring.data_key_for_write(conn, second, "register")
        await nested.rollback()
        assert undone.id not in keyring.data_key_cache
        await write_value(conn, keyring, second, "given_name", "register", "Bea")
    async with scratch_engine.begin() as conn:
        assert sorted((await read_all_values(conn, make_keyring(root))).values()) == ["Ada", "Bea"]
        assert sorted((await read_all_values(conn, keyring)).values()) == ["Ada", "Bea"]
