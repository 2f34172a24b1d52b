"""A scratch PostgreSQL database for a benchmark: made on 127.0.0.1 (PGHOST, PGUSER) and
dropped afterwards."""

from __future__ import annotations

import os
import uuid

import asyncpg
from sqlalchemy.engine import make_url

PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_USER = os.environ.get("PGUSER", "postgres")


async def scratch_url() -> str | None:
    """The URL of a new empty database, or None when PostgreSQL is not reachable."""
    try:
        admin = await asyncpg.connect(host=PG_HOST, user=PG_USER, database="postgres", timeout=5)
    except (OSError, asyncpg.PostgresError):
        return None
    name = f"tellonce_bench_{uuid.uuid4().hex[:10]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:5432/{name}"


async def drop(url: str) -> None:
    admin = await asyncpg.connect(host=PG_HOST, user=PG_USER, database="postgres", timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await admin.close()
