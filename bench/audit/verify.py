"""Whole-log verification speed: ``tellonce audit verify`` over a sequenced log, on SQLite
and, if reachable, PostgreSQL.

The log is built once per database (entries a millisecond apart, written in large
transactions, then sequenced with checkpoints). The figure is entries verified per second
by the command's own path (``verify_database`` with the worker processes it starts, one
per CPU): every entry parsed once and checked to be canonical, every leaf hash recomputed
and compared with the recorded one, every filter column derived again and compared, the
tree recomputed and every checkpoint checked. Goal: >= 100,000 entries/s.

The baseline, in the same run, is the floor of that design: the same worker processes
read the same pages, only hash each leaf and grow each page's tree, and the parent
combines the same page ranges and checks the same checkpoints. Also shown: the
one-process path (the console's "verify now", and every log under
``Parallel.from_size``) against the one-process floor (streaming the rows and hashing
them), and the leaf checks alone on rows already in memory, so each share of the time
is visible. CPU figures count the workers' time too; the machine is shared, so wall
figures move with its load (printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import goals
from bench._postgres import drop as drop_postgres
from bench._postgres import scratch_url as scratch_postgres
from bench.audit.appends import _entry
from service.audit import repository as audit_repository
from service.audit import verify_pages
from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.cli import parallel_verification, verify_database
from service.audit.leaf_checks import check_leaves
from service.audit.schemas import AuditEntry
from service.audit.sequencer import Sequencer, SequencerConfig
from service.audit.service import VERIFY_PAGE, verify_stored_log
from service.audit.verify import LogVerifier, StoredCheckpoint
from service.audit.verify_pages import PageResult, Parallel
from service.audit.writer import entry_row, insert_entries
from service.config import Settings
from service.db import create_engine
from service.schema import upgrade_async

ENTRIES = int(os.environ.get("BENCH_VERIFY_ENTRIES", "200000"))
GOAL = 100_000
ORIGIN = "bench.example/audit"
START = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def _bench_entry(n: int) -> AuditEntry:
    """The appends bench's entry, each a millisecond after the last (no two times alike)."""
    return _entry(n).model_copy(update={"time": (START + timedelta(milliseconds=n)).isoformat()})


async def _build(url: str, signer: NoteSigner) -> None:
    await upgrade_async(url)
    engine = create_engine(url)
    rows = [entry_row(_bench_entry(n)) for n in range(ENTRIES)]
    for start in range(0, ENTRIES, 20_000):
        async with engine.begin() as conn:
            await insert_entries(conn, rows[start : start + 20_000])
    config = SequencerConfig(origin=ORIGIN, checkpoint_every=1000, checkpoint_interval=3600, batch_size=5000)
    sequencer = Sequencer(engine, signer, config)
    while await sequencer.run_once():
        pass
    await engine.dispose()


def _hash_only(rows: Sequence[Sequence[Any]]) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + row[2].encode()).digest() for row in rows]


def _hash_stored_page(first: int, below: int, cuts: Sequence[int]) -> PageResult:
    """The baseline's page check, in a worker: read the page, hash each leaf and grow the
    page's tree as the real check does, nothing more."""
    rows = verify_pages.read_stored_page(first, below)
    if not rows:
        return None, [], None
    return int(rows[0][0]), verify_pages.page_ranges(_hash_only(rows), cuts), None


class Rates:
    """Entries per second of wall time, and per second of CPU time in this process and
    the worker processes it waited for (on a shared machine the second says what the code
    costs, the first what it got)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), self._cpu()

    @staticmethod
    def _cpu() -> float:
        own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime

    def stop(self, count: int) -> tuple[float, float]:
        return count / (time.perf_counter() - self.wall), count / (self._cpu() - self.cpu)


async def _timed(run: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    rates = Rates()
    await run()
    return rates.stop(ENTRIES)


def _line(label: str, rate: tuple[float, float], base_label: str, base: tuple[float, float]) -> str:
    return (
        f"{label}: {rate[0]:>9,.0f} entries/s ({rate[1]:,.0f} per CPU-second) | {base_label}: "
        f"{base[0]:>9,.0f}/s ({base[1]:,.0f} per CPU-second) | ratio {rate[0] / base[0]:.2f} "
        f"(CPU {rate[1] / base[1]:.2f})"
    )


async def _checkpoints(url: str) -> list[StoredCheckpoint]:
    engine = create_engine(url)
    async with engine.connect() as conn:
        stored = [
            StoredCheckpoint(size, root, note, f"checkpoint {cid}")
            for cid, size, root, note in await audit_repository.all_checkpoints(conn)
        ]
    await engine.dispose()
    return stored


async def _stream(url: str, use: Callable[[Sequence[Sequence[Any]]], object]) -> None:
    """Stream every leaf's row as the one-process path does, handing each page to ``use``."""
    engine = create_engine(url)
    async with (
        engine.connect() as conn,
        contextlib.aclosing(audit_repository.stream_for_verification(conn, ENTRIES, VERIFY_PAGE)) as stream,
    ):
        async for rows in stream:
            use(rows)
    await engine.dispose()


async def _run(label: str, url: str) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    started = time.perf_counter()
    await _build(url, signer)
    built = time.perf_counter() - started
    print(f"{label}: built and sequenced a log of {ENTRIES:,} entries in {built:.1f}s")
    verifier = NoteVerifier.parse(signer.verifier_key())
    checkpoints = await _checkpoints(url)
    parallel = parallel_verification(url) or Parallel(url, workers=1)

    async def floor() -> None:
        log = LogVerifier(verifier, checkpoints)
        await verify_pages.verify_in_pages(log, parallel, ENTRIES, page_check=_hash_stored_page)
        log.finish()

    # One untimed pass first: the first read of freshly written rows costs more (on
    # PostgreSQL it sets their hint bits), and whichever run came first would pay it.
    await floor()
    verified = await _timed(lambda: verify_database(Settings(database_url=url), verifier, parallel=parallel))
    baseline = await _timed(floor)
    print(
        _line(
            f"  audit verify ({parallel.workers} workers)",
            verified,
            "same workers reading the same pages, hashing each leaf only",
            baseline,
        )
    )
    goals.check(f"audit verify, {label}", verified[0], GOAL, unit=" entries/s")
    print(f"  ({len(checkpoints)} checkpoints; {goals.load_average()})")

    engine = create_engine(url)
    one_process = await _timed(lambda: verify_stored_log(engine.connect, verifier))
    await engine.dispose()
    one_floor = await _timed(lambda: _stream(url, _hash_only))
    print(_line("  one process (console)", one_process, "streaming rows, hashing each leaf", one_floor))

    pages: list[Sequence[Sequence[Any]]] = []
    await _stream(url, pages.append)
    checking = Rates()
    for rows in pages:
        check_leaves(rows, int(rows[0][0]))
    checked = checking.stop(ENTRIES)
    hashing = Rates()
    for rows in pages:
        _hash_only(rows)
    hashed = hashing.stop(ENTRIES)
    print(_line("  rows already in memory: leaf checks", checked, "hashing each leaf only", hashed))


async def _main(folder: Path) -> None:
    await _run("SQLite", f"sqlite+aiosqlite:///{folder / 'verify.db'}")
    shutil.rmtree(folder, ignore_errors=True)  # 200,000 entries leave 250 MB
    url = await scratch_postgres()
    if url is None:
        print("PostgreSQL: not reachable on 127.0.0.1:5432: skipped")
        return
    try:
        await _run("PostgreSQL", url)
    finally:
        await drop_postgres(url)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-verify-"))
    try:
        asyncio.run(_main(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
