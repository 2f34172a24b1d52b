"""The baseline for ``bench/read``: the same rows the secured read returns, fetched with
the raw database driver on long-lived connections, with no auth, policy, crypto or audit.

Run by the benchmark as ``uvicorn bench.bare_server:create_app --factory`` with
``BENCH_DATABASE_URL`` set. ``BENCH_BARE_DRIVER`` picks the driver on SQLite:
``aiosqlite`` (one connection and its thread, the baseline the issue measured) or
``sqlite3`` (one connection used on the event loop, as the secured read now reads). On
PostgreSQL it is an asyncpg pool that skips the reset query on release, as the secured
read's pool does (``service.db.PostgresReads``), so neither side pays a round trip the
other does not.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiosqlite
import asyncpg
from fastapi import FastAPI

CITIZEN_SQL = "SELECT id, status, version FROM citizens WHERE id = {p1}"
VALUES_SQL = (
    "SELECT field, version, owner, data_key_id, ciphertext, written_at FROM field_values "
    "WHERE citizen_id = {p1} AND is_current"
)


async def _no_reset(_connection: asyncpg.Connection) -> None:
    return None


def create_app() -> FastAPI:
    url = os.environ["BENCH_DATABASE_URL"]
    driver = os.environ.get("BENCH_BARE_DRIVER", "aiosqlite")
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[1]
            if driver == "sqlite3":
                state["sqlite3"] = sqlite3.connect(path, isolation_level=None)
            else:
                state["sqlite"] = await aiosqlite.connect(path)
        else:
            dsn = url.replace("postgresql+asyncpg://", "postgresql://")
            state["pg"] = await asyncpg.create_pool(dsn, min_size=4, max_size=10, reset=_no_reset)
        yield
        if "sqlite" in state:
            await state["sqlite"].close()
        if "sqlite3" in state:
            state["sqlite3"].close()
        if "pg" in state:
            await state["pg"].close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/bare/{citizen_id}")
    async def bare(citizen_id: str) -> dict[str, Any]:
        if "sqlite3" in state:
            db3: sqlite3.Connection = state["sqlite3"]
            citizen = db3.execute(CITIZEN_SQL.format(p1="?"), (citizen_id,)).fetchone()
            rows = db3.execute(VALUES_SQL.format(p1="?"), (citizen_id,)).fetchall()
        elif "sqlite" in state:
            db: aiosqlite.Connection = state["sqlite"]
            async with db.execute(CITIZEN_SQL.format(p1="?"), (citizen_id,)) as cursor:
                citizen = await cursor.fetchone()
            async with db.execute(VALUES_SQL.format(p1="?"), (citizen_id,)) as cursor:
                rows = list(await cursor.fetchall())
        else:
            async with state["pg"].acquire() as conn:
                citizen = await conn.fetchrow(CITIZEN_SQL.format(p1="$1"), citizen_id)
                rows = await conn.fetch(VALUES_SQL.format(p1="$1"), citizen_id)
        return {
            "id": citizen[0] if citizen else None,
            "fields": {row[0]: {"version": row[1], "owner": row[2], "size": len(row[4])} for row in rows},
        }

    return app
