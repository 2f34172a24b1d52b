"""bench/import: ``tellonce import`` of a register's records, against a bare bulk insert.

For each database (a SQLite file, and PostgreSQL when it is reachable) on a fresh migrated
store with the demo catalog: a CSV of ``BENCH_IMPORT_ROWS`` citizens (default 100,000),
each a national id and five register fields (``service.sim.register_file``: six values),
is imported by ``importing.plan_import`` and ``run_import``, which is what the command
runs: the file scan and hash, the API's validation, a data key per citizen, six AEAD
values, blind indexes, one ``register`` audit entry per citizen and the progress of each
batch. Timed from the scan to the last commit.

Baseline, in the same run and database: as many rows of six random 48-byte values (the
size of a field's ciphertext) into a plain table, by the driver's own bulk path
(``sqlite3`` executemany in one transaction; asyncpg ``copy_records_to_table``). It
prints citizens/s, the baseline's rows/s and the ratio; goals: 20,000 citizens/s on
PostgreSQL and 10,000/s on SQLite. Also the CPU time per citizen of the importing process
and of its worker process (which prepares the batches after the first), from
``getrusage``: steadier than the wall time on a shared machine.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import secrets
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from rich.console import Console
from sqlalchemy.engine import make_url

from bench import _postgres, goals
from service.config import Settings
from service.crypto.keyring import Keyring
from service.db import Database
from service.records import importing
from service.schema import upgrade_async
from service.sim import policies as demo_policies
from service.sim.register_file import DEPARTMENT, write_register_file

ROOT = Path(__file__).resolve().parent.parent
ROWS = int(os.environ.get("BENCH_IMPORT_ROWS", "100000"))
BATCH = int(os.environ.get("BENCH_IMPORT_BATCH", str(importing.DEFAULT_BATCH_SIZE)))
GOALS = {"sqlite": 10_000.0, "postgresql": 20_000.0}
VALUE_BYTES = 48


def _random_rows(count: int) -> list[tuple[Any, ...]]:
    return [(n, *(secrets.token_bytes(VALUE_BYTES) for _ in range(6))) for n in range(count)]


def _sqlite_baseline(path: Path, count: int) -> float:
    """Rows/s of a bare executemany in one transaction, on a file with the service's pragmas."""
    rows = _random_rows(count)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(
            "CREATE TABLE baseline (id INTEGER PRIMARY KEY, a BLOB, b BLOB, c BLOB, d BLOB, e BLOB, f BLOB)"
        )
        started = time.perf_counter()
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO baseline VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        connection.execute("COMMIT")
        return count / (time.perf_counter() - started)
    finally:
        connection.close()


async def _postgres_baseline(url: str, count: int) -> float:
    """Rows/s of a bare ``copy_records_to_table`` into a plain table."""
    rows = _random_rows(count)
    parsed = make_url(url)
    connection = await asyncpg.connect(host=parsed.host, user=parsed.username, database=parsed.database)
    try:
        await connection.execute(
            "CREATE TABLE baseline "
            "(id bigint PRIMARY KEY, a bytea, b bytea, c bytea, d bytea, e bytea, f bytea)"
        )
        started = time.perf_counter()
        async with connection.transaction():
            await connection.copy_records_to_table("baseline", records=rows)
        return count / (time.perf_counter() - started)
    finally:
        await connection.close()


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def _import(url: str, folder: Path, source: Path) -> tuple[importing.ImportReport, float, float]:
    """The report, and the CPU seconds of this process and of its finished children (the
    import's worker) during the import."""
    settings = Settings(
        env="test",
        database_url=url,
        data_dir=folder,
        root_key=base64.b64encode(secrets.token_bytes(32)).decode(),  # type: ignore[arg-type]
        log_level="WARNING",
        policies_dir=ROOT / "policies",
    )
    await upgrade_async(url)
    database = Database(settings)
    try:
        await demo_policies.apply(database, settings.policies_dir, Console(quiet=True))
        keyring = Keyring.from_settings(settings)
        own, children = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        plan = await importing.plan_import(database.engine, source, "csv", DEPARTMENT, "register")
        report = await importing.run_import(
            database.engine, keyring, plan, actor="operator:bench", batch_size=BATCH
        )
        report.elapsed = time.perf_counter() - started
        own = _cpu_seconds(resource.RUSAGE_SELF) - own
        return report, own, _cpu_seconds(resource.RUSAGE_CHILDREN) - children
    finally:
        await database.dispose()


def _report(kind: str, imported: tuple[importing.ImportReport, float, float], baseline: float) -> None:
    report, own, worker = imported
    rate = report.counts.registered / report.elapsed
    per_citizen = 1e6 / max(report.counts.registered, 1)
    print(
        f"  {kind}: {report.counts.registered:,} citizens in {report.elapsed:.1f} s: {rate:,.0f} citizens/s "
        f"({rate * 6:,.0f} values/s); bare bulk insert of {ROWS:,} rows: {baseline:,.0f} rows/s; "
        f"ratio import/bare {rate / baseline:.3f}; CPU per citizen: importing process "
        f"{own * per_citizen:.0f} us, worker {worker * per_citizen:.0f} us"
    )
    assert report.counts.registered == ROWS, report.counts
    goals.check(f"import citizens/s with 6 fields, {kind}", rate, GOALS[kind], unit="/s")


async def _run(folder: Path) -> None:
    source = write_register_file(folder / "register.csv", ROWS)
    print(f"  {ROWS:,} citizens, batches of {BATCH:,}; {goals.load_average()}")
    baseline = _sqlite_baseline(folder / "baseline.db", ROWS)
    imported = await _import(f"sqlite+aiosqlite:///{folder / 'import.db'}", folder, source)
    _report("sqlite", imported, baseline)
    url = await _postgres.scratch_url()
    if url is None:
        print("  PostgreSQL is not reachable: its half is skipped")
        return
    try:
        baseline = await _postgres_baseline(url, ROWS)
        imported = await _import(url, folder, source)
        _report("postgresql", imported, baseline)
    finally:
        await _postgres.drop(url)


def main() -> None:
    # The file, the databases and the data folder: about 360 MB at 100,000 citizens.
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-import-"))
    try:
        asyncio.run(_run(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
