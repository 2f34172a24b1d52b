"""Durable audit appends per second (issue 16, goal 3), on SQLite and on PostgreSQL.

200 concurrent writers each do what a secured read does after it has decided and
decrypted: build the read's audit entry (``RecordsService.entry``, with the demo catalog
and per-field policy decisions) and await ``AuditWriter.append``, the batched group-commit
writer the service runs. Measured in the same run: the baseline, one transaction per
entry (the same entry, inserted by ``insert_entries`` in a transaction of its own), and
the ceiling, the database alone (the same rows made beforehand, inserted in batches of
the writer's size), which says how much of the time is the entries' and the writer's.
Then the writer again with 16 writers, whose small batches show the cost per batch.

Both pay for durability: SQLite runs with synchronous=FULL (as the service does) and
PostgreSQL with its default synchronous_commit=on, so every figure counts entries that
were committed when their append returned. Goals: >= 20,000/s on SQLite and >= 10,000/s
on PostgreSQL with 200 writers.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench import goals
from bench._postgres import drop as drop_postgres
from bench._postgres import scratch_url as scratch_postgres
from service.audit.schemas import AuditEntry
from service.audit.writer import AuditWriter, entry_row, entry_values, insert_entries, insert_values
from service.auth.dependencies import Principal
from service.auth.facts import RequestFacts
from service.catalog.loader import load_catalog
from service.catalog.schemas import Catalog
from service.db import create_engine
from service.policy.engine import Decision, RequestContext
from service.records.service import RecordsService
from service.schema import upgrade_async

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 200
BATCHED_ENTRIES = int(os.environ.get("BENCH_AUDIT_APPENDS", "40000"))
# Few writers make small batches, where the cost per batch (hand-offs, fsync) shows: a
# secured read under 32 concurrent requests committed about 16 entries a batch.
FEW_WRITERS = 16
FEW_ENTRIES = BATCHED_ENTRIES // 5
BASELINE_SECONDS = 3.0
GOALS = {"SQLite": 20_000, "PostgreSQL": 10_000}

# A welfare officer's read of three DVLA fields: two permitted by a signed agreement, one
# refused, as the policy engine decides them.
REQUESTED = ["licence_status", "vehicle_registration", "licence_number"]
_BASIS = "Social Security Administration Act 1992, s.122"
_DIGEST = "9f2c" * 16
_REFUSED = "no agreement lets dwp read licence_number for benefit-eligibility"
_PERMITS = "agreement licence-status-for-benefits permits dwp to read {} for benefit-eligibility"
DECISIONS = {
    name: Decision(name, "permit", "licence-status-for-benefits", 3, _PERMITS.format(name), _BASIS, _DIGEST)
    for name in REQUESTED[:2]
} | {
    "licence_number": Decision(
        "licence_number",
        "deny",
        None,
        None,
        "no agreement lets dwp read licence_number for benefit-eligibility",
    )
}
RELEASED = [name for name in REQUESTED if DECISIONS[name].permitted]


_OFFICER = replace(Principal.with_roles("welfare-consumer", "dwp", "consumer"), on_behalf_of="officer-17")


def _facts(n: int) -> RequestFacts:
    """What authentication hands the read path: who asks, for which request and purpose."""
    return RequestFacts(
        principal=_OFFICER,
        request_id=uuid.UUID(int=n).hex,
        source="127.0.0.1",
        purpose="benefit-eligibility",
    )


def _read_entry(catalog: Catalog, facts: RequestFacts, citizen_id: str) -> AuditEntry:
    """The entry ``records.reads.read`` appends, built the way it builds it."""
    context = RequestContext(
        purpose=facts.purpose or "", case_ref=facts.case_ref, time=datetime.now(UTC), citizen_status="alive"
    )
    return RecordsService.entry(
        facts,
        "read",
        context=context,
        citizen_id=citizen_id,
        catalog=catalog,
        requested=REQUESTED,
        released=RELEASED,
        decisions=DECISIONS,
        status=200,
    )


def _entry(n: int) -> AuditEntry:
    """A fixed read entry (validated from its values), which ``bench/audit/verify`` logs."""
    return AuditEntry.model_validate(
        {
            "time": "2026-11-29T10:00:00+00:00",
            "request_id": f"bench-{n}",
            "client_id": "welfare-consumer",
            "department": "welfare",
            "on_behalf_of": "officer-17",
            "action": "read",
            "citizen_id": str(uuid.UUID(int=n)),
            "owners": ["dvla"],
            "fields_requested": ["licence_status", "licence_number"],
            "fields_released": ["licence_status"],
            "decision": "partial",
            "reasons": [{"field": "licence_number", "effect": "deny", "reason": "no agreement"}],
            "purpose": "benefit-eligibility",
            "legal_basis": ["Social Security Administration Act 1992, s.122"],
            "status": 200,
            "source": "127.0.0.1",
        }
    )


def _requests(count: int) -> list[tuple[RequestFacts, str]]:
    # Authentication's part (who, which request, which citizen) is made before the clock.
    return [(_facts(n), str(uuid.UUID(int=n))) for n in range(count)]


async def _batched(url: str, catalog: Catalog, writers: int, entries: int) -> tuple[float, float, int]:
    engine = create_engine(url)
    writer = AuditWriter(engine)
    await writer.start()
    requests = _requests(entries)

    async def worker(offset: int) -> None:
        for n in range(offset, entries, writers):
            facts, citizen_id = requests[n]
            await writer.append(_read_entry(catalog, facts, citizen_id))

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(w) for w in range(writers)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await writer.stop()
    await engine.dispose()
    return entries / elapsed, cpu / entries, writer.batches_committed


async def _database_alone(url: str, catalog: Catalog) -> tuple[float, float]:
    """The same rows made beforehand, inserted by ``insert_values`` in transactions of
    ``WRITERS`` (the writer's batches under this load): what the database and its driver
    allow, with no entry to build and no one waiting."""
    engine = create_engine(url)
    rows = [
        entry_values(_read_entry(catalog, facts, citizen_id))
        for facts, citizen_id in _requests(BATCHED_ENTRIES)
    ]
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, BATCHED_ENTRIES, WRITERS):
        async with engine.begin() as conn:
            await insert_values(conn, rows[start : start + WRITERS])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await engine.dispose()
    return BATCHED_ENTRIES / elapsed, cpu / BATCHED_ENTRIES


async def _one_per_transaction(url: str, catalog: Catalog) -> float:
    engine = create_engine(url)
    requests = _requests(WRITERS)
    done = 0
    deadline = time.perf_counter() + BASELINE_SECONDS

    async def worker(offset: int) -> None:
        nonlocal done
        facts, citizen_id = requests[offset]
        while time.perf_counter() < deadline:
            async with engine.begin() as conn:
                await insert_entries(conn, [entry_row(_read_entry(catalog, facts, citizen_id))])
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(WRITERS)))
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return done / elapsed


async def _run(label: str, url: str, catalog: Catalog) -> None:
    await upgrade_async(url)
    batched, cpu, batches = await _batched(url, catalog, WRITERS, BATCHED_ENTRIES)
    few, few_cpu, few_batches = await _batched(url, catalog, FEW_WRITERS, FEW_ENTRIES)
    alone, alone_cpu = await _database_alone(url, catalog)
    baseline = await _one_per_transaction(url, catalog)
    print(
        f"{label:<10} batched writer: {batched:>7,.0f} appends/s ({BATCHED_ENTRIES:,} entries in {batches} "
        f"commits, {WRITERS} writers, {cpu * 1e6:.0f} us of this process's CPU each) | "
        f"one transaction per entry: {baseline:,.0f}/s, ratio {batched / baseline:,.1f}x | "
        f"the database alone (rows made beforehand, {WRITERS} a transaction): {alone:,.0f}/s, "
        f"{alone_cpu * 1e6:.0f} us CPU each, ratio {batched / alone:.2f}"
    )
    print(
        f"{label:<10} {FEW_WRITERS} writers (small batches, as the secured read's): {few:>7,.0f} appends/s "
        f"({FEW_ENTRIES:,} entries in {few_batches} commits, {few_cpu * 1e6:.0f} us CPU each) | "
        f"ratio to one transaction per entry {few / baseline:,.1f}x"
    )
    goals.check(f"durable audit appends, {label}, {WRITERS} writers", batched, GOALS[label], unit="/s")


async def _main() -> None:
    catalog = load_catalog(ROOT / "policies")
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-"))
    await _run("SQLite", f"sqlite+aiosqlite:///{folder / 'bench.db'}", catalog)
    url = await scratch_postgres()
    if url is None:
        print("PostgreSQL not reachable on 127.0.0.1:5432: not measured")
        goals.check(
            f"durable audit appends, PostgreSQL, {WRITERS} writers", 0, GOALS["PostgreSQL"], unit="/s"
        )
        return
    try:
        await _run("PostgreSQL", url, catalog)
    finally:
        await drop_postgres(url)


def main() -> None:
    asyncio.run(_main())


if __name__ == "__main__":
    main()
