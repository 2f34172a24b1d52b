"""``scripts/pgdb.py``, which ``make test`` makes and drops its PostgreSQL database with."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from sqlalchemy.engine import make_url

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "pgdb.py"


def load_pgdb(database_url: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("pgdb", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # The server the run's database is on.
    url = make_url(database_url)
    server = {"HOST": url.host or "127.0.0.1", "PORT": url.port or 5432, "USER": url.username or "postgres"}
    for name, value in server.items():
        setattr(module, name, value)
    return module


async def existing(pgdb: ModuleType, names: list[str]) -> set[str]:
    admin = await pgdb._admin()
    try:
        rows = await admin.fetch("SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", names)
    finally:
        await admin.close()
    return {row["datname"] for row in rows}


async def test_drop_takes_its_scratch_databases_and_nothing_that_only_looks_alike(
    database_url: str, on_postgres: bool
) -> None:
    if not on_postgres:
        pytest.skip("needs PostgreSQL: scripts/pgdb.py makes and drops PostgreSQL databases")
    pgdb = load_pgdb(database_url)
    made = make_url(await pgdb.create()).database
    assert made is not None
    scratch = f"{made}_0123456789"
    # What LIKE '<name>%' took as well: '_' matches any character, and '%' any ending.
    lookalikes = [made.replace("_", "x", 1), f"{made}more"]
    admin = await pgdb._admin()
    try:
        for name in [scratch, *lookalikes]:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        await pgdb.drop(f"postgresql+asyncpg://{pgdb.USER}@{pgdb.HOST}:{pgdb.PORT}/{made}")
        assert await existing(pgdb, [made, scratch, *lookalikes]) == set(lookalikes)
    finally:
        admin = await pgdb._admin()
        try:
            for name in [made, scratch, *lookalikes]:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
