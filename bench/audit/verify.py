"""Whole-log verification speed: ``tellonce audit verify`` over a sequenced SQLite log.

The log is built once (entries written in large transactions, then sequenced with
checkpoints every 1,000 leaves). The figure is entries verified per second by
``verify_stored_log``: every leaf recomputed, every filter column derived again and
compared, every checkpoint checked. The baseline is reading the same pages of rows
and doing nothing with them, the floor any verifier pays. Goal: >= 100,000 entries/s.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.audit.appends import _entry
from service.audit import repository as audit_repository
from service.audit.checkpoint import NoteSigner, NoteVerifier
from service.audit.sequencer import Sequencer, SequencerConfig
from service.audit.service import VERIFY_PAGE, verify_stored_log
from service.audit.writer import entry_row, insert_entries
from service.db import create_engine
from service.schema import upgrade_async

ENTRIES = int(os.environ.get("BENCH_VERIFY_ENTRIES", "200000"))
ORIGIN = "bench.example/audit"


async def _build(url: str, signer: NoteSigner) -> None:
    engine = create_engine(url)
    rows = [entry_row(_entry(n)) for n in range(ENTRIES)]
    for start in range(0, ENTRIES, 20_000):
        async with engine.begin() as conn:
            await insert_entries(conn, rows[start : start + 20_000])
    config = SequencerConfig(origin=ORIGIN, checkpoint_every=1000, checkpoint_interval=3600, batch_size=5000)
    sequencer = Sequencer(engine, signer, config)
    while await sequencer.run_once():
        pass
    await engine.dispose()


async def _read_only(url: str) -> float:
    engine = create_engine(url)
    started = time.perf_counter()
    after, seen = -1, 0
    while True:
        async with engine.connect() as conn:
            rows = await audit_repository.page_for_verification(conn, after, ENTRIES, VERIFY_PAGE)
        if not rows:
            break
        seen += len(rows)
        after = rows[-1][0]
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return seen / elapsed


async def _verify(url: str, verifier: NoteVerifier) -> tuple[float, int]:
    engine = create_engine(url)
    started = time.perf_counter()
    size, checkpoints = await verify_stored_log(engine.connect, verifier)
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return size / elapsed, checkpoints


async def _main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="tellonce-bench-verify-"))
    url = f"sqlite+aiosqlite:///{folder / 'verify.db'}"
    await upgrade_async(url)
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    started = time.perf_counter()
    await _build(url, signer)
    print(f"built and sequenced a log of {ENTRIES:,} entries in {time.perf_counter() - started:.1f}s")
    baseline = await _read_only(url)
    rate, checkpoints = await _verify(url, NoteVerifier.parse(signer.verifier_key()))
    print(
        f"audit verify (SQLite): {rate:>9,.0f} entries/s ({checkpoints} checkpoints checked) | "
        f"reading the same rows only: {baseline:>9,.0f}/s | ratio {rate / baseline:.2f}"
    )


def main() -> None:
    asyncio.run(_main())
