"""Whole-log verification speed: ``tellonce audit verify`` over a sequenced SQLite log.

The log is built once (entries a millisecond apart, written in large transactions, then
sequenced with checkpoints every 1,000 leaves). The figure is entries verified per second
by ``verify_stored_log``: every entry parsed once and checked to be canonical, every leaf
hash recomputed and compared with the recorded one, every filter column derived again and
compared, the tree recomputed and every checkpoint checked. The baseline, in the same run,
reads the same rows with the same streamed query and only hashes each entry as a leaf:
the floor any verifier pays. The same split is then measured on rows already in memory
(the checks against the hashing alone), so the database's share is visible. Goal: >=
100,000 entries/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.audit.appends import _entry
from service.audit import repository as audit_repository
from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.schemas import AuditEntry
from service.audit.sequencer import Sequencer, SequencerConfig
from service.audit.service import VERIFY_PAGE, verify_stored_log
from service.audit.verify import LogVerifier, StoredCheckpoint
from service.audit.writer import entry_row, insert_entries
from service.db import create_engine
from service.schema import upgrade_async

ENTRIES = int(os.environ.get("BENCH_VERIFY_ENTRIES", "200000"))
ORIGIN = "bench.example/audit"
START = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def _bench_entry(n: int) -> AuditEntry:
    """The appends bench's entry, each a millisecond after the last (no two times alike)."""
    return _entry(n).model_copy(update={"time": (START + timedelta(milliseconds=n)).isoformat()})


async def _build(url: str, signer: NoteSigner) -> None:
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


def _hash_only(rows: Sequence[Sequence[Any]]) -> None:
    for row in rows:
        hashlib.sha256(b"\x00" + row[2].encode()).digest()


class Rates:
    """Entries per second of wall time, and per second of this process's CPU time (on a
    shared machine the second says what the code costs, the first what it got)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self, count: int) -> tuple[float, float]:
        return count / (time.perf_counter() - self.wall), count / (time.process_time() - self.cpu)


async def _read(
    url: str, use: Callable[[Sequence[Sequence[Any]]], object], *, keep: bool = False
) -> tuple[tuple[float, float], list[Any]]:
    """Stream every leaf's row as verification does, handing each page to ``use`` (and
    keeping the pages with ``keep``: not while timing against verification, which keeps
    only the page in hand, since a growing heap slows every collection)."""
    engine = create_engine(url)
    pages: list[Any] = []
    rates = Rates()
    async with (
        engine.connect() as conn,
        contextlib.aclosing(audit_repository.stream_for_verification(conn, ENTRIES, VERIFY_PAGE)) as stream,
    ):
        async for rows in stream:
            use(rows)
            if keep:
                pages.append(rows)
    measured = rates.stop(ENTRIES)
    await engine.dispose()
    return measured, pages


async def _verify(url: str, verifier: NoteVerifier) -> tuple[tuple[float, float], int]:
    engine = create_engine(url)
    rates = Rates()
    size, checkpoints = await verify_stored_log(engine.connect, verifier)
    measured = rates.stop(size)
    await engine.dispose()
    return measured, checkpoints


def _in_memory(
    pages: list[Any], verifier: NoteVerifier, checkpoints: list[StoredCheckpoint]
) -> tuple[tuple[float, float], tuple[float, float]]:
    rates = Rates()
    for rows in pages:
        _hash_only(rows)
    hashing = rates.stop(ENTRIES)
    log = LogVerifier(verifier, checkpoints)
    rates = Rates()
    for rows in pages:
        log.add_rows(rows)
    checking = rates.stop(ENTRIES)
    log.finish()
    return checking, hashing


def _line(label: str, rate: tuple[float, float], base_label: str, base: tuple[float, float]) -> str:
    return (
        f"{label}: {rate[0]:>9,.0f} entries/s ({rate[1]:,.0f} per CPU-second) | {base_label}: "
        f"{base[0]:>9,.0f}/s ({base[1]:,.0f} per CPU-second) | ratio {rate[0] / base[0]:.2f} "
        f"(CPU {rate[1] / base[1]:.2f})"
    )


async def _main(folder: Path) -> None:
    url = f"sqlite+aiosqlite:///{folder / 'verify.db'}"
    await upgrade_async(url)
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    started = time.perf_counter()
    await _build(url, signer)
    print(f"built and sequenced a log of {ENTRIES:,} entries in {time.perf_counter() - started:.1f}s")
    verifier = NoteVerifier.parse(signer.verifier_key())
    rate, checkpoints = await _verify(url, verifier)
    baseline, _pages = await _read(url, _hash_only)
    print(_line("audit verify (SQLite)", rate, "reading the same rows and hashing each leaf only", baseline))
    print(f"  ({checkpoints} checkpoints checked)")
    engine = create_engine(url)
    async with engine.connect() as conn:
        stored = [
            StoredCheckpoint(size, root, note, f"checkpoint {cid}")
            for cid, size, root, note in await audit_repository.all_checkpoints(conn)
        ]
    await engine.dispose()
    _rates, pages = await _read(url, len, keep=True)
    checking, hashing = _in_memory(pages, verifier, stored)
    print(_line("  rows already in memory: every check", checking, "hashing each leaf only", hashing))


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-verify-"))
    try:
        asyncio.run(_main(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
