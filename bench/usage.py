"""The audit usage report (``GET /v1/audit/reports/usage``) over a large log, on SQLite and,
if reachable, PostgreSQL.

The log is BENCH_USAGE_ENTRIES entries (200,000 by default) of reads by three consumers for
two purposes over thirty days, each releasing up to three fields, written as the audit
writer writes them. The figure is the report's own path, ``query.usage_counts``, the same
call the API and the console make: the database groups the entries and unnests their
released fields. Two baselines from the same run:

- the database's own floor for one pass over those entries, ``SELECT count(*)``;
- the design before it: stream every matching entry's canonical JSON in pages and count
  its released fields in Python, which each page of the report used to do.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from bench._postgres import drop as drop_postgres
from bench._postgres import scratch_url as scratch_postgres
from service.audit import query as audit_query
from service.audit import repository as audit_repository
from service.audit.models import AuditEntryRow
from service.audit.repository import EntryFilter
from service.audit.schemas import AuditEntry
from service.audit.writer import entry_row, insert_entries
from service.db import create_engine
from service.schema import upgrade_async

ENTRIES = int(os.environ.get("BENCH_USAGE_ENTRIES", "200000"))
START = datetime(2026, 11, 1, tzinfo=UTC)
OWNERS = {"address": "register", "given_name": "register", "licence_status": "dvla", "points": "dvla"}


def _entry(rng: random.Random, n: int) -> AuditEntry:
    released = rng.sample(sorted(OWNERS), rng.randint(0, 3))
    return AuditEntry.model_validate(
        {
            "time": (START + timedelta(seconds=n * 30 * 86_400 // ENTRIES)).isoformat(),
            "request_id": f"bench-{n}",
            "client_id": "consumer",
            "department": rng.choice(["welfare", "revenue", "health"]),
            "action": "read",
            "citizen_id": str(uuid.UUID(int=n)),
            "owners": sorted({OWNERS[name] for name in released} or {"dvla"}),
            "fields_requested": released or ["points"],
            "fields_released": released,
            "decision": "permit" if released else "deny",
            "purpose": rng.choice(["benefit-eligibility", "tax-administration"]),
            "status": 200 if released else 403,
        }
    )


async def _build(url: str) -> None:
    await upgrade_async(url)
    engine = create_engine(url)
    rng = random.Random(7)
    rows = [entry_row(_entry(rng, n)) for n in range(ENTRIES)]
    for start in range(0, ENTRIES, 20_000):
        async with engine.begin() as conn:
            await insert_entries(conn, rows[start : start + 20_000])
    await engine.dispose()


async def _python_count(engine_connect: audit_repository.Connect) -> int:
    """The design before: every entry's JSON read and its released fields counted here."""
    counts: Counter[tuple[str, str, str, str]] = Counter()
    after = 0
    while True:
        async with engine_connect() as conn:
            rows = await audit_repository.page_entries(conn, EntryFilter(), after, 1000)
        for _entry_id, _leaf, canonical in rows:
            entry = json.loads(canonical)
            for name in entry["fields_released"]:
                counts[entry["department"], name, entry["purpose"], entry["time"][:10]] += 1
        if len(rows) < 1000:
            return len(counts)
        after = rows[-1][0]


async def _measure(name: str, url: str) -> None:
    engine = create_engine(url)
    connect = engine.connect
    best = {"report": float("inf"), "count": float("inf"), "python": float("inf")}
    rows = 0
    try:
        for _ in range(3):
            started = time.perf_counter()
            report = await audit_query.usage_counts(connect, EntryFilter(), "day", OWNERS, None)
            best["report"] = min(best["report"], time.perf_counter() - started)
            rows = len(report)
            started = time.perf_counter()
            async with connect() as conn:
                total = (await conn.execute(select(func.count()).select_from(AuditEntryRow))).scalar_one()
            best["count"] = min(best["count"], time.perf_counter() - started)
            started = time.perf_counter()
            groups = await _python_count(connect)
            best["python"] = min(best["python"], time.perf_counter() - started)
    finally:
        await engine.dispose()
    if total != ENTRIES or groups != rows:
        raise RuntimeError(f"{name}: {total} entries and {groups} groups counted, {rows} report rows")
    report_ms, count_ms, python_ms = (best[k] * 1000 for k in ("report", "count", "python"))
    print(
        f"{name}: usage report over {ENTRIES:,} entries ({rows} rows) {report_ms:,.0f} ms "
        f"({ENTRIES / best['report']:,.0f} entries/s); SELECT count(*) {count_ms:,.0f} ms "
        f"(report {report_ms / count_ms:.1f}x of it); counted in Python as before {python_ms:,.0f} ms "
        f"(report {python_ms / report_ms:.1f}x faster)"
    )


async def _run() -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-usage-"))
    try:
        url = f"sqlite+aiosqlite:///{folder / 'usage.db'}"
        await _build(url)
        await _measure("SQLite", url)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    postgres = await scratch_postgres()
    if postgres is None:
        print("PostgreSQL: not reachable on 127.0.0.1, skipped")
        return
    try:
        await _build(postgres)
        await _measure("PostgreSQL", postgres)
    finally:
        await drop_postgres(postgres)


def main() -> None:
    asyncio.run(_run())


if __name__ == "__main__":
    main()
