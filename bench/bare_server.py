"""The baseline for ``bench/read``: the same rows the secured read returns, fetched with
the raw database driver on a long-lived connection, with no auth, policy, crypto or audit.

Run by the benchmark as ``uvicorn bench.bare_server:create_app --factory`` with
``BENCH_DATABASE_URL`` set.
"""

from __future__ import annotations

import os
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


def create_app() -> FastAPI:
    url = os.environ["BENCH_DATABASE_URL"]
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if url.startswith("sqlite"):
            state["sqlite"] = await aiosqlite.connect(url.split(":///", 1)[1])
        else:
            dsn = url.replace("postgresql+asyncpg://", "postgresql://")
            state["pg"] = await asyncpg.create_pool(dsn, min_size=4, max_size=10)
        yield
        if "sqlite" in state:
            await state["sqlite"].close()
        if "pg" in state:
            await state["pg"].close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/bare/{citizen_id}")
    async def bare(citizen_id: str) -> dict[str, Any]:
        if "sqlite" in state:
            db: aiosqlite.Connection = state["sqlite"]
            async with db.execute(CITIZEN_SQL.format(p1="?"), (citizen_id,)) as cursor:
                citizen = await cursor.fetchone()
            async with db.execute(VALUES_SQL.format(p1="?"), (citizen_id,)) as cursor:
                rows = await cursor.fetchall()
        else:
            async with state["pg"].acquire() as conn:
                citizen = await conn.fetchrow(CITIZEN_SQL.format(p1="$1"), citizen_id)
                rows = await conn.fetch(VALUES_SQL.format(p1="$1"), citizen_id)
        return {
            "id": citizen[0] if citizen else None,
            "fields": {row[0]: {"version": row[1], "owner": row[2], "size": len(row[4])} for row in rows},
        }

    return app
