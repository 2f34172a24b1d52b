"""Durable audit appends per second: the batched group-commit writer against one
transaction per entry, with 200 concurrent writers, on SQLite and on PostgreSQL.

Both sides pay for durability: SQLite runs with synchronous=FULL (as the service does)
and PostgreSQL with its default synchronous_commit=on, so every figure counts entries
that were on disk when their append returned. Goal: >= 20,000/s batched on SQLite.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from service.audit.schemas import AuditEntry
from service.audit.writer import AuditWriter, entry_row, insert_entries
from service.db import create_engine
from service.schema import upgrade_async

WRITERS = 200
BATCHED_ENTRIES = 20_000
BASELINE_SECONDS = 3.0
PG_HOST = os.environ.get("PGHOST", "127.0.0.1")
PG_USER = os.environ.get("PGUSER", "postgres")


def _entry(n: int) -> AuditEntry:
    return AuditEntry(
        time="2026-11-29T10:00:00+00:00",
        request_id=f"bench-{n}",
        client_id="welfare-consumer",
        department="welfare",
        on_behalf_of="officer-17",
        action="read",
        citizen_id=str(uuid.UUID(int=n)),
        owners=["dvla"],
        fields_requested=["licence_status", "licence_number"],
        fields_released=["licence_status"],
        decision="partial",
        reasons=[{"field": "licence_number", "effect": "deny", "reason": "no agreement"}],  # type: ignore[list-item]
        purpose="benefit-eligibility",
        legal_basis=["Social Security Administration Act 1992, s.122"],
        status=200,
        source="127.0.0.1",
    )


async def _batched(url: str) -> tuple[float, int]:
    engine = create_engine(url)
    writer = AuditWriter(engine)
    await writer.start()
    entries = [_entry(n) for n in range(BATCHED_ENTRIES)]

    async def worker(offset: int) -> None:
        for n in range(offset, BATCHED_ENTRIES, WRITERS):
            await writer.append(entries[n])

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(WRITERS)))
    elapsed = time.perf_counter() - started
    await writer.stop()
    await engine.dispose()
    return BATCHED_ENTRIES / elapsed, writer.batches_committed


async def _one_per_transaction(url: str) -> float:
    engine = create_engine(url)
    done = 0
    deadline = time.perf_counter() + BASELINE_SECONDS

    async def worker(offset: int) -> None:
        nonlocal done
        n = offset
        while time.perf_counter() < deadline:
            async with engine.begin() as conn:
                await insert_entries(conn, [entry_row(_entry(n))])
            done += 1
            n += WRITERS

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(WRITERS)))
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return done / elapsed


async def _postgres_url() -> str | None:
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


async def _drop_postgres(url: str) -> None:
    admin = await asyncpg.connect(host=PG_HOST, user=PG_USER, database="postgres", timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await admin.close()


async def _run(label: str, url: str) -> None:
    await upgrade_async(url)
    batched, batches = await _batched(url)
    baseline = await _one_per_transaction(url)
    print(
        f"{label:<10} batched writer: {batched:>9,.0f} appends/s "
        f"({BATCHED_ENTRIES} entries in {batches} commits, {WRITERS} writers) | "
        f"one transaction per entry: {baseline:>7,.0f}/s | ratio {batched / baseline:,.1f}x"
    )


async def _main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-"))
    await _run("SQLite", f"sqlite+aiosqlite:///{folder / 'bench.db'}")
    url = await _postgres_url()
    if url is None:
        print("PostgreSQL  not reachable on 127.0.0.1:5432: skipped")
        return
    try:
        await _run("PostgreSQL", url)
    finally:
        await _drop_postgres(url)


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
