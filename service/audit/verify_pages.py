"""Whole-log verification in parallel: worker processes check pages of leaves, the parent
grows the tree and checks every checkpoint.

Each worker reads its pages itself with the database driver (sqlite3, or asyncpg on an
event loop of its own) and runs ``check_leaves`` on them: parse, canonical form, leaf
hash, filter columns. Only the leaf hashes come back, 32 bytes a leaf, so no entry is
copied between processes. A worker stops a page at its first problem and sends it with
the hashes before it; the parent takes the pages in log order, growing the tree and
checking each checkpoint on the way, so the problem it reports is the one
``LogVerifier.add_rows`` finds reading the log in one process: the first in log order.

The workers are forked, so they start at once with the modules the parent has already
imported (a fresh interpreter would spend longer importing them than it takes to check
a large log). That is for a command-line process (``tellonce audit verify``); a server
with threads of its own verifies in one process.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.util
import signal
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from service.audit import repository as audit_repository
from service.audit.leaf_checks import VerificationFailed, check_leaves
from service.audit.verify import LogVerifier

LEAF_HASH_SIZE = 32


@dataclass(frozen=True)
class Parallel:
    """How to verify a stored log in worker processes: the database they read
    (``TELLONCE_DATABASE_URL``'s form), how many, and how many leaves a page holds. A log
    smaller than ``from_size`` is checked in one process, which is quicker than starting
    the workers."""

    database_url: str
    workers: int = 2
    page: int = 10_000
    from_size: int = 50_000


# The worker's page reader, set once when the worker starts.
_read_page: Callable[[int, int], list[Any]] | None = None


def _start_worker(database_url: str) -> None:
    global _read_page  # one reader per worker process
    # Ctrl-C is the parent's to handle: it stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database or "")
        _read_page = partial(audit_repository.sqlite_leaf_page, connection)
        return
    loop = asyncio.new_event_loop()
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    postgres: asyncpg.Connection = loop.run_until_complete(asyncpg.connect(dsn))

    def read(first: int, below: int) -> list[Any]:
        return loop.run_until_complete(audit_repository.postgres_leaf_page(postgres, first, below))

    def close() -> None:
        loop.run_until_complete(postgres.close())
        loop.close()

    _read_page = read
    # Run as the worker process exits, so the server sees the connection closed cleanly.
    multiprocessing.util.Finalize(None, close, exitpriority=10)


PageResult = tuple[int | None, bytes, str | None]


def check_page(rows: Sequence[Sequence[Any]]) -> PageResult:
    """A worker's check of one page of stored rows: (the page's first stored leaf index,
    or None if it holds none; the leaf hashes before its first problem, joined; that
    problem's message)."""
    if not rows:
        return None, b"", None
    start = int(rows[0][0])
    leaves, _records, failure = check_leaves(rows, start)
    return start, b"".join(leaves), None if failure is None else str(failure)


def take_page(log: LogVerifier, result: PageResult) -> None:
    """The parent's side: feed a page's leaf hashes to ``log`` (the next page in log order),
    then raise the page's problem, if any."""
    first, leaves, problem = result
    if first is not None:
        size = LEAF_HASH_SIZE
        log.add_leaves(first, [leaves[at : at + size] for at in range(0, len(leaves), size)])
    if problem is not None:
        raise VerificationFailed(problem)


def read_stored_page(first: int, below: int) -> list[Any]:
    """In a worker: the stored rows of leaves ``first`` to ``below`` (exclusive)."""
    assert _read_page is not None, "the worker was started without a reader"  # noqa: S101
    return _read_page(first, below)


def check_stored_page(first: int, below: int) -> PageResult:
    """In a worker: ``check_page`` on the stored rows of leaves ``first`` to ``below``."""
    return check_page(read_stored_page(first, below))


async def verify_in_pages(
    log: LogVerifier,
    parallel: Parallel,
    size: int,
    progress: Callable[[int, int], None] | None = None,
    page_check: Callable[[int, int], PageResult] = check_stored_page,
) -> None:
    """Feed ``log`` every stored leaf below ``size``, checked by ``parallel.workers``
    processes a page at a time (``page_check``: a benchmark's baseline passes one that
    only hashes); raise ``VerificationFailed`` at the first problem in log order, as
    ``LogVerifier.add_rows`` would."""
    pool = ProcessPoolExecutor(
        parallel.workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(parallel.database_url,),
    )
    try:
        pages = [
            pool.submit(
                page_check,
                audit_repository.FIRST_LEAF if start == 0 else start,
                min(start + parallel.page, size),
            )
            for start in range(0, size, parallel.page)
        ]
        for page in pages:
            take_page(log, await asyncio.wrap_future(page))
            if progress is not None:
                progress(log.compact.size, size)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
